//go:build linux

package e2e

import (
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/internal/clienttest"
	"github.com/nixrb-discover/nixrb-discover/internal/netnstest"
	"github.com/nixrb-discover/nixrb-discover/internal/nixtest"
)

// BenchmarkMDNSJoinLeave runs the real binaries over mDNS between
// namespaces and measures, per iteration: advertise started → in use
// (line in the machines file, no slot held; includes reading the facts
// from the real nix, the announcement and the SSH + Nix check), SIGTERM →
// out of use (the signed draining advert: all its Nix slots held, its
// line kept), and link down (packets dropped) → out of use (reason down).
//
//	go test -run '^$' -bench BenchmarkMDNSJoinLeave -benchtime 20x ./e2e
func BenchmarkMDNSJoinLeave(b *testing.B) {
	nixtest.RequireTools(b)
	netnstest.RequireRoot(b)
	bin := buildBinaryTB(b)
	topo := netnstest.New(b)
	laptop, b1 := newHostTB(b, topo, "laptop"), newHostTB(b, topo, "b1")
	fleet := filepath.Join(laptop.dir, "fleet")
	if out, err := exec.Command(bin, "keygen", "--out", fleet).CombinedOutput(); err != nil {
		b.Fatalf("keygen: %v %s", err, out)
	}
	signKey := filepath.Join(b1.dir, "fleet")
	k, _ := os.ReadFile(fleet)
	if err := os.WriteFile(signKey, k, 0o600); err != nil {
		b.Fatal(err)
	}
	clientKey := filepath.Join(laptop.dir, "id_ed25519")
	machines := filepath.Join(laptop.dir, "machines")
	exec.Command(bin, "client", "--once", "--tailnet=false", "--static", "/dev/null", "--ssh-key", clientKey, "--machines", filepath.Join(laptop.dir, "first")).Run()
	clientPub, _ := os.ReadFile(clientKey + ".pub")
	hostKey := b1.startSSHD(b, strings.TrimSpace(string(clientPub)))
	socket := filepath.Join(laptop.dir, "sock")
	stateDir := filepath.Join(laptop.dir, "nix-state") // slot locks, not in the host's /nix/var/nix
	if err := os.Mkdir(stateDir, 0o755); err != nil {
		b.Fatal(err)
	}
	laptop.start(b, "client", bin, "client", "--tailnet=false", "--mdns", "--mdns-iface", netnstest.HostIface,
		"--trust-key", fleet+".pub", "--ssh-key", clientKey, "--machines", machines, "--socket", socket,
		"--nix-state-dir", stateDir)
	inFile := fileHas(machines, "root@"+b1.IP.String())
	inUse := func() bool { st, _ := findBuilder(bin, socket, "b1"); return slotsReleased(st) && inFile() }
	outOfUse := func(reason string) func() bool {
		return func() bool {
			st, _ := findBuilder(bin, socket, "b1")
			return slotsHeld(st) && st.Slots.Reason == reason && inFile()
		}
	}
	lat := map[string][]time.Duration{}
	for b.Loop() {
		agent := b1.start(b, "advertise", bin, "advertise", "--tailnet=false", "--mdns", "--mdns-iface", netnstest.HostIface,
			"--sign-key", signKey, "--ssh-user", "root", "--ssh-host-key", hostKey, "--hostname", "b1")
		lat["join"] = append(lat["join"], waitFor(b, 30*time.Second, "join", inUse))
		time.Sleep(time.Duration(rand.Int64N(int64(time.Second))))
		b1.LinkDown()
		lat["link-down"] = append(lat["link-down"], waitFor(b, 30*time.Second, "link down: out of use", outOfUse(reasonDown)))
		b1.LinkUp()
		waitFor(b, 30*time.Second, "back in use after link up", inUse)
		time.Sleep(time.Duration(rand.Int64N(int64(time.Second))))
		agent.Process.Signal(syscall.SIGTERM)
		lat["clean-stop"] = append(lat["clean-stop"], waitFor(b, 30*time.Second, "clean stop: out of use", outOfUse(reasonDraining)))
		agent.Wait()
	}
	for _, s := range []string{"join", "link-down", "clean-stop"} {
		p50, p95 := clienttest.Quantiles(lat[s])
		b.ReportMetric(float64(p50.Microseconds())/1000, s+"-p50-ms")
		b.ReportMetric(float64(p95.Microseconds())/1000, s+"-p95-ms")
		b.Logf("%-10s n=%d p50=%v p95=%v", s, len(lat[s]), p50.Round(time.Millisecond), p95.Round(time.Millisecond))
	}
}

// BenchmarkFleetFaults runs TestBuildFleet's topology (three builder hosts
// with their own /nix, real nix-daemon, sshd and agent; a laptop running
// the client; mDNS) and, per iteration and fault, measures: fault → the
// builder out of use ("-out": list --json shows all its slots held,
// reason down or draining, its line still in the file), a real nix-build
// (--max-jobs 0, two derivations) started right then → done on the
// others ("-build"), and repair → its slots released ("-back"). Each
// fault comes at a random moment.
//
//	go test -run '^$' -bench BenchmarkFleetFaults -benchtime 20x ./e2e
func BenchmarkFleetFaults(b *testing.B) {
	f := newFleet(b)
	f.startClient(b)
	for _, fb := range f.builders {
		f.startAgent(b, fb)
	}
	faults := f.faults()
	lat := map[string][]time.Duration{}
	for b.Loop() {
		for _, fault := range faults {
			for _, fb := range f.builders {
				waitFor(b, joinWithin, fb.name+" in use", f.inUse(fb))
			}
			time.Sleep(time.Duration(rand.Int64N(int64(time.Second))))
			if err := fault.inject(); err != nil {
				b.Fatal(err)
			}
			lat[fault.name+"-out"] = append(lat[fault.name+"-out"], waitFor(b, leaveWithin, fault.name+": out of use", f.outOfUse(fault.fb)))
			out, took := f.build(b, spreadExpr(2, 0))
			if strings.Contains(out, fault.fb.name) {
				b.Fatalf("%s: a build went to %s: %q", fault.name, fault.fb.name, out)
			}
			lat[fault.name+"-build"] = append(lat[fault.name+"-build"], took)
			if err := fault.repair(); err != nil {
				b.Fatal(err)
			}
			lat[fault.name+"-back"] = append(lat[fault.name+"-back"], waitFor(b, joinWithin, fault.name+" repaired: slots released", f.inUse(fault.fb)))
		}
	}
	for _, fault := range faults {
		for _, s := range []string{fault.name + "-out", fault.name + "-build", fault.name + "-back"} {
			p50, p95 := clienttest.Quantiles(lat[s])
			b.ReportMetric(float64(p50.Microseconds())/1000, s+"-p50-ms")
			b.ReportMetric(float64(p95.Microseconds())/1000, s+"-p95-ms")
			b.Logf("%-18s n=%d p50=%v p95=%v", s, len(lat[s]), p50.Round(time.Millisecond), p95.Round(time.Millisecond))
		}
	}
}
