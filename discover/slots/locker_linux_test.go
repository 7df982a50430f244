package slots

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// holderEnv makes the test binary a lock holder (see TestMain): it locks
// the newline-separated paths, prints "held" and sleeps until killed.
const holderEnv = "SLOTS_TEST_HOLD"

func TestMain(m *testing.M) {
	if paths := os.Getenv(holderEnv); paths != "" {
		os.Exit(holdLocks(strings.Split(paths, "\n")))
	}
	os.Exit(m.Run())
}

func holdLocks(paths []string) int {
	for _, p := range paths {
		fd, err := unix.Open(p, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
		if err == nil {
			err = unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "holder: %s: %v\n", p, err)
			return 1
		}
	}
	fmt.Println("held")
	time.Sleep(2 * time.Minute) // bounded, in case nobody kills it
	return 0
}

// holder is another process holding slot locks, as the local Nix's build
// hook does while a build runs.
type holder struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// startHolder re-executes the test binary to hold the given lock files,
// and waits (bounded) until it holds them. It is killed in t.Cleanup.
func startHolder(t *testing.T, paths ...string) *holder {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), holderEnv+"="+strings.Join(paths, "\n"))
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &holder{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(h.done) }()
	t.Cleanup(func() { h.kill(t) })
	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		ready <- line
	}()
	select {
	case line := <-ready:
		if line != "held\n" {
			t.Fatalf("holder %d: said %q", cmd.Process.Pid, line)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("holder %d: not holding its locks after 10s", cmd.Process.Pid)
	}
	return h
}

// kill sends SIGKILL to the holder by PID and waits (bounded) until the
// kernel has reaped it, and with it released its locks.
func (h *holder) kill(t *testing.T) {
	t.Helper()
	select {
	case <-h.done:
		return
	default:
	}
	_ = h.cmd.Process.Kill()
	select {
	case <-h.done:
	case <-time.After(5 * time.Second):
		t.Errorf("holder %d: not reaped 5s after SIGKILL", h.cmd.Process.Pid)
	}
}

// newLocker returns a Locker over a fresh state directory.
func newLocker(t *testing.T) *Locker {
	t.Helper()
	l, err := New(t.TempDir(), Legacy)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Error(err)
		}
	})
	return l
}

const uriA = "ssh-ng://root@10.0.0.2"

// slotPath is slot s of uriA in l's directory.
func slotPath(l *Locker, s int) string { return filepath.Join(l.Dir(), LockName(uriA, s)) }

// lockedElsewhere reports whether another open file description holds
// path's lock: the view of a Nix build hook.
func lockedElsewhere(t *testing.T, path string) bool {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	defer unix.Close(fd)
	err = unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		return true
	}
	if err != nil {
		t.Fatalf("flock %s: %v", path, err)
	}
	return false
}

// heldSlots lists which of uriA's n slots a Nix hook would find locked.
func heldSlots(t *testing.T, l *Locker, n int) []int {
	t.Helper()
	var held []int
	for s := range n {
		if lockedElsewhere(t, slotPath(l, s)) {
			held = append(held, s)
		}
	}
	return held
}

func wantState(t *testing.T, what string, got State, err error, want State) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	want.StoreURI = got.StoreURI
	if got != want {
		t.Fatalf("%s = %+v, want %+v", what, got, want)
	}
}

func TestDownBuilderAllSlotsHeldThenReleased(t *testing.T) {
	l := newLocker(t)
	st, err := l.Set(uriA, 4, 4)
	wantState(t, "builder down: Set(4, 4)", st, err, State{MaxJobs: 4, Want: 4, Held: 4})
	if st.StoreURI != uriA || st.Free() != 0 {
		t.Fatalf("state %+v: want store URI %q and no free slot", st, uriA)
	}
	if got := fmt.Sprint(heldSlots(t, l, 4)); got != "[0 1 2 3]" {
		t.Fatalf("a Nix hook finds slots %s locked, want all four", got)
	}
	for s := range 4 {
		fi, err := os.Stat(slotPath(l, s))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != 0o600 {
			t.Errorf("slot %d: mode %v, want -rw------- as Nix creates them", s, fi.Mode())
		}
	}
	if _, err := os.Stat(filepath.Join(l.Dir(), "main-lock")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("main-lock: %v; the Locker must never touch it", err)
	}

	st, err = l.Set(uriA, 4, 1)
	wantState(t, "builder back, one foreign build: Set(4, 1)", st, err, State{MaxJobs: 4, Want: 1, Held: 1})
	if got := fmt.Sprint(heldSlots(t, l, 4)); got != "[0]" {
		t.Fatalf("after want 1, slots %s locked, want [0]", got)
	}
	if err := l.Release(uriA); err != nil {
		t.Fatal(err)
	}
	if got := heldSlots(t, l, 4); len(got) != 0 {
		t.Fatalf("after Release, slots %v still locked", got)
	}
	if got := l.States(); len(got) != 0 {
		t.Fatalf("after Release, States() = %+v", got)
	}
	if err := l.Release(uriA); err != nil {
		t.Fatalf("second Release: %v", err)
	}
}

