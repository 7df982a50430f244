package tailnet

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// macRoot makes a file system root holding the given files (a name
// ending in "@PORT" is the standalone app's ipnport symlink).
func macRoot(t *testing.T, files ...string) string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range files {
		name, target, link := strings.Cut(f, "@")
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		if link {
			err = os.Symlink(target, p)
		} else {
			err = os.WriteFile(p, nil, 0o600)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestFindLocalAPIOnAMacFindsWhatRootCanReach(t *testing.T) {
	for _, tc := range []struct {
		story, goos string
		files       []string
		found       bool
		says        string
	}{
		{"standalone app, root reads its port and token", "darwin",
			[]string{"Applications/Tailscale.app/Contents/Info.plist", "Library/Tailscale/ipnport@41641", "Library/Tailscale/sameuserproof-41641"},
			true, "standalone Tailscale app (/Library/Tailscale/ipnport -> 127.0.0.1:41641)"},
		{"open-source tailscaled's socket", "darwin",
			[]string{"var/run/tailscaled.socket"}, true, "tailscaled at /var/run/tailscaled.socket"},
		{"App Store app only: unreachable for a root daemon, and says what to use", "darwin",
			[]string{"Applications/Tailscale.app/Contents/Info.plist"}, false, "the Mac App Store app answers only its own user"},
		{"a stale ipnport that is not a port is not the app", "darwin",
			[]string{"Library/Tailscale/ipnport@nonsense"}, false, "tailscaled at /var/run/tailscaled.socket or the standalone"},
		{"nothing on a Mac", "darwin", nil, false, "or the standalone Tailscale app"},
		{"Linux tailscaled under /run", "linux", []string{"run/tailscale/tailscaled.sock"}, true, "tailscaled at /run/tailscale/tailscaled.sock"},
		{"Linux, none: the usual path", "linux", nil, false, "tailscaled at /var/run/tailscale/tailscaled.sock"},
		{"the macOS paths mean nothing on Linux", "linux", []string{"var/run/tailscaled.socket"}, false, "/var/run/tailscale/tailscaled.sock"},
	} {
		t.Run(tc.story, func(t *testing.T) {
			where, found := FindLocalAPI(tc.goos, os.DirFS(macRoot(t, tc.files...)))
			if found != tc.found || !strings.Contains(where, tc.says) {
				t.Errorf("FindLocalAPI = %q, %v; want %v and %q", where, found, tc.found, tc.says)
			}
		})
	}
}
