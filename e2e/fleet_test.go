//go:build linux

package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/nixrb-discover/nixrb-discover/internal/netnstest"
	"github.com/nixrb-discover/nixrb-discover/internal/nixtest"
)

// Bounds of the fleet scenarios. The goals (docs/BENCHMARKS.md, the README) are far
// tighter; these only keep a broken run from hanging.
const (
	joinWithin  = 30 * time.Second
	leaveWithin = 10 * time.Second
	buildWithin = 90 * time.Second
)

// fleetBuilder is one builder host: a namespace on the bridge with its own
// /nix and /etc/nix, a real nix-daemon and sshd (nixtest), and the real
// agent running inside it.
type fleetBuilder struct {
	name    string
	host    *host
	nix     *nixtest.Builder
	signKey string // the fleet key it signs with ("" for unsigned)
	agent   *exec.Cmd
}

// fleet is the whole topology: three trusted builders, a rogue builder
// whose adverts are signed with a key nobody trusts, and a laptop running
// the client, each a namespace on one hub bridge (nothing in the root
// namespace but the test).
type fleet struct {
	bin       string
	topo      *netnstest.Topology
	laptop    *host
	fleetPub  string
	key       string // the client's SSH key
	clientPub string
	machines  string
	socket    string
	client    *exec.Cmd
	builders  []*fleetBuilder
	rogue     *fleetBuilder
	// nixDir is the laptop's /nix for every f.build: the client holds
	// Nix's slot locks in its state dir (nixtest.ClientStateDir), so the
	// locks are the ones the laptop's nix-build sees.
	nixDir string
	// agentArgs are more flags for every startAgent.
	agentArgs []string
}

func newFleet(t testing.TB) *fleet { return newFleetOf(t, 3, true) }

// newFleetOf is newFleet with n trusted builders (b1…bn, at most 3) and,
// if rogue, the rogue.
func newFleetOf(t testing.TB, n int, rogue bool) *fleet { return newFleetWith(t, n, rogue, nil) }

// newFleetWith is newFleetOf with each builder's options changed by tweak
// (nil: none) before it starts.
func newFleetWith(t testing.TB, n int, rogue bool, tweak func(name string, o *nixtest.BuilderOptions)) *fleet {
	t.Helper()
	nixtest.RequireTools(t)
	netnstest.RequireRoot(t)
	f := &fleet{bin: buildBinaryTB(t), topo: netnstest.New(t)}
	f.laptop = newHostTB(t, f.topo, "laptop")
	f.nixDir = nixtest.WorkDir(t, "e2e-laptop-nix")
	// The client needs the state dir to exist (as Nix's does); Nix
	// creates the rest of its /nix around it.
	if err := os.MkdirAll(nixtest.ClientStateDir(f.nixDir), 0o755); err != nil {
		t.Fatal(err)
	}
	fleetKey := filepath.Join(f.laptop.dir, "fleet")
	if out, err := exec.Command(f.bin, "keygen", "--out", fleetKey).CombinedOutput(); err != nil {
		t.Fatalf("keygen: %v %s", err, out)
	}
	f.fleetPub = fleetKey + ".pub"
	wrongKey := filepath.Join(f.laptop.dir, "wrong-fleet")
	if out, err := exec.Command(f.bin, "keygen", "--out", wrongKey).CombinedOutput(); err != nil {
		t.Fatalf("keygen: %v %s", err, out)
	}
	f.key = filepath.Join(f.laptop.dir, "id_ed25519")
	f.machines = filepath.Join(f.laptop.dir, "machines")
	f.socket = filepath.Join(f.laptop.dir, "client.sock")
	if out, err := exec.Command(f.bin, "client", "--once", "--tailnet=false", "--static", "/dev/null", "--ssh-key", f.key, "--machines", filepath.Join(f.laptop.dir, "first")).CombinedOutput(); err != nil {
		t.Fatalf("create the client key: %v %s", err, out)
	}
	pub, _ := os.ReadFile(f.key + ".pub")
	f.clientPub = strings.TrimSpace(string(pub))

	// b2 alone has kvm; every builder sets its features, so that a
	// machine with /dev/kvm does not give all of them kvm by default.
	features := map[string][]string{"b1": {"big-parallel"}, "b2": {"big-parallel", "kvm"}, "b3": {"big-parallel"}, "rogue": {"big-parallel", "kvm"}}
	names := []string{"b1", "b2", "b3"}[:n]
	if rogue {
		names = append(names, "rogue")
	}
	for _, name := range names {
		fb := &fleetBuilder{name: name, host: newHostTB(t, f.topo, name)}
		opts := nixtest.BuilderOptions{
			Version: nixtest.V28, Hostname: name, Netns: fb.host.NS, Addr: fb.host.IP,
			AuthorizedKeys: []string{f.clientPub}, SystemFeatures: features[name],
		}
		if tweak != nil {
			tweak(name, &opts)
		}
		fb.nix = nixtest.StartBuilder(t, opts)
		fb.signKey = filepath.Join(fb.host.dir, "fleet")
		k, _ := os.ReadFile(fleetKey)
		if name == "rogue" { // signed, by a key the laptop does not trust
			k, _ = os.ReadFile(wrongKey)
		}
		if err := os.WriteFile(fb.signKey, k, 0o600); err != nil {
			t.Fatal(err)
		}
		if name == "rogue" {
			f.rogue = fb
		} else {
			f.builders = append(f.builders, fb)
		}
	}
	return f
}

