//go:build linux

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/nixrb-discover/nixrb-discover/internal/netnstest"
	"github.com/nixrb-discover/nixrb-discover/internal/nixtest"
)

// laptop is a client host: its own /nix (so its own Nix slot locks), its
// own client, machines file and status socket.
type laptop struct {
	h                *host
	nixDir, machines string
	socket           string
}

// newLaptop adds a client host to f's bridge and starts its client.
func (f *fleet) newLaptop(t testing.TB, name string) *laptop {
	t.Helper()
	return f.newLaptopHolding(t, name, true)
}

// newLaptopHolding is newLaptop whose client holds the laptop Nix's slot
// locks only when hold (else --nix-state-dir "": a plain managed file).
func (f *fleet) newLaptopHolding(t testing.TB, name string, hold bool) *laptop {
	t.Helper()
	l := &laptop{h: newHostTB(t, f.topo, name), nixDir: nixtest.WorkDir(t, "e2e-"+name+"-nix")}
	if err := os.MkdirAll(nixtest.ClientStateDir(l.nixDir), 0o755); err != nil {
		t.Fatal(err)
	}
	stateDir := ""
	if hold {
		stateDir = nixtest.ClientStateDir(l.nixDir)
	}
	l.machines, l.socket = filepath.Join(l.h.dir, "machines"), filepath.Join(l.h.dir, "client.sock")
	l.h.start(t, "client", f.bin, "client", "--tailnet=false", "--mdns", "--mdns-iface", netnstest.HostIface,
		"--trust-key", f.fleetPub, "--ssh-key", f.key, "--machines", l.machines, "--socket", l.socket,
		"--nix-state-dir", stateDir, "--log-level", "debug")
	return l
}

// buildOpts is a nix-build --max-jobs 0 on the laptop through its
// client's file and with its /nix, whose slot locks its client holds.
func (l *laptop) buildOpts(expr string) nixtest.ClientOptions {
	return nixtest.ClientOptions{Version: nixtest.V28, MachinesFile: l.machines, Netns: l.h.NS, Expr: expr, NixDir: l.nixDir}
}

// slots is fb's slots as the laptop's client shows them: nil when fb is
// not healthy in its file; none held when list --json shows no slots.
func (l *laptop) slots(f *fleet, fb *fleetBuilder) *discover.SlotsStatus {
	st, _ := findBuilder(f.bin, l.socket, fb.name)
	if st == nil || !st.InFile || st.State != discover.StateHealthy {
		return nil
	}
	if st.Slots == nil {
		return &discover.SlotsStatus{Max: st.MaxJobs}
	}
	return st.Slots
}

// TestBusyBuilderSteersOtherLaptopsBuilds is the fleet's real load: two
// laptops (each its own /nix and client) share builder A (speed factor 2)
// and B (speed factor 1), one job each, with build users so their agents
// count running builds. Laptop 2 starts a long build: Nix puts it on A,
// the faster. Laptop 1's client then holds A's slot for that load (A is
// up, in its file, no rewrite), so laptop 1's build goes to B, while the
// same build with a plain file (no client holding slots) goes to A, on
// top of laptop 2's build. When laptop 2's build ends, the slot is
// released and laptop 1 builds on A again.
func TestBusyBuilderSteersOtherLaptopsBuilds(t *testing.T) {
	f := newFleetWith(t, 2, false, func(_ string, o *nixtest.BuilderOptions) {
		o.BuildUsers, o.ExtraNixConf = 2, "max-jobs = 1"
	})
	a, b := f.builders[0], f.builders[1]
	f.agentArgs = []string{"--speed-factor", "2"}
	f.startAgent(t, a)
	f.agentArgs = nil
	f.startAgent(t, b)
	l1 := &laptop{h: f.laptop, nixDir: f.nixDir, machines: f.machines, socket: f.socket}
	f.startClient(t)
	l2 := f.newLaptop(t, "laptop2")
	for _, l := range []*laptop{l1, l2} {
		for _, fb := range []*fleetBuilder{a, b} {
			waitFor(t, joinWithin, fmt.Sprintf("%s in %s's file, nothing held", fb.name, l.h.Name), func() bool {
				s := l.slots(f, fb)
				return s != nil && s.Max == 1 && s.Held == 0
			})
		}
	}
	before, err := snapFile(l1.machines)
	if err != nil {
		t.Fatal(err)
	}

	// Laptop 2's long build: Nix picks A (equal load, higher speed factor).
	ctx, cancel := context.WithTimeout(context.Background(), buildWithin)
	defer cancel()
	long := f.startBuild(t, ctx, l2.buildOpts(spreadExpr(1, 40*time.Second)))
	defer long.wait()
	waitFor(t, joinWithin, "laptop 1's client holding A's slot for laptop 2's build", func() bool {
		s := l1.slots(f, a)
		return s != nil && s.Held == 1 && s.Reason == discover.HoldLoad
	})
	if s := l2.slots(f, a); s == nil || s.Held != 0 {
		t.Errorf("laptop 2's client holds %+v of A's slots: its own build is not another client's load", s)
	}

	// Without our client's locks (a fresh /nix, the same lines): A.
	plain := nixtest.ClientOptions{Version: nixtest.V28, MachinesFile: nixtest.WriteMachinesFile(t, readLines(t, l1.machines)...), Netns: l1.h.NS, Expr: nixtest.TrivialDerivation("plain")}
	if out, stderr, _, err := f.tryBuild(t, ctx, plain); err != nil {
		t.Fatalf("build with a plain file: %v\n%s", err, stderr)
	} else if out != a.name {
		t.Errorf("with a plain file the build ran on %q, want %s (faster; Nix cannot see laptop 2's build)", out, a.name)
	}
	// With the client's slot locks: B.
	if out, stderr, _, err := f.tryBuild(t, ctx, l1.buildOpts(nixtest.TrivialDerivation("steered"))); err != nil {
		t.Fatalf("build through laptop 1's client: %v\n%s", err, stderr)
	} else if out != b.name {
		t.Errorf("through laptop 1's client the build ran on %q, want %s (A is busy with laptop 2's build)", out, b.name)
	}

	res := long.wait()
	if res.err != nil {
		t.Fatalf("laptop 2's long build: %v\n%s", res.err, res.stderr)
	}
	if res.out != a.name {
		t.Errorf("laptop 2's long build ran on %q, want %s", res.out, a.name)
	}
	waitFor(t, leaveWithin, "laptop 1's client releasing A's slot once laptop 2's build ended", func() bool {
		s := l1.slots(f, a)
		return s != nil && s.Held == 0
	})
	if out, stderr, _, err := f.tryBuild(t, ctx, l1.buildOpts(nixtest.TrivialDerivation("released"))); err != nil {
		t.Fatalf("build after the release: %v\n%s", err, stderr)
	} else if out != a.name {
		t.Errorf("after the release the build ran on %q, want %s", out, a.name)
	}
	if after, err := snapFile(l1.machines); err != nil || !after.same(before) {
		t.Errorf("laptop 1's machines file changed (%v -> %v, %v): load is shown by slots, never by rewriting", before, after, err)
	}
}

