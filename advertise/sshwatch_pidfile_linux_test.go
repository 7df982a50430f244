package advertise

import (
	"os"
	"path/filepath"
	"testing"
)

// TestSSHWatchPidFileFallback: without CAP_SYS_PTRACE (the shipped unit)
// the fds of sshd are unreadable; its pid file names the process whose
// state tells a stopped sshd apart, but only if that process is an sshd.
func TestSSHWatchPidFileFallback(t *testing.T) {
	proc := t.TempDir()
	os.MkdirAll(filepath.Join(proc, "4242"), 0o755)
	if err := os.WriteFile(filepath.Join(proc, "4242", "comm"), []byte("sshd\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(proc, "77"), 0o755)
	if err := os.WriteFile(filepath.Join(proc, "77", "comm"), []byte("bash\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	pidFile := filepath.Join(t.TempDir(), "sshd.pid")

	for _, tc := range []struct {
		name, pid string
		want      []int
	}{
		{"sshd's pid", "4242\n", []int{4242}},
		{"pid of another program", "77\n", nil},
		{"garbage", "not a pid", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(pidFile, []byte(tc.pid), 0o644); err != nil {
				t.Fatal(err)
			}
			s := &sshWatchState{owners: map[uint64][]int{}, cur: []sshListener{{inode: 99}}}
			s.ownersFromPidFile(proc, pidFile)
			if got := s.owners[99]; len(got) != len(tc.want) || len(got) == 1 && got[0] != tc.want[0] {
				t.Errorf("owners = %v, want %v", got, tc.want)
			}
		})
	}
	if (&SSHWatch{PidFile: "-"}).pidFile() != "" || (&SSHWatch{}).pidFile() != DefaultSSHPidFile {
		t.Error("PidFile \"-\" must turn the fallback off and empty must mean the default")
	}
}