// startAgent runs `nixrb-discover advertise --mdns` inside the builder, so
// that it reports the builder's own Nix facts and watches its own sshd.
func (f *fleet) startAgent(t testing.TB, fb *fleetBuilder) {
	t.Helper()
	cmd, err := fb.nix.Command(f.bin, "advertise", "--tailnet=false", "--mdns", "--mdns-iface", netnstest.HostIface,
		"--sign-key", fb.signKey, "--ssh-user", "root", "--ssh-host-key", fb.nix.HostKeyPath+".pub",
		"--hostname", fb.name, "--log-level", "debug")
	if err != nil {
		t.Fatal(err)
	}
	cmd.Args = append(cmd.Args, f.agentArgs...)
	fb.agent = fb.host.run(t, "advertise", cmd)
}

func (f *fleet) startClient(t testing.TB) {
	t.Helper()
	f.startClientStateDir(t, nixtest.ClientStateDir(f.nixDir))
}

// startClientStateDir is startClient with --nix-state-dir stateDir (""
// holds no slots: a failing builder leaves the file).
func (f *fleet) startClientStateDir(t testing.TB, stateDir string) {
	t.Helper()
	f.client = f.laptop.start(t, "client", f.bin, "client", "--tailnet=false", "--mdns", "--mdns-iface", netnstest.HostIface,
		"--trust-key", f.fleetPub, "--ssh-key", f.key, "--machines", f.machines, "--socket", f.socket,
		"--nix-state-dir", stateDir, "--log-level", "debug")
}

// fault is one way to break a builder, and its repair.
type fault struct {
	name           string // short, for metric names
	what           string // for people
	fb             *fleetBuilder
	inject, repair func() error
}

// injectIn breaks the builder and returns its repair, which also runs
// when t ends if the test did not call it: a failing test never leaves a
// builder broken for the next one. The repair runs at most once.
func (ft fault) injectIn(t testing.TB) (repair func() error) {
	t.Helper()
	if err := ft.inject(); err != nil {
		t.Fatalf("%s: %v", ft.what, err)
	}
	var once sync.Once
	var err error
	repair = func() error {
		once.Do(func() { err = ft.repair() })
		return err
	}
	t.Cleanup(func() { _ = repair() })
	return repair
}

