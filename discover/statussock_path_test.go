package discover

import (
	"strings"
	"testing"
)

// TestStatusSocketPathExistsOnEachOS: macOS has no /run (its root volume
// is read-only) and caps a unix socket path at 104 bytes.
func TestStatusSocketPathExistsOnEachOS(t *testing.T) {
	if got := SocketFor("darwin"); strings.HasPrefix(got, "/run/") || !strings.HasPrefix(got, "/var/run/") || len(got) >= 104 {
		t.Errorf("macOS status socket %q: want one under /var/run, shorter than 104 bytes", got)
	}
	if got := SocketFor("linux"); got != DefaultSocket {
		t.Errorf("Linux status socket %q, want %q (the systemd unit's RuntimeDirectory)", got, DefaultSocket)
	}
}
