//go:build linux

package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/nixrb-discover/nixrb-discover/discover/slots"
	"github.com/nixrb-discover/nixrb-discover/internal/nixtest"
)

// The tests here judge the client by what the laptop's real Nix does with
// the slot locks the client holds in its state dir (the fleet's nixDir,
// passed as --nix-state-dir): a builder that fails gets all its slots held
// and keeps its line, so Nix skips it without connecting, and a build
// that needs it waits instead of failing.

// Slot reasons in list --json.
const (
	reasonDown     = discover.HoldDown
	reasonDraining = discover.HoldDraining
)

// findBuilder is the trusted builder named name in list --json (nil if
// the client does not list it).
func findBuilder(bin, socket, name string) (*discover.BuilderStatus, error) {
	st, err := tryListJSON(bin, socket)
	if err != nil {
		return nil, err
	}
	for _, b := range st.Builders {
		if b.Name == name && b.Trusted {
			return &b, nil
		}
	}
	return nil, nil
}

// slotsHeld reports whether st (a builder in list --json) is out of Nix's
// use for a fault: down or draining, still in the file, every one of its
// slots held by the client for that reason.
func slotsHeld(st *discover.BuilderStatus) bool {
	if st == nil || st.Slots == nil || !st.InFile {
		return false
	}
	s := st.Slots
	fault := s.Reason == reasonDown && st.State == discover.StateDown ||
		s.Reason == reasonDraining && st.State == discover.StateDraining
	return fault && s.Max > 0 && s.Held == s.Max
}

// slotsReleased reports whether st is healthy, in the file, with no slot
// held but as other clients' load (list --json omits "slots" when the
// client holds none and the local Nix uses none).
func slotsReleased(st *discover.BuilderStatus) bool {
	return st != nil && st.InFile && st.State == discover.StateHealthy &&
		(st.Slots == nil || st.Slots.Reason == "" || st.Slots.Reason == discover.HoldLoad)
}

func slotsString(st *discover.BuilderStatus) string {
	if st == nil {
		return "not listed"
	}
	if st.Slots == nil {
		return fmt.Sprintf("%s, in_file=%v, no slots", st.State, st.InFile)
	}
	s := st.Slots
	return fmt.Sprintf("%s (%s), in_file=%v, slots max=%d held=%d reason=%q nix_running=%d",
		st.State, st.Reason, st.InFile, s.Max, s.Held, s.Reason, s.NixRunning)
}

// lockPaths are the build hook's slot lock files of fb (its ssh-ng line
// and maxJobs slots) in the laptop's Nix state dir.
func (f *fleet) lockPaths(t testing.TB, fb *fleetBuilder, maxJobs int) []string {
	t.Helper()
	uri, err := slots.StoreURI(strings.TrimSpace(line(fb)), slots.Legacy) // the laptop runs Nix 2.8
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for s := range maxJobs {
		paths = append(paths, filepath.Join(nixtest.ClientStateDir(f.nixDir), "current-load", slots.LockName(uri, s)))
	}
	return paths
}

// freeLocks counts the lock files that a non-blocking exclusive flock,
// as the build hook's, could take now (each is released at once). A
// missing file counts as free: Nix would create it and take it.
func freeLocks(paths []string) int {
	free := 0
	for _, p := range paths {
		fd, err := syscall.Open(p, syscall.O_RDWR|syscall.O_CLOEXEC, 0)
		if errors.Is(err, syscall.ENOENT) {
			free++
			continue
		}
		if err != nil {
			continue
		}
		if syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB) == nil {
			free++
		}
		syscall.Close(fd) // releases the lock
	}
	return free
}

// fileSnap is what says a file was rewritten: its inode, mtime and bytes.
type fileSnap struct {
	ino   uint64
	mtime time.Time
	data  []byte
}

func snapFile(path string) (fileSnap, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileSnap{}, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return fileSnap{}, err
	}
	return fileSnap{ino: fi.Sys().(*syscall.Stat_t).Ino, mtime: fi.ModTime(), data: data}, nil
}

func (s fileSnap) same(o fileSnap) bool {
	return s.ino == o.ino && s.mtime.Equal(o.mtime) && bytes.Equal(s.data, o.data)
}

