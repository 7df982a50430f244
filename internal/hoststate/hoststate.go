// Package hoststate creates the pieces of machine state that tests rely
// on, so that no test depends on what a package, an earlier test or an
// earlier run left behind.
//
// A fresh Debian machine with openssh-server and nix-bin installed (apt
// blocks their daemons, as CI does) has no /run/sshd, a /nix/store that is
// 0755 root:root, and no nixbld group or build users. A test that needs
// one of them calls the helper here; scripts/fresh-check.sh puts a
// machine back into that fresh state to prove it.
package hoststate

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
)

// SSHDPrivsepDir is OpenSSH's privilege separation directory: sshd refuses
// to start without it ("Missing privilege separation directory"). Its path
// is compiled into sshd; systemd's tmpfiles create it at boot.
const SSHDPrivsepDir = "/run/sshd"

// EnsureSSHDPrivsepDir creates /run/sshd (0755, root) if it is missing, as
// the openssh-server package's tmpfiles rule would. It is never removed
// again: sshds of other test processes may be using it at the same time,
// and it holds nothing.
func EnsureSSHDPrivsepDir(tb testing.TB) {
	tb.Helper()
	if err := os.MkdirAll(SSHDPrivsepDir, 0o755); err != nil {
		tb.Fatalf("create sshd's privilege separation directory: %v", err)
	}
	st, err := os.Stat(SSHDPrivsepDir)
	if err != nil {
		tb.Fatalf("stat %s: %v", SSHDPrivsepDir, err)
	}
	if st.Mode().Perm()&0o022 != 0 {
		if err := os.Chmod(SSHDPrivsepDir, 0o755); err != nil {
			tb.Fatalf("chmod %s: %v", SSHDPrivsepDir, err)
		}
	}
}

var groupSeq atomic.Int64

// Group creates a group of its own with the given existing users as
// supplementary members and returns its name and gid; the group is
// deleted in tb's cleanup. A group with two or more members is what
// /nix/store's nixbld is to sshd's path check (Debian's OpenSSH tolerates
// a group-writable directory only when its group has exactly one member,
// the owner).
func Group(tb testing.TB, members ...string) (name string, gid int) {
	tb.Helper()
	name = fmt.Sprintf("nixrbt%d-%d", os.Getpid()%100000, groupSeq.Add(1))
	args := []string{name}
	if len(members) > 0 {
		args = []string{"-U", strings.Join(members, ","), name}
	}
	if out, err := exec.Command("groupadd", args...).CombinedOutput(); err != nil {
		tb.Fatalf("groupadd %s: %v: %s", strings.Join(args, " "), err, out)
	}
	tb.Cleanup(func() {
		if out, err := exec.Command("groupdel", name).CombinedOutput(); err != nil {
			tb.Errorf("groupdel %s: %v: %s", name, err, out)
		}
	})
	out, err := exec.Command("getent", "group", name).Output()
	if err != nil {
		tb.Fatalf("getent group %s: %v", name, err)
	}
	if _, err := fmt.Sscanf(strings.Split(string(out), ":")[2], "%d", &gid); err != nil {
		tb.Fatalf("getent group %s: no gid in %q", name, out)
	}
	return name, gid
}

// GroupWritableDir makes dir a directory like a NixOS /nix/store: mode
// 1775, owned by root and a group of its own with two members (root and
// nobody), so sshd's path check treats it as writable by others.
func GroupWritableDir(tb testing.TB, dir string) {
	tb.Helper()
	_, gid := Group(tb, "root", "nobody")
	if err := os.Mkdir(dir, 0o755); err != nil {
		tb.Fatalf("create %s: %v", dir, err)
	}
	if err := os.Chown(dir, 0, gid); err != nil {
		tb.Fatalf("chown %s: %v", dir, err)
	}
	if err := os.Chmod(dir, 0o775|os.ModeSticky); err != nil {
		tb.Fatalf("chmod %s: %v", dir, err)
	}
	// The group is deleted in cleanup; leave no file owned by a gid that
	// may be reused.
	tb.Cleanup(func() { os.RemoveAll(dir) })
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil || st.Mode&0o7777 != 0o1775 {
		tb.Fatalf("%s: mode %o, want 1775 (%v)", dir, st.Mode&0o7777, err)
	}
}
