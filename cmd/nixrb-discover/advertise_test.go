package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestAdvertiseSaysAtOnceWhatIsMissing: no tailscaled and an --ssh-user
// the builder lacks are said before the agent starts, not after a silent
// retry. The context is done from the start: the agent stops at once.
func TestAdvertiseSaysAtOnceWhatIsMissing(t *testing.T) {
	var out, errOut bytes.Buffer
	cmd := newAdvertiseCmd(&env{stdout: &out, stderr: &errOut})
	cmd.FlagSet.SetOutput(&errOut)
	sock := filepath.Join(t.TempDir(), "nosock")
	if err := cmd.Parse([]string{"--tailscale-socket", sock, "--ssh-user", "nosuchuser-nixrb", "--watch-sshd=false"}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	cancel()
	cmd.Run(ctx)
	logs := errOut.String()
	for _, want := range []string{
		"waiting for tailscaled at " + sock + " (or use --tailnet=false --mdns)",
		"--ssh-user nosuchuser-nixrb does not exist on this builder",
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
}