// faults are the three the fleet is judged by: b1's sshd killed, b2's
// sshd hung, b3's link down.
func (f *fleet) faults() []fault {
	return []fault{sshdKilled(f.builders[0]), sshdHung(f.builders[1]), linkDown(f.builders[2])}
}

// faultsOf are the same three faults, all on fb.
func faultsOf(fb *fleetBuilder) []fault { return []fault{sshdKilled(fb), sshdHung(fb), linkDown(fb)} }

func sshdKilled(fb *fleetBuilder) fault {
	return fault{"sshd-killed", "sshd killed (kill -9)", fb, fb.nix.KillSSHD, fb.nix.RestartSSHD}
}

func sshdHung(fb *fleetBuilder) fault {
	return fault{"sshd-hung", "sshd hung (SIGSTOP)", fb, fb.nix.StopSSHD, fb.nix.ContSSHD}
}

func linkDown(fb *fleetBuilder) fault {
	return fault{"link-down", "link down (packets dropped)", fb, fb.host.LinkDown, fb.host.LinkUp}
}

// line is the start of fb's line in the machines file.
func line(fb *fleetBuilder) string { return "ssh-ng://root@" + fb.host.IP.String() + " " }

func (f *fleet) inFile(fb *fleetBuilder) func() bool { return fileHas(f.machines, line(fb)) }

// build runs a real nix-build --max-jobs 0 on the laptop through the
// machines file the client keeps, and returns the output (the hostnames
// that built it) and how long it took.
func (f *fleet) build(t testing.TB, expr string) (string, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), buildWithin)
	defer cancel()
	out, stderr, took, err := f.tryBuild(t, ctx, f.buildOpts(expr))
	if err != nil {
		file, _ := os.ReadFile(f.machines)
		t.Fatalf("nix-build through the client's file failed after %v: %v\n%s\nmachines file:\n%s", took, err, stderr, file)
	}
	return out, took
}

// buildOpts is the nix-build f.build runs: Nix 2.8 on the laptop, through
// the client's machines file, with the laptop's /nix (f.nixDir), whose
// slot locks the client holds.
func (f *fleet) buildOpts(expr string) nixtest.ClientOptions {
	return nixtest.ClientOptions{Version: nixtest.V28, MachinesFile: f.machines, Netns: f.laptop.NS, Expr: expr, NixDir: f.nixDir}
}

// tryBuild runs nix-build with opts and returns its trimmed output, its
// stderr, how long it took and its error.
func (f *fleet) tryBuild(t testing.TB, ctx context.Context, opts nixtest.ClientOptions) (out, stderr string, took time.Duration, err error) {
	t.Helper()
	start := time.Now()
	out, stderr, err = nixtest.NixBuild(t, ctx, opts)
	return strings.TrimSpace(out), stderr, time.Since(start), err
}

// spreadExpr is n independent derivations that each sleep, then write the
// hostname that built them, and one that collects those hostnames: with
// one job per builder, the parts run at once on different builders.
func spreadExpr(n int, sleep time.Duration) string {
	nonce := fmt.Sprintf("%d-%d", os.Getpid(), time.Now().UnixNano())
	var parts []string
	for i := range n {
		parts = append(parts, fmt.Sprintf(`(derivation { name = "part%d"; system = %q; builder = "/bin/sh"; `+
			`args = [ "-c" "/bin/sleep %g; read h < /proc/sys/kernel/hostname; echo $h > $out" ]; nonce = "%s-%d"; })`,
			i, nixtest.System, sleep.Seconds(), nonce, i))
	}
	return fmt.Sprintf(`derivation { name = "spread"; system = %q; builder = "/bin/sh"; `+
		`args = [ "-c" "for p in $parts; do read h < $p; echo $h; done > $out" ]; parts = [ %s ]; }`,
		nixtest.System, strings.Join(parts, " "))
}

// partHosts returns the hostnames that built a spreadExpr's parts (the
// collector's own builder is not among them).
func partHosts(out string) []string { return strings.Fields(out) }

