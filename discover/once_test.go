package discover

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// downSource is a source that cannot be read (tailscaled not running).
type downSource struct{}

func (downSource) Name() string { return SourceTailnet }
func (downSource) Run(ctx context.Context, emit func(Snapshot)) error {
	emit(Snapshot{Source: SourceTailnet, Err: errors.New("tailscaled not running")})
	<-ctx.Done()
	return nil
}

// TestOnceWithSourceDownFails: --once exits non-zero when a source could
// not be read, even though the file (holding what the others gave) is written.
func TestOnceWithSourceDownFails(t *testing.T) {
	path := filepath.Join(t.TempDir(), "machines")
	c := &Client{Sources: []Source{downSource{}}, Checker: nopChecker{}, MachinesPath: path, Once: true}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := c.Run(ctx)
	if !errors.Is(err, ErrSourceDown) || !strings.Contains(err.Error(), "tailscaled not running") {
		t.Fatalf("Run = %v, want ErrSourceDown naming the cause", err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("the file was not written: %v", err)
	}
}