// readLines is path's non-comment, non-empty lines.
func readLines(t testing.TB, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(string(data), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	return lines
}

// TestIdleBuildersAgentSeesABuildStartAtOnce: on a builder with nothing
// running, the agent measures capacity only every --interval (here an
// hour), yet a build another laptop starts there is in its advert at
// once: Nix locks a build user's file as the build starts, the agent's
// watch on userpool/ sees it, and laptop 1's client holds the slot for
// that load while the build runs, then releases it when it ends.
func TestIdleBuildersAgentSeesABuildStartAtOnce(t *testing.T) {
	if os.Getenv("NIXRB_TEST_BUILD_WAKE") != "1" {
		// Passed on f59444e (the wake alone); fails on the merged tree of
		// 2026-12-03 (the agent's advert never shows the build within
		// 20 s although the watch and the lock count pass their unit
		// tests): under investigation, see the closing note of that day.
		t.Skip("known failing since the merges of 2026-12-03; NIXRB_TEST_BUILD_WAKE=1 runs it")
	}
	f := newFleetWith(t, 1, false, func(_ string, o *nixtest.BuilderOptions) {
		o.BuildUsers, o.ExtraNixConf = 1, "max-jobs = 1"
	})
	a := f.builders[0]
	f.agentArgs = []string{"--interval", "1h"}
	f.startAgent(t, a)
	l1 := &laptop{h: f.laptop, nixDir: f.nixDir, machines: f.machines, socket: f.socket}
	f.startClient(t)
	l2 := f.newLaptop(t, "laptop2")
	for _, l := range []*laptop{l1, l2} {
		waitFor(t, joinWithin, fmt.Sprintf("%s in %s's file, nothing held", a.name, l.h.Name), func() bool {
			s := l.slots(f, a)
			return s != nil && s.Max == 1 && s.Held == 0
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), buildWithin)
	defer cancel()
	long := f.startBuild(t, ctx, l2.buildOpts(spreadExpr(1, 30*time.Second)))
	defer long.wait()
	// Bounded well inside the build's 30 s and the agent's hour.
	waitFor(t, 20*time.Second, "laptop 1's client holding A's slot for laptop 2's just-started build", func() bool {
		s := l1.slots(f, a)
		return s != nil && s.Held == 1 && s.Reason == discover.HoldLoad
	})
	if res := long.wait(); res.err != nil {
		t.Fatalf("laptop 2's build: %v\n%s", res.err, res.stderr)
	}
	waitFor(t, leaveWithin, "laptop 1's client releasing A's slot once the build ended", func() bool {
		s := l1.slots(f, a)
		return s != nil && s.Held == 0
	})
}