func TestSlotsAnotherProcessHoldsAreTheLocalNixs(t *testing.T) {
	l := newLocker(t)
	// The local Nix runs two builds on the machine: slots 0 and 2.
	nix := startHolder(t, slotPath(l, 0), slotPath(l, 2))

	st, err := l.Set(uriA, 4, 4)
	wantState(t, "builder down while Nix builds on it", st, err, State{MaxJobs: 4, Want: 4, Held: 2, OwnRunning: 2})
	st, err = l.Scan(uriA, 4)
	wantState(t, "Scan", st, err, State{MaxJobs: 4, Want: 4, Held: 2, OwnRunning: 2})

	// Nix's builds end (the hook dies): the kernel frees its locks, and
	// the Locker, which wants them all, takes them (waiters, or Set).
	nix.kill(t)
	deadline := time.Now().Add(5 * time.Second)
	for st, err = l.Set(uriA, 4, 4); err == nil && st.Held < 4 && time.Now().Before(deadline); st, err = l.Set(uriA, 4, 4) {
		time.Sleep(10 * time.Millisecond)
	}
	wantState(t, "the freed slots are taken", st, err, State{MaxJobs: 4, Want: 4, Held: 4})
	if got := fmt.Sprint(heldSlots(t, l, 4)); got != "[0 1 2 3]" {
		t.Fatalf("slots %s locked, want all four", got)
	}
}

func TestOtherClientsLoadBesideTheLocalNix(t *testing.T) {
	l := newLocker(t)
	startHolder(t, slotPath(l, 0)) // one local build
	// Other clients run 2 builds there: hold 2, leaving 1 free for Nix.
	st, err := l.Set(uriA, 4, 2)
	wantState(t, "Set(4, 2)", st, err, State{MaxJobs: 4, Want: 2, Held: 2, OwnRunning: 1})
	if st.Free() != 1 {
		t.Fatalf("Free() = %d, want 1", st.Free())
	}
	if got := fmt.Sprint(heldSlots(t, l, 4)); got != "[0 1 2]" {
		t.Fatalf("slots %s locked, want [0 1 2] (Nix's 0, ours 1 and 2)", got)
	}
	// Scan does not change what is held, even with a stray maxJobs.
	st, err = l.Scan(uriA, 2)
	wantState(t, "Scan with 2 slots", st, err, State{MaxJobs: 2, Want: 2, Held: 1, OwnRunning: 1})
	st, err = l.Scan("ssh://other", 3)
	wantState(t, "Scan of an untracked machine", st, err, State{MaxJobs: 3})
	if got := l.States(); len(got) != 1 || got[0].Held != 2 {
		t.Fatalf("States() = %+v, want only uriA with 2 held", got)
	}
}

func TestMaxJobsShrinksAndGrows(t *testing.T) {
	l := newLocker(t)
	_, _ = l.Set(uriA, 4, 4)
	st, err := l.Set(uriA, 2, 4)
	wantState(t, "maxJobs 4 → 2", st, err, State{MaxJobs: 2, Want: 2, Held: 2})
	if got := fmt.Sprint(heldSlots(t, l, 4)); got != "[0 1]" {
		t.Fatalf("slots %s locked, want [0 1]", got)
	}
	st, err = l.Set(uriA, 3, 3)
	wantState(t, "maxJobs 2 → 3", st, err, State{MaxJobs: 3, Want: 3, Held: 3})
	st, err = l.Set(uriA, 0, 1)
	wantState(t, "maxJobs 0 (Nix never uses it)", st, err, State{})
}

func TestUnchangedSetMakesNoSystemCall(t *testing.T) {
	l := newLocker(t)
	if _, err := l.Set(uriA, 4, 2); err != nil {
		t.Fatal(err)
	}
	// Remove current-load beneath the held locks: any open or mkdir
	// would show.
	if err := os.RemoveAll(l.Dir()); err != nil {
		t.Fatal(err)
	}
	st, err := l.Set(uriA, 4, 2)
	wantState(t, "unchanged Set", st, err, State{MaxJobs: 4, Want: 2, Held: 2})
	if _, err := os.Stat(l.Dir()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("unchanged Set touched the file system: %v", err)
	}
	// Needing a slot, Set recreates current-load as Nix's hook would.
	st, err = l.Set(uriA, 4, 3)
	wantState(t, "Set(4, 3) in a new current-load", st, err, State{MaxJobs: 4, Want: 3, Held: 3})
	// Two of the three holds are on removed files, which Nix no longer
	// sees: Scan drops them, and the next Set takes the new files.
	st, err = l.Scan(uriA, 4)
	wantState(t, "Scan after current-load was recreated", st, err, State{MaxJobs: 4, Want: 3, Held: 1})
	st, err = l.Set(uriA, 4, 3)
	wantState(t, "Set retakes", st, err, State{MaxJobs: 4, Want: 3, Held: 3})
	if got := len(heldSlots(t, l, 4)); got != 3 {
		t.Fatalf("a Nix hook finds %d slots locked, want 3", got)
	}
}

