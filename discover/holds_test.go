package discover

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/nixrb-discover/nixrb-discover/discover/slots"
	"github.com/nixrb-discover/nixrb-discover/health"
	"github.com/nixrb-discover/nixrb-discover/internal/sshdtest"
	"github.com/nixrb-discover/nixrb-discover/render"
	"github.com/nixrb-discover/nixrb-discover/wire"
)

// holdRun is a client with one builder (a real sshd) from a source the
// test drives, holding slots in a current-load directory of its own.
type holdRun struct {
	c        *Client
	sshd     *sshdtest.SSHD
	b1       Candidate
	src      handSource
	machines string
	stateDir string
	// stop stops the client and waits for it (also run at cleanup).
	stop func()
}

func startHoldRun(t *testing.T, maxJobs int, mc MembershipConfig) *holdRun {
	t.Helper()
	// No agent watches this sshd: every check is a fresh probe, as for a
	// builder without one.
	mc.ProbeEvery = time.Millisecond
	sshdtest.Require(t)
	signer := sshdtest.NewSigner(t)
	sshd := sshdtest.Start(t, sshdtest.Options{Authorized: []ssh.PublicKey{signer.PublicKey()}})
	host, portStr, _ := net.SplitHostPort(sshd.Addr)
	port, _ := strconv.Atoi(portStr)
	h := &holdRun{sshd: sshd, src: make(handSource, 1), stateDir: t.TempDir()}
	h.b1 = Candidate{Key: "tailnet:b1", Name: "b1", Address: host, Trusted: true, TrustReason: "test",
		Advert: &wire.Advert{Hostname: "b1", SSHUser: "root", SSHPort: port, Protocol: wire.ProtocolSSHNG,
			HostKey: wire.CanonicalHostKey(sshd.HostKey), Systems: []string{"x86_64-linux"}, MaxJobs: maxJobs, SpeedFactor: 1}}
	locker, err := slots.New(h.stateDir, slots.Legacy)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { locker.Close() })
	checker := &health.Checker{Signer: signer, BannerTimeout: 300 * time.Millisecond}
	t.Cleanup(func() { checker.Close() })
	h.machines = filepath.Join(t.TempDir(), "machines")
	h.startClient(t, locker, checker, mc)
	return h
}

// startClient starts h's client (h.c, h.stop) on h's file and source.
func (h *holdRun) startClient(t *testing.T, locker *slots.Locker, checker *health.Checker, mc MembershipConfig) {
	t.Helper()
	h.c = &Client{
		Sources:      []Source{h.src},
		Checker:      checker,
		Slots:        locker,
		Membership:   mc,
		MachinesPath: h.machines,
		NixVersion:   render.NixVersion{Major: 2, Minor: 31},
	}
	h.c.Init()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.c.Run(ctx) }()
	var once sync.Once
	h.stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(h.stop)
	h.src <- Snapshot{Source: SourceTailnet, Candidates: []Candidate{h.b1}}
}

