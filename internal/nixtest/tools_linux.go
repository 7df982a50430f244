package nixtest

import (
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
)

// tools lists the commands the fixtures run, by Debian package.
var tools = []struct{ pkg, cmd string }{
	{"iproute2", "ip"},
	{"util-linux", "unshare"},
	{"util-linux", "nsenter"},
	{"coreutils", "chroot"},
	{"coreutils", "sleep"},
	{"tar", "tar"},
	{"passwd", "useradd"},
	{"passwd", "usermod"},
	{"openssh-server", "sshd"},
	{"openssh-client", "ssh"},
	{"nix-bin", "nix-build"},
	{"nix-bin", "nix-daemon"},
	{"nix-bin", "nix-store"},
	{"debootstrap", "debootstrap"},
	{"zstd", "zstd"},
}

var toolsOnce = sync.OnceValue(func() string {
	if os.Geteuid() != 0 {
		return "nixtest: needs root (namespaces, mounts, sshd); run as root as .ci/run does"
	}
	var missing, pkgs []string
	seen := map[string]bool{}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool.cmd); err != nil {
			missing = append(missing, tool.cmd)
			if !seen[tool.pkg] {
				seen[tool.pkg] = true
				pkgs = append(pkgs, tool.pkg)
			}
		}
	}
	if len(missing) > 0 {
		return "nixtest: missing " + strings.Join(missing, ", ") +
			"; install with: apt-get install -y " + strings.Join(pkgs, " ") + " (.ci/run installs them)"
	}
	return ""
})

// RequireTools skips t unless it runs as root with every command the
// fixtures need (iproute2, util-linux, openssh-server, openssh-client,
// nix-bin, debootstrap, zstd). The skip message names the apt packages to
// install. The fixtures call it themselves.
func RequireTools(t testing.TB) {
	t.Helper()
	if msg := toolsOnce(); msg != "" {
		t.Skip(msg)
	}
}