func TestNewCreatesCurrentLoadLikeNix(t *testing.T) {
	state := t.TempDir()
	l, err := New(state, Rendered)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if fi, err := os.Stat(filepath.Join(state, "current-load")); err != nil || !fi.IsDir() {
		t.Fatalf("current-load not created: %v", err)
	}
	missing := filepath.Join(state, "no-such-nix")
	if _, err := New(missing, Rendered); err == nil || !strings.Contains(err.Error(), "state directory "+missing+" is missing") {
		t.Fatalf("New on a missing state dir: %v, want it named missing", err)
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("New created the state directory: %v", err)
	}
	if _, err := New(state, Dialect(7)); err == nil {
		t.Fatal("New with an unknown dialect: no error")
	}
}

func TestBadArgumentsAndClose(t *testing.T) {
	l := newLocker(t)
	for _, c := range []struct {
		uri           string
		maxJobs, want int
	}{{uriA, -1, 0}, {uriA, 1, -1}, {"h;x", 1, 1}, {"", 1, 1}} {
		if _, err := l.Set(c.uri, c.maxJobs, c.want); err == nil {
			t.Errorf("Set(%q, %d, %d): no error", c.uri, c.maxJobs, c.want)
		}
	}
	if _, err := l.Set(uriA, 2, 2); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if got := heldSlots(t, l, 2); len(got) != 0 {
		t.Fatalf("after Close, slots %v still locked", got)
	}
	if _, err := l.Set(uriA, 2, 2); !errors.Is(err, ErrClosed) {
		t.Fatalf("Set after Close: %v, want ErrClosed", err)
	}
	if _, err := l.Scan(uriA, 2); !errors.Is(err, ErrClosed) {
		t.Fatalf("Scan after Close: %v, want ErrClosed", err)
	}
	if err := l.Release(uriA); !errors.Is(err, ErrClosed) {
		t.Fatalf("Release after Close: %v, want ErrClosed", err)
	}
}

func TestConcurrentUse(t *testing.T) {
	l := newLocker(t)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			uri := fmt.Sprintf("ssh://b%d", g%4) // two goroutines per machine
			for i := range 200 {
				var err error
				switch i % 4 {
				case 0, 1:
					_, err = l.Set(uri, 3, i%4)
				case 2:
					_, err = l.Scan(uri, 3)
				default:
					_ = l.States()
					err = l.Release(uri)
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestAllSlotsWantedTakesNixsSlotWhenItsBuildEnds: a builder goes down
// while the local Nix builds on it (its slot is Nix's); the Locker waits
// for that slot and takes it the moment the build lets go, before Nix's
// next build hook could try it, and says so on Changed.
func TestAllSlotsWantedTakesNixsSlotWhenItsBuildEnds(t *testing.T) {
	l := newLocker(t)
	nix := startHolder(t, slotPath(l, 1))
	st, err := l.Set(uriA, 2, 2)
	wantState(t, "down while Nix builds there", st, err, State{MaxJobs: 2, Want: 2, Held: 1, OwnRunning: 1})
	select {
	case <-l.Changed():
		t.Fatal("Changed before Nix's build ended")
	default:
	}
	nix.kill(t)
	select {
	case <-l.Changed():
	case <-time.After(5 * time.Second):
		t.Fatal("the freed slot was not taken within 5 s")
	}
	if got := fmt.Sprint(heldSlots(t, l, 2)); got != "[0 1]" {
		t.Fatalf("slots %s locked, want both", got)
	}
	st, err = l.Set(uriA, 2, 2)
	wantState(t, "after the build ended", st, err, State{MaxJobs: 2, Want: 2, Held: 2})
	// Once the builder is back, nothing is held, waiter or not.
	st, err = l.Set(uriA, 2, 0)
	wantState(t, "released", st, err, State{MaxJobs: 2})
	if got := heldSlots(t, l, 2); len(got) != 0 {
		t.Fatalf("slots %v still locked after release", got)
	}
}

// TestWaiterLetsGoWhenNoLongerWanted: a waiter whose builder recovered
// before Nix's build ended does not keep the slot it finally gets.
func TestWaiterLetsGoWhenNoLongerWanted(t *testing.T) {
	l := newLocker(t)
	nix := startHolder(t, slotPath(l, 0))
	if _, err := l.Set(uriA, 1, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Set(uriA, 1, 0); err != nil {
		t.Fatal(err)
	}
	nix.kill(t)
	deadline := time.Now().Add(5 * time.Second)
	for {
		// The waiter wakes, sees the slot is no longer wanted, lets go.
		if got := heldSlots(t, l, 1); len(got) == 0 {
			st, _ := l.Set(uriA, 1, 0)
			if st.Held != 0 {
				t.Fatalf("held %d after release", st.Held)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("a slot that is no longer wanted is still locked 5 s after Nix let go")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
