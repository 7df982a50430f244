package tailnet

import (
	"errors"
	"io/fs"
	"strconv"
)

// Where tailscaled's LocalAPI lives, for a client that runs as root (a
// systemd unit, a launchd daemon). On macOS there are three Tailscales,
// and tailscale.com/client/local (without a socket given) tries them in
// this order (safesocket_darwin.go):
//   - the Mac App Store app: its IPNExtension runs as the logged-in user
//     and is found with lsof among that user's processes only; a root
//     daemon never finds it.
//   - the standalone app (macsys): its system extension writes
//     /Library/Tailscale/ipnport (a symlink to a TCP port) and
//     sameuserproof-PORT (the token, root:admin 0640): root can read both.
//   - the open-source tailscaled (Homebrew, nix-darwin's
//     services.tailscale): a unix socket at /var/run/tailscaled.socket.
const (
	darwinMacsysPort = "Library/Tailscale/ipnport"
	darwinSocket     = "var/run/tailscaled.socket"
	darwinApp        = "Applications/Tailscale.app"
	linuxSocket      = "var/run/tailscale/tailscaled.sock"
	linuxRunSocket   = "run/tailscale/tailscaled.sock"
)

// FindLocalAPI says where a root client on goos reaches tailscaled's
// LocalAPI, looking in root (the file system at "/", e.g. os.DirFS("/")):
// where, and whether it is there now. Not found, where says what to
// install or start.
func FindLocalAPI(goos string, root fs.FS) (where string, found bool) {
	if goos == "darwin" {
		if p, err := fs.ReadLink(root, darwinMacsysPort); err == nil {
			if n, err := strconv.Atoi(p); err == nil && n > 0 && n < 65536 {
				return "the standalone Tailscale app (/" + darwinMacsysPort + " -> 127.0.0.1:" + p + ")", true
			}
		}
		if exists(root, darwinSocket) {
			return "tailscaled at /" + darwinSocket, true
		}
		if exists(root, darwinApp) {
			return "/" + darwinApp + " is installed, but its LocalAPI is not one root can reach: the Mac App Store app answers only its own user; " +
				"use the standalone app (it writes /" + darwinMacsysPort + " while it runs) or the open-source tailscaled (/" + darwinSocket + ")", false
		}
		return "tailscaled at /" + darwinSocket + " or the standalone Tailscale app (/" + darwinMacsysPort + ")", false
	}
	for _, p := range []string{linuxRunSocket, linuxSocket} {
		if exists(root, p) {
			return "tailscaled at /" + p, true
		}
	}
	return "tailscaled at /" + linuxSocket, false
}

func exists(root fs.FS, name string) bool {
	_, err := fs.Stat(root, name)
	return err == nil || !errors.Is(err, fs.ErrNotExist)
}