func (f *fleet) status(t *testing.T, fb *fleetBuilder) *discover.BuilderStatus {
	t.Helper()
	st, err := findBuilder(f.bin, f.socket, fb.name)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// outOfUse reports whether Nix will not use fb: list --json shows it
// down or draining with all its slots held, and its line in the file.
func (f *fleet) outOfUse(fb *fleetBuilder) func() bool {
	return func() bool {
		st, _ := findBuilder(f.bin, f.socket, fb.name)
		return slotsHeld(st) && f.inFile(fb)()
	}
}

// inUse reports whether fb is healthy, in the file, its slots released.
func (f *fleet) inUse(fb *fleetBuilder) func() bool {
	return func() bool {
		st, _ := findBuilder(f.bin, f.socket, fb.name)
		return slotsReleased(st) && f.inFile(fb)()
	}
}

// TestBuildFleet runs the whole product as users do: three builder hosts
// (own /nix, real nix-daemon and sshd, the real agent advertising signed
// adverts by mDNS), a rogue builder signed by an untrusted key and a
// laptop whose client keeps the machines file, each a namespace on one
// bridge. Every scenario is judged by the machines file, by list --json
// and by real nix-builds (--max-jobs 0) through that file.
func TestBuildFleet(t *testing.T) {
	f := newFleet(t)
	top := t // processes that outlive a subtest are started with top
	b1, b3 := f.builders[0], f.builders[2]
	rec := startRecorder(t, f.rogue.host) // hears what a rogue on the link hears
	f.startClient(t)
	for _, fb := range append(slices.Clone(f.builders), f.rogue) {
		f.startAgent(t, fb)
	}

	t.Run("join", func(t *testing.T) {
		for _, fb := range f.builders {
			took := waitFor(t, joinWithin, fb.name+" in the machines file", f.inFile(fb))
			t.Logf("%s in the machines file %v after the agents started", fb.name, took)
		}
		file, _ := os.ReadFile(f.machines)
		if bytes.Contains(file, []byte(f.rogue.host.IP.String())) {
			t.Fatalf("the rogue (signed by an untrusted key) is in the machines file:\n%s", file)
		}
		for _, fb := range f.builders {
			st := f.status(t, fb)
			if st == nil || !st.InFile || st.State != discover.StateHealthy {
				t.Errorf("list --json says %s is %+v, want healthy and in the file", fb.name, st)
			}
		}
		var rogue *discover.BuilderStatus
		for _, b := range listJSON(t, f.bin, f.socket).Builders {
			if strings.Contains(b.Address, f.rogue.host.IP.String()) {
				rogue = &b
			}
		}
		switch {
		case rogue == nil:
			t.Errorf("list --json does not show the rogue at all")
		case rogue.Trusted || rogue.InFile || !strings.Contains(rogue.Trust, "unknown key"):
			t.Errorf("list --json shows the rogue as %+v; want untrusted (signed by a key not trusted), out of the file", *rogue)
		default:
			t.Logf("rogue: %s (%s)", rogue.Trust, rogue.TrustHint)
		}
		out, took := f.build(t, nixtest.TrivialDerivation("join"))
		if !slices.Contains([]string{"b1", "b2", "b3"}, out) {
			t.Errorf("the build ran on %q, want one of the trusted builders", out)
		}
		t.Logf("nix-build ran on %s in %v", out, took)
	})

	t.Run("kvm goes to the kvm builder only", func(t *testing.T) {
		if file, _ := os.ReadFile(f.machines); !bytes.Contains(file, []byte("kvm")) {
			t.Fatalf("no builder line offers kvm:\n%s", file)
		}
		for i := range 3 {
			out, _ := f.build(t, nixtest.TrivialDerivation(fmt.Sprintf("kvm%d", i), "kvm"))
			if out != "b2" {
				t.Errorf("a derivation requiring kvm was built on %q, want b2 (the only one with kvm)", out)
			}
		}
	})

	t.Run("x86_64 work spreads over builders", func(t *testing.T) {
		out, took := f.build(t, spreadExpr(3, 3*time.Second))
		hosts := partHosts(out)
		distinct := slices.Compact(slices.Sorted(slices.Values(hosts)))
		t.Logf("3 parts built on %v in %v", hosts, took)
		if len(distinct) < 2 {
			t.Errorf("3 parallel derivations all built on %v, want them spread over the builders", distinct)
		}
	})

	// faults: each fault takes its builder out of use (list --json shows
	// all its slots held, reason down or draining, while its line stays in
	// the file), a nix-build started right after succeeds on the others,
	// and the builder's slots are released once it is restored.
	for _, fault := range f.faults() {
		t.Run(fault.what, func(t *testing.T) {
			for _, fb := range f.builders {
				waitFor(t, joinWithin, fb.name+" in use before the fault", f.inUse(fb))
			}
			repair := fault.injectIn(t)
			took := waitFor(t, leaveWithin, fault.fb.name+" out of use (all its slots held, its line in the file)", f.outOfUse(fault.fb))
			t.Logf("%s: %s out of use after %v: %s", fault.name, fault.fb.name, took, slotsString(f.status(t, fault.fb)))
			out, buildTook := f.build(t, spreadExpr(2, 0))
			if slices.Contains(partHosts(out), fault.fb.name) {
				t.Errorf("a build went to %s while it was broken: %v", fault.fb.name, partHosts(out))
			}
			t.Logf("%s: nix-build right after took %v, built on %v", fault.name, buildTook, partHosts(out))
			if st := f.status(t, fault.fb); !slotsHeld(st) || !f.inFile(fault.fb)() {
				t.Errorf("after the build %s is %s, want still out of use with its line in the file", fault.fb.name, slotsString(st))
			}
			if err := repair(); err != nil {
				t.Fatal(err)
			}
			took = waitFor(t, joinWithin, fault.fb.name+"'s slots released", f.inUse(fault.fb))
			t.Logf("%s: restored, slots released after %v", fault.name, took)
		})
	}

	t.Run("drained builder gets no new builds", func(t *testing.T) {
		for _, fb := range f.builders {
			waitFor(t, joinWithin, fb.name+" in use", f.inUse(fb))
		}
		b1.agent.Process.Signal(syscall.SIGUSR1)
		took := waitFor(t, leaveWithin, "b1 out of use after SIGUSR1", f.outOfUse(b1))
		t.Logf("drain: b1 out of use after %v", took)
		if st := f.status(t, b1); st == nil || st.State != discover.StateDraining || st.Slots == nil || st.Slots.Reason != reasonDraining {
			t.Errorf("list --json says drained b1 is %s, want draining, its slots held for draining", slotsString(st))
		}
		out, _ := f.build(t, spreadExpr(3, time.Second))
		if slices.Contains(partHosts(out), "b1") {
			t.Errorf("a build went to drained b1: %v", partHosts(out))
		}
		b1.agent.Process.Signal(syscall.SIGUSR1)
		took = waitFor(t, joinWithin, "b1's slots released after the second SIGUSR1", f.inUse(b1))
		t.Logf("undrain: b1's slots released after %v", took)
	})

	t.Run("client restart rewrites nothing", func(t *testing.T) {
		for _, fb := range f.builders {
			waitFor(t, joinWithin, fb.name+" in the machines file", f.inFile(fb))
		}
		before, _ := os.ReadFile(f.machines)
		fi, err := os.Stat(f.machines)
		if err != nil {
			t.Fatal(err)
		}
		f.client.Process.Signal(syscall.SIGTERM)
		waitExit(t, f.client, 5*time.Second)
		f.startClient(top) // it runs on for the subtests after this one
		// The restarted client has checked everyone once it lists all
		// three healthy; give it a moment more to (wrongly) write.
		waitFor(t, joinWithin, "the restarted client lists all builders healthy", func() bool {
			st, err := tryListJSON(f.bin, f.socket)
			if err != nil {
				return false
			}
			n := 0
			for _, b := range st.Builders {
				if b.Trusted && b.InFile && b.State == discover.StateHealthy {
					n++
				}
			}
			return n == 3
		})
		time.Sleep(time.Second)
		after, _ := os.ReadFile(f.machines)
		fi2, _ := os.Stat(f.machines)
		if !bytes.Equal(before, after) || !fi2.ModTime().Equal(fi.ModTime()) {
			t.Errorf("restarting the client rewrote an unchanged machines file (mtime %v → %v)\nbefore:\n%s\nafter:\n%s", fi.ModTime(), fi2.ModTime(), before, after)
		}
	})

	t.Run("re-keyed builder: the old key is never accepted again", func(t *testing.T) {
		waitFor(t, joinWithin, "b3 in the machines file", f.inFile(b3))
		oldPriv, err := os.ReadFile(b3.nix.HostKeyPath)
		if err != nil {
			t.Fatal(err)
		}
		oldB64 := fieldEight(b3.nix.HostKey())
		oldPacket := rec.last(t, keyBlob(b3.nix.HostKey()))

		if err := b3.nix.SetHostKey(nil); err != nil {
			t.Fatal(err)
		}
		newB64 := fieldEight(b3.nix.HostKey())
		took := waitFor(t, joinWithin, "b3 in the machines file with its new host key", fileHas(f.machines, newB64))
		t.Logf("re-key: b3's new host key in the machines file after %v", took)
		if fileHas(f.machines, oldB64)() {
			t.Fatalf("b3's old host key is still in the machines file")
		}

		// An attacker with b3's old private key (an old disk, a backup)
		// runs sshd with it and replays b3's last signed advert from
		// before the re-key, pointing its address records at itself.
		if err := f.rogue.nix.SetHostKey(oldPriv); err != nil {
			t.Fatal(err)
		}
		replay := rewriteA(t, oldPacket, f.rogue.host.IP)
		stop := rec.replay(t, replay, 200*time.Millisecond)
		defer stop()
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			file, _ := os.ReadFile(f.machines)
			if bytes.Contains(file, []byte(oldB64)) || bytes.Contains(file, []byte(f.rogue.host.IP.String())) {
				t.Fatalf("the replayed advert with b3's old key got into the machines file:\n%s", file)
			}
			time.Sleep(20 * time.Millisecond)
		}
		stop()
		// The replay did reach the client: list shows it, refused.
		var seen *discover.BuilderStatus
		for _, b := range listJSON(t, f.bin, f.socket).Builders {
			if strings.Contains(b.Address, f.rogue.host.IP.String()) && b.Name == "b3" || strings.Contains(b.Key, "b3@"+f.rogue.host.IP.String()) {
				seen = &b
			}
		}
		if seen == nil || seen.Trusted || seen.InFile {
			t.Errorf("list --json shows the replayed advert as %+v; want it listed, refused, with the reason", seen)
		} else {
			t.Logf("replayed advert refused: %s", seen.Trust)
		}
		if st := f.status(t, b3); st == nil || !st.InFile || !fileHas(f.machines, newB64)() {
			t.Errorf("b3 (new key) is %+v after the replay, want healthy, in the file with its new key", st)
		}
	})
}

// fieldEight is a host key line ("ssh-ed25519 AAAA… comment") as field 8
// of a machines line has it: the base64 of type and key, no comment.
func fieldEight(line string) string {
	f := strings.Fields(line)
	if len(f) > 2 {
		f = f[:2]
	}
	return base64.StdEncoding.EncodeToString([]byte(strings.Join(f, " ")))
}

// waitExit waits (bounded) for a command the test signalled.
func waitExit(t testing.TB, cmd *exec.Cmd, within time.Duration) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(within):
		t.Fatalf("%s did not exit within %v", cmd.Path, within)
	}
}