func (s fileSnap) String() string {
	return fmt.Sprintf("inode %d, mtime %v:\n%s", s.ino, s.mtime.Format(time.RFC3339Nano), s.data)
}

// watchFile polls path until stop is closed and sends, at most once, how
// it first differed from before (nothing when it never did); it closes
// the returned channel when done.
func watchFile(path string, before fileSnap, stop <-chan struct{}) <-chan string {
	changed := make(chan string, 1)
	go func() {
		defer close(changed)
		for {
			if now, err := snapFile(path); err != nil || !now.same(before) {
				changed <- fmt.Sprintf("at %v: %v, %v", time.Now().Format(time.RFC3339Nano), err, now)
				return
			}
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return changed
}

// chainExpr is n derivations, each depending on the one before and
// sleeping sleep: the last one's output is the hostnames that built them
// all, one a line, first to last. Nix can only build them one at a time.
func chainExpr(n int, sleep time.Duration) string {
	nonce := fmt.Sprintf("%d-%d", os.Getpid(), time.Now().UnixNano())
	expr := `""`
	for i := range n {
		expr = fmt.Sprintf(`(derivation { name = "chain%d"; system = %q; builder = "/bin/sh"; `+
			`args = [ "-c" "/bin/sleep %g; { [ -z \"$prev\" ] || /bin/cat $prev; read h < /proc/sys/kernel/hostname; echo $h; } > $out" ]; `+
			`prev = %s; nonce = "%s-%d"; })`,
			i, nixtest.System, sleep.Seconds(), expr, nonce, i)
	}
	return expr
}

// bgBuild is a nix-build running in the background (startBuild).
type bgBuild struct {
	done chan struct{} // closed when it has ended
	res  buildResult
}

type buildResult struct {
	out, stderr string
	took        time.Duration
	err         error
}

// startBuild runs f.tryBuild(opts) in the background; cancel ctx and
// wait before the test ends.
func (f *fleet) startBuild(t testing.TB, ctx context.Context, opts nixtest.ClientOptions) *bgBuild {
	b := &bgBuild{done: make(chan struct{})}
	go func() {
		defer close(b.done)
		b.res.out, b.res.stderr, b.res.took, b.res.err = f.tryBuild(t, ctx, opts)
	}()
	return b
}

// wait waits for the build to end and returns its result.
func (b *bgBuild) wait() buildResult { <-b.done; return b.res }

const (
	chainLen   = 6
	chainSleep = 2 * time.Second
)

// checkChain fails t unless out says every link of a chainExpr ran on want.
func checkChain(t *testing.T, out, want string) {
	t.Helper()
	hosts := strings.Fields(out)
	if len(hosts) != chainLen || slices.ContainsFunc(hosts, func(h string) bool { return h != want }) {
		t.Errorf("the chain was built on %v, want %d times %s", hosts, chainLen, want)
	}
}

// TestChainBuildRidesThroughBuilderFault: one builder; a chain of 6
// derivations (2 s each) built --max-jobs 0 through the client's file
// while, ~3 s in, the builder breaks for 10 s (sshd killed, sshd hung,
// link down), then is repaired. The build succeeds on the builder, the
// machines file is never rewritten, and during the outage list --json
// shows all the builder's slots out of Nix's reach, reason down (the
// client's checks) or draining (the agent's sshd watch).
//
// The agent watches its sshd, as in production: the client's own probe
// of a fresh connection comes only every 30 s while the kept connection
// stays healthy, so with --watch-sshd=false a killed or hung listener is
// found late and Nix connects to it first (measured: with sshd killed
// the chain fails 2 s into the outage).
func TestChainBuildRidesThroughBuilderFault(t *testing.T) {
	f := newFleetOf(t, 1, false)
	f.startClient(t)
	b1 := f.builders[0]
	f.startAgent(t, b1)
	waitFor(t, joinWithin, "b1 in use", f.inUse(b1))

	out, base := f.build(t, chainExpr(chainLen, chainSleep))
	checkChain(t, out, "b1")
	t.Logf("fault-free chain of %d × %v: %v", chainLen, chainSleep, base.Round(time.Millisecond))

	const faultAfter, outage = 3 * time.Second, 10 * time.Second
	for _, fault := range faultsOf(b1) {
		t.Run(fault.what, func(t *testing.T) {
			waitFor(t, joinWithin, "b1 in use before the fault", f.inUse(b1))
			before, err := snapFile(f.machines)
			if err != nil {
				t.Fatal(err)
			}
			stopWatch := make(chan struct{})
			changed := watchFile(f.machines, before, stopWatch)
			defer func() {
				close(stopWatch)
				if c := <-changed; c != "" {
					t.Errorf("the machines file was rewritten during the build (before: %v)\n%s", before, c)
				}
				if after, err := snapFile(f.machines); err != nil || !after.same(before) {
					t.Errorf("the machines file changed: before %v\nafter %v (%v)", before, after, err)
				}
			}()

			ctx, cancel := context.WithTimeout(context.Background(), buildWithin)
			defer cancel()
			b := f.startBuild(t, ctx, f.buildOpts(chainExpr(chainLen, chainSleep)))
			defer func() { cancel(); b.wait() }() // never leave it running past the test
			select {
			case <-b.done:
				r := b.wait()
				t.Fatalf("the chain ended before the fault, after %v: %v\n%s", r.took, r.err, r.stderr)
			case <-time.After(faultAfter):
			}

			repair := fault.injectIn(t)
			injected := time.Now()
			// During the outage: b1 keeps its line and, once the client
			// sees the fault, all its slots are out of Nix's reach with
			// reason down or draining. A link of the chain that was running on b1 when
			// the fault came keeps its slot (Nix's own hook holds it; the
			// client takes it when it frees, and shows no reason while it
			// holds none), so what is checked is held + nix_running ==
			// max; the lock files say the same once the client holds all.
			var detected time.Duration
			var last *discover.BuilderStatus
			maxHeld, slotsMax, locksChecked := 0, 0, false
			ended := false
			reported := map[string]bool{} // each kind of error once, not every 50 ms
			errorOnce := func(kind, format string, args ...any) {
				t.Helper()
				if !reported[kind] {
					reported[kind] = true
					t.Errorf(format, args...)
				}
			}
			for time.Since(injected) < outage && !ended {
				st, err := findBuilder(f.bin, f.socket, b1.name)
				if err != nil {
					errorOnce("list", "list --json during the outage: %v", err)
				}
				if st != nil {
					last = st
					if !st.InFile || !f.inFile(b1)() {
						errorOnce("out", "%v after the fault: b1 is out of the machines file: %s", time.Since(injected), slotsString(st))
					}
				}
				if s := st; s != nil && s.Slots != nil && s.Slots.Max > 0 && s.Slots.Held+s.Slots.NixRunning >= s.Slots.Max &&
					(s.State == discover.StateDown && s.Slots.Reason == reasonDown ||
						s.State == discover.StateDraining && s.Slots.Reason == reasonDraining ||
						(s.State == discover.StateDown || s.State == discover.StateDraining) && s.Slots.Held == 0) {
					if detected == 0 {
						detected = time.Since(injected)
						t.Logf("%s: b1 out of use %v after the fault: %s", fault.name, detected.Round(time.Millisecond), slotsString(st))
					}
					maxHeld, slotsMax = max(maxHeld, s.Slots.Held), s.Slots.Max
					if s.Slots.Held == s.Slots.Max && !locksChecked {
						locksChecked = true
						if n := freeLocks(f.lockPaths(t, b1, s.Slots.Max)); n > 0 {
							t.Errorf("list --json says all %d slots of b1 are held, but %d of its lock files are free", s.Slots.Max, n)
						}
					}
				} else if detected > 0 {
					errorOnce("back", "%v after the fault, b1 is back in Nix's reach before the repair: %s", time.Since(injected), slotsString(st))
				}
				select {
				case <-b.done:
					ended = true
				case <-time.After(50 * time.Millisecond):
				}
			}
			if detected == 0 {
				t.Errorf("%s: during the %v outage list --json never showed all of b1's slots held (reason down or draining); last: %s", fault.name, outage, slotsString(last))
			} else if detected > leaveWithin {
				t.Errorf("%s: b1 out of use only %v after the fault, want within %v", fault.name, detected, leaveWithin)
			}
			t.Logf("%s: most slots the client held during the outage: %d of %d", fault.name, maxHeld, slotsMax)
			// With sshd killed or hung, the link running on b1 at the
			// fault goes on and ends within the outage: the client must
			// then hold every slot. With the link down, it stalls (and
			// keeps its slot) until the link is back.
			if fault.name != "link-down" && detected > 0 && maxHeld < slotsMax {
				t.Errorf("%s: the client never held all %d of b1's slots during the outage", fault.name, slotsMax)
			}
			if ended {
				r := b.wait()
				t.Fatalf("the chain ended during the outage, after %v: %v\n%s", r.took, r.err, r.stderr)
			}

			if err := repair(); err != nil {
				t.Fatal(err)
			}
			took := waitFor(t, joinWithin, "b1's slots released after the repair", f.inUse(b1))
			t.Logf("%s: slots released %v after the repair", fault.name, took.Round(time.Millisecond))

			r := b.wait()
			if r.err != nil {
				t.Fatalf("the chain failed after %v: %v\n%s", r.took, r.err, r.stderr)
			}
			checkChain(t, r.out, "b1")
			t.Logf("%s: chain built in %v: %v over the fault-free %v (outage %v)", fault.name,
				r.took.Round(time.Millisecond), (r.took - base).Round(time.Millisecond), base.Round(time.Millisecond), outage)
		})
	}
}

// TestBrokenBuilderGetsNoConnection: two builders; b1 breaks (sshd
// killed; sshd hung); once list --json shows its slots held, a build of
// two independent derivations goes entirely to b2 and the laptop's Nix
// never even starts an ssh to b1.
//
// How "Nix connected to b1" is told apart from the client's own checks:
// both come from the laptop's address with the same key (field 3 of the
// line is the client's --ssh-key), and with sshd killed b1 logs nothing
// at all, so b1's sshd log cannot tell. But Nix reaches a builder only
// through OpenSSH's ssh, and the client never runs ssh (its checks are
// Go's SSH client). So the build's ssh reads a config (NIX_SSHOPTS -F)
// that includes the system one and adds a `Match exec` that appends the
// host it is about to connect to to a log, then matches nothing: every ssh
// Nix starts, whether the connection then works or not, leaves a line,
// and nothing else changes. Nix's "cannot build on" errors are checked
// too.
func TestBrokenBuilderGetsNoConnection(t *testing.T) {
	f := newFleetOf(t, 2, false)
	f.startClient(t)
	b1, b2 := f.builders[0], f.builders[1]
	for _, fb := range f.builders {
		f.startAgent(t, fb)
	}
	sshLog := filepath.Join(f.laptop.dir, "nix-ssh.log")
	sshConf := filepath.Join(f.laptop.dir, "nix-ssh_config")
	conf := "Include /etc/ssh/ssh_config\nMatch exec \"echo %h %p %r >> " + sshLog + "; false\"\n"
	if err := os.WriteFile(sshConf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}

	for _, fault := range []fault{sshdKilled(b1), sshdHung(b1)} {
		t.Run(fault.what, func(t *testing.T) {
			for _, fb := range f.builders {
				waitFor(t, joinWithin, fb.name+" in use before the fault", f.inUse(fb))
			}
			repair := fault.injectIn(t)
			took := waitFor(t, leaveWithin, "b1's slots held", f.outOfUse(b1))
			st := f.status(t, b1)
			t.Logf("%s: b1 out of use after %v: %s", fault.name, took.Round(time.Millisecond), slotsString(st))

			logged, _ := os.ReadFile(sshLog)
			opts := f.buildOpts(spreadExpr(2, 0))
			opts.SSHOpts = "-F " + sshConf
			ctx, cancel := context.WithTimeout(context.Background(), buildWithin)
			defer cancel()
			out, stderr, buildTook, err := f.tryBuild(t, ctx, opts)
			if err != nil {
				t.Fatalf("nix-build with b1 out of use failed after %v: %v\n%s", buildTook, err, stderr)
			}
			if hosts := partHosts(out); len(hosts) != 2 || slices.ContainsFunc(hosts, func(h string) bool { return h != "b2" }) {
				t.Errorf("the 2 derivations were built on %v, want both on b2", hosts)
			}
			all, _ := os.ReadFile(sshLog)
			var toB1, toB2 int
			for _, l := range strings.Split(string(all[len(logged):]), "\n") {
				switch host, _, _ := strings.Cut(l, " "); host {
				case b1.host.IP.String():
					toB1++
				case b2.host.IP.String():
					toB2++
				}
			}
			if toB2 == 0 {
				t.Fatalf("the build's ssh logged no connection to b2 either: the discriminator is broken\n%s", all[len(logged):])
			}
			if toB1 > 0 {
				t.Errorf("the laptop's Nix started %d ssh connections to b1 while its slots were held:\n%s", toB1, all[len(logged):])
			}
			if strings.Contains(stderr, "cannot build on '"+strings.TrimSpace(line(b1))) {
				t.Errorf("Nix tried b1 while its slots were held:\n%s", stderr)
			}
			t.Logf("%s: build took %v, ssh to b2 %d times, to b1 %d times", fault.name, buildTook.Round(time.Millisecond), toB2, toB1)
			if st := f.status(t, b1); !slotsHeld(st) || !f.inFile(b1)() {
				t.Errorf("after the build b1 is %s, want still out of use, in the file", slotsString(st))
			}

			if err := repair(); err != nil {
				t.Fatal(err)
			}
			took = waitFor(t, joinWithin, "b1's slots released after the repair", f.inUse(b1))
			t.Logf("%s: slots released %v after the repair", fault.name, took.Round(time.Millisecond))
		})
	}
}

// TestClientKilledMidOutageReleasesSlots: the client holds a broken
// builder's slots; SIGKILL it and the kernel frees every lock within 1 s,
// so the laptop's Nix sees a plain machines file: with sshd still dead it
// tries the builder and fails fast (a lock left held would make it
// postpone forever), and once sshd is back it builds there.
func TestClientKilledMidOutageReleasesSlots(t *testing.T) {
	f := newFleetOf(t, 1, false)
	f.startClient(t)
	b1 := f.builders[0]
	f.startAgent(t, b1)
	waitFor(t, joinWithin, "b1 in use", f.inUse(b1))

	repair := sshdKilled(b1).injectIn(t)
	waitFor(t, leaveWithin, "b1's slots held", f.outOfUse(b1))
	st := f.status(t, b1)
	t.Logf("b1 out of use: %s", slotsString(st))
	locks := f.lockPaths(t, b1, st.Slots.Max)
	if n := freeLocks(locks); n > 0 {
		t.Fatalf("list --json says all %d slots are held, but %d of %v are free", st.Slots.Max, n, locks)
	}

	if err := f.client.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	took := waitFor(t, time.Second, "every slot lock of b1 free after SIGKILL", func() bool { return freeLocks(locks) == len(locks) })
	t.Logf("all %d slot locks free %v after SIGKILL", len(locks), took.Round(time.Millisecond))
	if !f.inFile(b1)() {
		t.Fatalf("b1's line is not in the machines file the dead client left")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, stderr, buildTook, err := f.tryBuild(t, ctx, f.buildOpts(nixtest.TrivialDerivation("dead-client")))
	switch {
	case err == nil:
		t.Fatalf("a build with b1's sshd dead succeeded")
	case ctx.Err() != nil:
		t.Fatalf("with the client dead, Nix did not fail fast on b1's dead sshd (slots still held?): %v\n%s", err, stderr)
	case !strings.Contains(stderr, "cannot build on '"+strings.TrimSpace(line(b1))):
		t.Errorf("the build failed without trying b1: %v\n%s", err, stderr)
	}
	t.Logf("sshd dead, client dead: nix-build tried b1 and failed in %v", buildTook.Round(time.Millisecond))
	if buildTook > 10*time.Second {
		t.Errorf("the failing build took %v, want it fast", buildTook)
	}

	if err := repair(); err != nil {
		t.Fatal(err)
	}
	out, buildTook := f.build(t, nixtest.TrivialDerivation("dead-client-repaired"))
	if out != "b1" {
		t.Errorf("after the repair the build ran on %q, want b1", out)
	}
	t.Logf("sshd back, client dead: nix-build on b1 in %v", buildTook.Round(time.Millisecond))
}
