package advertise

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestBuildStartWakesTheAgent: Nix's first build on a fresh machine
// creates userpool/ and opens a build user's lock file in it; later
// builds open and close that file again. Each is a wake (the creation
// too: the first lock may come before the new directory is watched), and
// so is the auto-allocate-uids pool; a mere listing of the directory is not.
func TestBuildStartWakesTheAgent(t *testing.T) {
	state := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wake, err := watchBuildStarts(ctx, state)
	if err != nil {
		t.Fatal(err)
	}
	woken := func(what string) {
		t.Helper()
		select {
		case <-wake:
		case <-time.After(5 * time.Second):
			t.Fatalf("no wake within 5 s after %s", what)
		}
	}
	quiet := func(what string) {
		t.Helper()
		select {
		case <-wake:
			t.Fatalf("woken by %s", what)
		case <-time.After(200 * time.Millisecond):
		}
	}
	lockUser := func(pool, name string) {
		t.Helper()
		f, err := os.OpenFile(filepath.Join(state, pool, name), os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		woken("opening " + pool + "/" + name)
		f.Close()
		woken("closing " + pool + "/" + name)
	}
	for _, pool := range []string{"userpool", "userpool2"} {
		if err := os.Mkdir(filepath.Join(state, pool), 0o755); err != nil {
			t.Fatal(err)
		}
		woken("creating " + pool)         // Nix's first build: it locks a user at once
		time.Sleep(50 * time.Millisecond) // the watch adds the new directory
		lockUser(pool, "30001")
		lockUser(pool, "30001")
	}
	if _, err := os.ReadDir(filepath.Join(state, "userpool")); err != nil {
		t.Fatal(err)
	}
	quiet("listing userpool/")
}

// TestLockedBuildUsersAreRunningBuilds: Nix flocks a build user's file in
// userpool/ for as long as a build runs as it, before the build's first
// process exists. The agent counts those locks (from the real
// /proc/locks) as running builds, and stops counting one the moment it
// is released; a lock file nobody holds is no build.
func TestLockedBuildUsersAreRunningBuilds(t *testing.T) {
	state := t.TempDir()
	for _, pool := range []string{"userpool", "userpool2"} {
		if err := os.Mkdir(filepath.Join(state, pool), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	lock := func(pool, name string) *os.File {
		t.Helper()
		f, err := os.OpenFile(filepath.Join(state, pool, name), os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			t.Fatal(err)
		}
		return f
	}
	idle, err := os.Create(filepath.Join(state, "userpool", "30009"))
	if err != nil {
		t.Fatal(err)
	}
	idle.Close()
	if n := countLockedBuildUsers("/proc", state); n != 0 {
		t.Fatalf("%d locked build users with none held", n)
	}
	a, b := lock("userpool", "30001"), lock("userpool2", "slot-0")
	if n := countLockedBuildUsers("/proc", state); n != 2 {
		t.Errorf("%d locked build users, want 2 (one per pool)", n)
	}
	a.Close() // closing the file releases its flock
	if n := countLockedBuildUsers("/proc", state); n != 1 {
		t.Errorf("%d locked build users after one build ended, want 1", n)
	}
	b.Close()
	if n := countLockedBuildUsers("/proc", state); n != 0 {
		t.Errorf("%d locked build users after both ended, want 0", n)
	}
}

// TestParseProcLock reads /proc/locks lines as fs/locks.c writes them.
func TestParseProcLock(t *testing.T) {
	for _, tc := range []struct {
		line string
		want fileID
		ok   bool
	}{
		{"1: FLOCK  ADVISORY  WRITE 1234 00:2e:5678 0 EOF", fileID{0, 0x2e, 5678}, true},
		{"2: POSIX  ADVISORY  READ 99 fd:01:1835010 128 128", fileID{0xfd, 1, 1835010}, true},
		{"3: OFDLCK ADVISORY  WRITE -1 08:02:42 0 EOF", fileID{8, 2, 42}, true},
		{"1: -> FLOCK  ADVISORY  WRITE 1235 00:2e:5678 0 EOF", fileID{}, false}, // a waiter holds nothing
		{"", fileID{}, false},
		{"4: FLOCK  ADVISORY  WRITE 1234 zz:2e:5678 0 EOF", fileID{}, false},
	} {
		got, ok := parseProcLock(tc.line)
		if got != tc.want || ok != tc.ok {
			t.Errorf("parseProcLock(%q) = %+v, %v; want %+v, %v", tc.line, got, ok, tc.want, tc.ok)
		}
	}
}