// builder waits (bounded) until b1's status satisfies ok, and returns it.
func (h *holdRun) builder(t *testing.T, what string, ok func(BuilderStatus) bool) BuilderStatus {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	var last BuilderStatus
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := h.c.Status(ctx)
		cancel()
		if err == nil {
			for _, b := range st.Builders {
				if b.Key == h.b1.Key {
					last = b
					if ok(b) {
						return b
					}
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("b1 never %s; last status %+v slots %+v", what, last, last.Slots)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// lockedByOthers counts b1's slot files that another open file holds, as
// Nix's build hook would find them.
func (h *holdRun) lockedByOthers(t *testing.T, maxJobs int) int {
	t.Helper()
	n := 0
	uri := "ssh-ng://root@" + net.JoinHostPort(h.b1.Address, strconv.Itoa(h.b1.Advert.SSHPort))
	for s := range maxJobs {
		path := filepath.Join(h.stateDir, "current-load", slots.LockName(uri, s))
		fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err == unix.EWOULDBLOCK {
			n++
		} else if err == nil {
			unix.Flock(fd, unix.LOCK_UN)
		}
		unix.Close(fd)
	}
	return n
}

func fileState(t *testing.T, path string) (os.FileInfo, []byte) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi, b
}

// TestHungBuilderKeepsItsLineWithAllSlotsHeld: a builder in the file
// whose sshd hangs has all its Nix slots held (Nix would find none free
// and never connect), keeps its line (the file is not rewritten), and
// gets its slots back when sshd answers again.
func TestHungBuilderKeepsItsLineWithAllSlotsHeld(t *testing.T) {
	const jobs = 3
	h := startHoldRun(t, jobs, MembershipConfig{Interval: 200 * time.Millisecond})
	h.builder(t, "healthy in the file", func(b BuilderStatus) bool { return b.InFile && b.State == StateHealthy })
	fi0, b0 := fileState(t, h.machines)
	if !bytes.Contains(b0, []byte("ssh-ng://root@"+h.b1.Address)) {
		t.Fatalf("b1 is not in the machines file:\n%s", b0)
	}
	if n := h.lockedByOthers(t, jobs); n != 0 {
		t.Fatalf("%d slots of a healthy idle builder are held", n)
	}

	h.sshd.Pause(t)
	b := h.builder(t, "held down", func(b BuilderStatus) bool {
		return b.Slots != nil && b.Slots.Held == jobs && b.Slots.Reason == HoldDown
	})
	if !b.InFile || b.State != StateDown {
		t.Errorf("held builder: in file %v, state %s; want in the file, down", b.InFile, b.State)
	}
	if n := h.lockedByOthers(t, jobs); n != jobs {
		t.Errorf("Nix would find %d of %d slots busy, want all", n, jobs)
	}

	h.sshd.Resume(t)
	h.builder(t, "released after sshd answered again", func(b BuilderStatus) bool { return b.State == StateHealthy && b.Slots == nil })
	if n := h.lockedByOthers(t, jobs); n != 0 {
		t.Errorf("%d slots still held after the builder recovered", n)
	}
	fi1, b1 := fileState(t, h.machines)
	if !bytes.Equal(b0, b1) || !fi1.ModTime().Equal(fi0.ModTime()) || !os.SameFile(fi0, fi1) {
		t.Errorf("the machines file was rewritten across the fault:\nbefore %v\n%s\nafter %v\n%s", fi0.ModTime(), b0, fi1.ModTime(), b1)
	}
}

// TestFailingLongerThanTheHoldLeavesTheFile: the line goes once the
// builder has failed for longer than the hold, and its slots with it.
func TestFailingLongerThanTheHoldLeavesTheFile(t *testing.T) {
	const jobs = 2
	h := startHoldRun(t, jobs, MembershipConfig{Interval: 200 * time.Millisecond, Hold: 1500 * time.Millisecond})
	h.builder(t, "healthy in the file", func(b BuilderStatus) bool { return b.InFile && b.State == StateHealthy })
	h.sshd.Pause(t)
	t.Cleanup(func() { h.sshd.Resume(t) })
	h.builder(t, "held down", func(b BuilderStatus) bool { return b.Slots != nil && b.Slots.Held == jobs })
	heldAt := time.Now()
	b := h.builder(t, "out of the file after the hold", func(b BuilderStatus) bool { return !b.InFile })
	if took := time.Since(heldAt); took < time.Second {
		t.Errorf("left the file %v after its slots were held, before the 1.5 s hold", took)
	}
	if b.Slots != nil || h.lockedByOthers(t, jobs) != 0 {
		t.Errorf("slots still held after the line left: %+v", b.Slots)
	}
	if f, _ := os.ReadFile(h.machines); bytes.Contains(f, []byte("@"+h.b1.Address)) {
		t.Errorf("b1 still in the machines file after the hold:\n%s", f)
	}
}

// TestDrainingBuilderIsHeldNotRemoved: a draining advert holds all the
// builder's slots at once and keeps its line; the end of draining
// releases them after a check.
func TestDrainingBuilderIsHeldNotRemoved(t *testing.T) {
	const jobs = 2
	h := startHoldRun(t, jobs, MembershipConfig{Interval: 200 * time.Millisecond})
	h.builder(t, "healthy in the file", func(b BuilderStatus) bool { return b.InFile && b.State == StateHealthy })
	fi0, b0 := fileState(t, h.machines)
	drain := h.b1
	a := *h.b1.Advert
	a.Draining = true
	drain.Advert = &a
	h.src <- Snapshot{Source: SourceTailnet, Candidates: []Candidate{drain}}
	b := h.builder(t, "held draining", func(b BuilderStatus) bool { return b.Slots != nil && b.Slots.Held == jobs })
	if b.Slots.Reason != HoldDraining || !b.InFile {
		t.Errorf("draining builder: slots %+v in file %v; want all held for draining, in the file", b.Slots, b.InFile)
	}
	h.src <- Snapshot{Source: SourceTailnet, Candidates: []Candidate{h.b1}}
	h.builder(t, "released after draining ended", func(b BuilderStatus) bool { return b.State == StateHealthy && b.Slots == nil })
	fi1, b1 := fileState(t, h.machines)
	if !bytes.Equal(b0, b1) || !fi1.ModTime().Equal(fi0.ModTime()) {
		t.Errorf("the machines file was rewritten across draining")
	}
}

// TestOtherClientsLoadIsHeld: a healthy builder whose advert says it runs
// builds (of other clients: the local Nix runs none there) has that many
// slots held, so the local Nix sees the fleet's real load; never more
// than its max-jobs.
func TestOtherClientsLoadIsHeld(t *testing.T) {
	const jobs = 4
	h := startHoldRun(t, jobs, MembershipConfig{Interval: 200 * time.Millisecond})
	h.builder(t, "healthy in the file", func(b BuilderStatus) bool { return b.InFile && b.State == StateHealthy })
	for _, tc := range []struct{ running, want int }{{3, 3}, {9, jobs}, {0, 0}} {
		busy := h.b1
		a := *h.b1.Advert
		a.Capacity.RunningBuilds = tc.running
		busy.Advert = &a
		h.src <- Snapshot{Source: SourceTailnet, Candidates: []Candidate{busy}}
		h.builder(t, "holding its load", func(b BuilderStatus) bool {
			if tc.want == 0 {
				return b.Slots == nil
			}
			return b.Slots != nil && b.Slots.Held == tc.want && b.Slots.Reason == HoldLoad
		})
		if n := h.lockedByOthers(t, jobs); n != tc.want {
			t.Errorf("running %d: Nix would find %d slots busy, want %d", tc.running, n, tc.want)
		}
	}
}

// TestRestartWithItsBuilderDownKeepsTheLine: the client restarts (an
// upgrade, a reboot of the laptop) while a builder in its file is down.
// Its first check fails, yet the line the client wrote before stays,
// with all the builder's slots held: the file is not rewritten without
// it, and not again when the builder comes back.
func TestRestartWithItsBuilderDownKeepsTheLine(t *testing.T) {
	const jobs = 2
	mc := MembershipConfig{Interval: 200 * time.Millisecond}
	h := startHoldRun(t, jobs, mc)
	h.builder(t, "healthy in the file", func(b BuilderStatus) bool { return b.InFile && b.State == StateHealthy })
	h.stop()
	fi0, b0 := fileState(t, h.machines)

	h.sshd.Pause(t)
	t.Cleanup(func() { h.sshd.Resume(t) })
	locker, err := slots.New(h.stateDir, slots.Legacy)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { locker.Close() })
	checker := &health.Checker{Signer: h.c.Checker.(*health.Checker).Signer, BannerTimeout: 300 * time.Millisecond}
	t.Cleanup(func() { checker.Close() })
	h.startClient(t, locker, checker, mc)
	b := h.builder(t, "kept in the file, held down", func(b BuilderStatus) bool {
		return b.InFile && b.State == StateDown && b.Slots != nil && b.Slots.Held == jobs && b.Slots.Reason == HoldDown
	})
	if n := h.lockedByOthers(t, jobs); n != jobs {
		t.Errorf("Nix would find %d of %d slots busy, want all (state %s, %s)", n, jobs, b.State, b.Reason)
	}
	h.sshd.Resume(t)
	h.builder(t, "released after sshd answered again", func(b BuilderStatus) bool { return b.State == StateHealthy && b.Slots == nil })
	fi1, b1 := fileState(t, h.machines)
	if !bytes.Equal(b0, b1) || !fi1.ModTime().Equal(fi0.ModTime()) || !os.SameFile(fi0, fi1) {
		t.Errorf("the machines file was rewritten across the restart:\nbefore %v\n%s\nafter %v\n%s", fi0.ModTime(), b0, fi1.ModTime(), b1)
	}
}
