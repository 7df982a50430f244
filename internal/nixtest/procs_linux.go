package nixtest

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// alive reports whether pid exists and has not exited (a zombie counts as
// gone: it has released its namespaces and ports).
func alive(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return false
	}
	state := s[i+2]
	return state != 'Z' && state != 'X'
}

// netnsInode returns the inode that identifies the network namespace
// mounted at path.
func netnsInode(path string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat netns: %w", err)
	}
	return st.Ino, nil
}

// pidNetns returns the inode of pid's network namespace, or 0.
func pidNetns(pid int) uint64 { return pidNS(pid, "net") }

// pidNS returns the inode of pid's namespace of the kind ("net", "mnt"),
// or 0.
func pidNS(pid int, kind string) uint64 {
	link, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/ns/" + kind)
	if err != nil {
		return 0
	}
	// "net:[4026532281]"
	link = strings.TrimSuffix(strings.TrimPrefix(link, kind+":["), "]")
	n, _ := strconv.ParseUint(link, 10, 64)
	return n
}

// netnsPIDs lists the live processes in the network namespace ino.
func netnsPIDs(ino uint64) []int { return nsPIDs("net", ino) }

// nsPIDs lists the live processes in the namespace of the kind ("net",
// "mnt") whose inode is ino.
func nsPIDs(kind string, ino uint64) []int {
	if ino == 0 {
		return nil
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		if pidNS(pid, kind) == ino && alive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// killNetns stops every process in the network namespace ino: SIGCONT
// (a stopped sshd ignores SIGTERM) and SIGTERM, then SIGKILL for those left
// after grace. Each PID is re-checked to be in the namespace right before
// it is signalled. It returns the PIDs that survived.
func killNetns(ino uint64, grace time.Duration) []int { return killNS("net", ino, grace) }

// killNS is killNetns for a namespace of the kind ("net", "mnt").
func killNS(kind string, ino uint64, grace time.Duration) []int {
	signal := func(sig syscall.Signal) {
		for _, pid := range nsPIDs(kind, ino) {
			_ = syscall.Kill(pid, syscall.SIGCONT)
			_ = syscall.Kill(pid, sig)
		}
	}
	waitGone := func(d time.Duration) []int {
		deadline := time.Now().Add(d)
		for {
			left := nsPIDs(kind, ino)
			if len(left) == 0 || time.Now().After(deadline) {
				return left
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	signal(syscall.SIGTERM)
	if len(waitGone(grace)) == 0 {
		return nil
	}
	signal(syscall.SIGKILL)
	return waitGone(5 * time.Second)
}
