package discover

import (
	"context"
	"encoding/json"
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

// silentSource never sends anything (an mDNS browse still waiting).
type silentSource struct{}

func (silentSource) Name() string { return SourceMDNS }
func (silentSource) Run(ctx context.Context, emit func(Snapshot)) error {
	<-ctx.Done()
	return nil
}

// TestStatusShowsStartingSource: a source not heard from yet is
// "starting", not "ok", and no builders is [] in JSON, never null.
func TestStatusShowsStartingSource(t *testing.T) {
	c := &Client{Sources: []Source{silentSource{}}, Checker: nopChecker{}, MachinesPath: filepath.Join(t.TempDir(), "machines")}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c.Init()
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Sources) != 1 || st.Sources[0].State != SourceStarting || st.Sources[0].OK {
		t.Errorf("sources = %+v, want mdns starting, not ok", st.Sources)
	}
	js, _ := json.Marshal(st)
	if !strings.Contains(string(js), `"builders":[]`) {
		t.Errorf("JSON %s: want \"builders\":[]", js)
	}
	var table strings.Builder
	st.WriteTable(&table, true)
	if !strings.Contains(table.String(), "source mdns is starting") {
		t.Errorf("table does not say the source is starting:\n%s", table.String())
	}
}

// TestSecondClientOnSameFileRefused: two clients on one machines file
// would undo each other's writes; the second is refused and named why.
func TestSecondClientOnSameFileRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "machines")
	first := &Client{Sources: []Source{silentSource{}}, Checker: nopChecker{}, MachinesPath: path}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	first.Init()
	done := make(chan error, 1)
	go func() { done <- first.Run(ctx) }()
	if _, err := first.Status(ctx); err != nil { // running, lock taken
		t.Fatal(err)
	}
	second := &Client{Sources: []Source{silentSource{}}, Checker: nopChecker{}, MachinesPath: path, Once: true}
	err := second.Run(ctx)
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "pid ") {
		t.Errorf("second Run = %v, want ErrLocked naming the holder's pid", err)
	}
	cancel()
	<-done
	// Once the first is gone, the file is free again.
	third := &Client{Sources: []Source{downSource{}}, Checker: nopChecker{}, MachinesPath: path, Once: true}
	if err := third.Run(context.Background()); errors.Is(err, ErrLocked) {
		t.Errorf("lock outlived its client: %v", err)
	}
}
