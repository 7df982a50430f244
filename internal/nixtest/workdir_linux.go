package nixtest

import "testing"

// WorkDir returns a new root-owned 0755 directory outside /tmp (which
// NixBuild and the builders replace with their own), removed when t
// finishes: the place for machines files and keys that a real nix-build
// or sshd must read.
func WorkDir(t testing.TB, prefix string) string {
	t.Helper()
	return newWorkDir(t, prefix)
}
