package doctor

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// checkSlotLocks checks that the client (root, like doctor) can hold Nix's
// build-hook slot locks: current-load/ in the Nix state directory exists
// and is writable, or can be made, as Nix makes it on its first remote
// build. Without them a failing builder must leave the machines file
// instead of being skipped by Nix.
func checkSlotLocks(r *Report, opts Options) {
	dir := filepath.Join(opts.NixStateDir, "current-load")
	name := fmt.Sprintf("the client can hold Nix's build slots in %s", dir)
	fix := "run the client as root with --nix-state-dir of the Nix that reads the machines file (the daemon's: " + DefaultNixStateDir +
		"); a hardened unit needs ReadWritePaths=-" + dir + " (the shipped units and the NixOS module set it)"
	st, err := os.Stat(dir)
	switch {
	case err == nil && !st.IsDir():
		r.fail(name, dir+" is not a directory", "remove it: Nix and the client need a directory there")
	case err == nil:
		if err := unix.Access(dir, unix.W_OK); err != nil {
			r.fail(name, fmt.Sprintf("%s is not writable: %v", dir, err), fix)
			return
		}
		r.pass(name, "")
	case os.IsNotExist(err):
		if err := unix.Access(opts.NixStateDir, unix.W_OK); err != nil {
			r.fail(name, fmt.Sprintf("neither %s nor its parent can be written: %v", dir, err), fix)
			return
		}
		r.pass(name, "not there yet: the client creates it, as Nix does on its first remote build")
	default:
		r.fail(name, err.Error(), fix)
	}
}
