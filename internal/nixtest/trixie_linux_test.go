package nixtest

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

// TestPrepareTrixie builds the cached trixie chroot tarball if it is
// missing (CI runs `go test -run TestPrepareTrixie ./internal/nixtest`
// first), then checks that an unpacked copy runs Nix 2.26 and OpenSSH.
func TestPrepareTrixie(t *testing.T) {
	RequireTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), trixieLockWait)
	defer cancel()
	start := time.Now()
	path, err := PrepareTrixieCache(ctx, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("trixie cache %s (%.1f MiB) ready after %v", path, float64(fi.Size())/(1<<20), time.Since(start).Round(time.Millisecond))

	root := EnsureTrixie(t)
	t.Logf("unpacked in %v", time.Duration(lastUnpack.Load()).Round(time.Millisecond))
	out, err := runCmd(ctx, time.Minute, "unshare", "--mount", "--propagation", "private", "sh", "-c",
		`mount -t proc proc "$1/proc" && chroot "$1" nix-build --version && chroot "$1" /usr/sbin/sshd -V 2>&1`, "sh", root)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "nix-build (Nix) 2.26") || !strings.Contains(out, "OpenSSH_") {
		t.Fatalf("chroot versions: got %q, want Nix 2.26 and OpenSSH", out)
	}
	t.Logf("chroot: %s", strings.ReplaceAll(strings.TrimSpace(out), "\n", "; "))
}

func TestDebianMirror(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) string {
		p := dir + "/" + name
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name, data, want string
	}{
		{"deb822", "Types: deb\n# http://snapshot.debian.org/x\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n", "http://deb.debian.org/debian"},
		// The security archive is not where trixie's packages are.
		{"security-only", "Types: deb\nURIs: http://deb.debian.org/debian-security\n", ""},
		{"one-line", "deb [signed-by=/k.gpg] http://mirror.example/debian/ bookworm main\n", "http://mirror.example/debian"},
		{"third-party", "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := mirrorFrom(write(tt.name, tt.data)); got != tt.want {
				t.Errorf("mirrorFrom = %q, want %q", got, tt.want)
			}
		})
	}
}
