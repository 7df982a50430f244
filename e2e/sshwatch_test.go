//go:build linux

package e2e

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/nixrb-discover/nixrb-discover/internal/clienttest"
	"github.com/nixrb-discover/nixrb-discover/internal/netnstest"
	"github.com/nixrb-discover/nixrb-discover/internal/nixtest"
)

// TestSSHWatchLeave: the builder's agent watches its own sshd and pushes
// a signed draining advert when sshd dies or is stopped, so the builder
// is out of use at once (all its slots held, its line still in the
// client's machines file) although the client probes only every 10 s;
// when sshd is back, its slots are released.
func TestSSHWatchLeave(t *testing.T) {
	nixtest.RequireTools(t)
	netnstest.RequireRoot(t)
	bin := buildBinary(t)
	topo := netnstest.New(t)
	laptop, b1 := newHost(t, topo, "laptop"), newHost(t, topo, "b1")

	fleet := filepath.Join(laptop.dir, "fleet")
	if out, err := exec.Command(bin, "keygen", "--out", fleet).CombinedOutput(); err != nil {
		t.Fatalf("keygen: %v %s", err, out)
	}
	signKey := filepath.Join(b1.dir, "fleet")
	k, _ := os.ReadFile(fleet)
	if err := os.WriteFile(signKey, k, 0o600); err != nil {
		t.Fatal(err)
	}
	clientKey := filepath.Join(laptop.dir, "id_ed25519")
	machines := filepath.Join(laptop.dir, "machines")
	if out, err := exec.Command(bin, "client", "--once", "--tailnet=false", "--static", "/dev/null", "--ssh-key", clientKey, "--machines", filepath.Join(laptop.dir, "first")).CombinedOutput(); err != nil {
		t.Fatalf("create the client key: %v %s", err, out)
	}
	clientPub, _ := os.ReadFile(clientKey + ".pub")
	hostKey := b1.startSSHD(t, strings.TrimSpace(string(clientPub)))
	sshdConfig := filepath.Join(b1.dir, "sshd_config") // startSSHD's
	socket := filepath.Join(laptop.dir, "client.sock")
	// The client holds slot locks in a Nix state dir of its own, not the
	// host's /nix/var/nix.
	stateDir := filepath.Join(laptop.dir, "nix-state")
	if err := os.Mkdir(stateDir, 0o755); err != nil {
		t.Fatal(err)
	}

	// Probing every 10 s: only the agent's push can take b1 out fast.
	laptop.start(t, "client", bin, "client", "--tailnet=false", "--mdns", "--mdns-iface", netnstest.HostIface,
		"--trust-key", fleet+".pub", "--ssh-key", clientKey, "--machines", machines,
		"--socket", socket, "--interval", "10s", "--nix-state-dir", stateDir, "--log-level", "debug")
	b1.start(t, "advertise", bin, "advertise", "--tailnet=false", "--mdns", "--mdns-iface", netnstest.HostIface,
		"--sign-key", signKey, "--ssh-user", "root", "--ssh-host-key", hostKey, "--hostname", "b1", "--log-level", "debug")

	line := "ssh-ng://root@" + b1.IP.String()
	inFile := fileHas(machines, line)
	// in: b1 is healthy, in the file, its slots released; out: it is out
	// of use, all its slots held, its line still in the file.
	in := func() bool { st, _ := findBuilder(bin, socket, "b1"); return slotsReleased(st) && inFile() }
	out := func() bool { st, _ := findBuilder(bin, socket, "b1"); return slotsHeld(st) && inFile() }
	took := waitFor(t, 30*time.Second, "b1 in use", in)
	t.Logf("b1 in use %v after its agent started", took)

	const leaveWithin, rounds = 2 * time.Second, 4
	// A random pause before each failure, so that it falls anywhere in
	// the agent's watch interval.
	pause := func() { time.Sleep(time.Duration(rand.Int64N(int64(time.Second)))) }
	var stoppedPID int
	t.Cleanup(func() {
		if stoppedPID > 0 {
			syscall.Kill(stoppedPID, syscall.SIGCONT) // a stopped sshd ignores SIGTERM
		}
	})
	// draining checks that b1 is out of use because its advert says so
	// (the push), not because a probe failed.
	draining := func(what string) {
		t.Helper()
		for _, b := range listJSON(t, bin, socket).Builders {
			if b.Name == "b1" && (b.State != discover.StateDraining || b.Slots == nil || b.Slots.Reason != reasonDraining) {
				t.Errorf("%s: list says b1 is %s, want draining, its slots held for draining", what, slotsString(&b))
			}
		}
	}
	var killed, stopped []time.Duration
	pid := sshdPID(t, sshdConfig)
	for i := range rounds {
		// sshd killed: nothing listens on port 22 any more.
		pause()
		syscall.Kill(pid, syscall.SIGKILL)
		took := waitFor(t, 10*time.Second, "b1 out of use after sshd was killed", out)
		killed = append(killed, took)
		draining("sshd killed")
		t.Logf("round %d: sshd SIGKILLed: b1 out of use after %v", i+1, took)

		// sshd started again (same config and host key): back.
		restarted := b1.start(t, "sshd-"+strconv.Itoa(i+2), "/usr/sbin/sshd", "-D", "-e", "-f", sshdConfig)
		took = waitFor(t, 30*time.Second, "b1's slots released after sshd restarted", in)
		t.Logf("round %d: sshd restarted: b1's slots released after %v", i+1, took)

		// sshd stopped: it listens, but nothing accepts.
		pid = restarted.Process.Pid // ip netns exec execs sshd itself
		stoppedPID = pid
		pause()
		syscall.Kill(pid, syscall.SIGSTOP)
		took = waitFor(t, 10*time.Second, "b1 out of use after sshd was stopped", out)
		stopped = append(stopped, took)
		draining("sshd stopped")
		t.Logf("round %d: sshd SIGSTOPped: b1 out of use after %v", i+1, took)

		syscall.Kill(pid, syscall.SIGCONT)
		stoppedPID = 0
		took = waitFor(t, 30*time.Second, "b1's slots released after SIGCONT", in)
		t.Logf("round %d: sshd continued: b1's slots released after %v", i+1, took)
	}
	for _, l := range []struct {
		what string
		ds   []time.Duration
	}{{"SIGKILL", killed}, {"SIGSTOP", stopped}} {
		p50, _ := clienttest.Quantiles(l.ds)
		t.Logf("out of use after %s: median %v of %v", l.what, p50.Round(time.Millisecond), l.ds)
		for _, d := range l.ds {
			if d > leaveWithin {
				t.Errorf("b1 out of use %v after %s, want within %v (the client probes every 10s)", d, l.what, leaveWithin)
			}
		}
	}
	logb, _ := os.ReadFile(filepath.Join(b1.dir, "advertise.log"))
	for _, want := range []string{
		"sshd unhealthy, draining: sshd is not listening on port 22",
		"sshd unhealthy, draining: sshd (pid " + strconv.Itoa(pid) + ") is stopped",
		"sshd healthy again",
	} {
		if !bytes.Contains(logb, []byte(want)) {
			t.Errorf("the agent's log lacks %q:\n%s", want, logb)
		}
	}
}

// sshdPID finds the listening sshd started with config: the process whose
// command line names config and whose parent's does not (its children,
// one per connection, start as copies of it before they retitle).
func sshdPID(t *testing.T, config string) int {
	t.Helper()
	names, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	matches := map[int]bool{}
	for _, n := range names {
		b, err := os.ReadFile(n)
		// The listener retitles itself: "sshd: /usr/sbin/sshd -D -e -f
		// CONFIG [listener] 0 of 10-100 startups".
		if err != nil || !bytes.Contains(b, []byte("sshd")) || !bytes.Contains(b, []byte(config)) {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(n)))
		matches[pid] = true
	}
	for pid := range matches {
		if !matches[ppid(pid)] {
			return pid
		}
	}
	t.Fatalf("no sshd running with %s", config)
	return 0
}

// ppid is pid's parent, from /proc/PID/stat ("PID (comm) S PPID ...").
func ppid(pid int) int {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0
	}
	p, _ := strconv.Atoi(f[1])
	return p
}

// BenchmarkSSHWatchIdle reports what watching sshd costs an idle agent:
// one builder (real sshd, signed agent over mDNS, nobody else), its
// agent's CPU share over a quiet window with --watch-sshd and without,
// from the per-thread run times in /proc/PID/task/*/schedstat (ns, where
// /proc/PID/stat counts 10 ms ticks).
//
//	go test -run '^$' -bench BenchmarkSSHWatchIdle -benchtime 1x ./e2e
func BenchmarkSSHWatchIdle(b *testing.B) {
	nixtest.RequireTools(b)
	netnstest.RequireRoot(b)
	bin := buildBinaryTB(b)
	topo := netnstest.New(b)
	b1 := newHostTB(b, topo, "b1")
	fleet := filepath.Join(b1.dir, "fleet")
	if out, err := exec.Command(bin, "keygen", "--out", fleet).CombinedOutput(); err != nil {
		b.Fatalf("keygen: %v %s", err, out)
	}
	hostKey := b1.startSSHD(b, "")
	window := 30 * time.Second
	if testing.Short() {
		window = 10 * time.Second
	}
	for _, watch := range []bool{false, true} {
		b.Run(fmt.Sprintf("watch-sshd=%v", watch), func(b *testing.B) {
			agent := b1.start(b, "advertise", bin, "advertise", "--tailnet=false", "--mdns", "--mdns-iface", netnstest.HostIface,
				"--sign-key", fleet, "--ssh-user", "root", "--ssh-host-key", hostKey, "--hostname", "b1",
				"--log-level", "warn", "--watch-sshd="+strconv.FormatBool(watch))
			defer func() { agent.Process.Signal(syscall.SIGTERM); agent.Wait() }()
			time.Sleep(3 * time.Second) // facts read, first announcements sent
			t0 := runNS(b, agent.Process.Pid)
			b.ResetTimer()
			time.Sleep(window)
			b.StopTimer()
			cpu := float64(runNS(b, agent.Process.Pid)-t0) / float64(window.Nanoseconds()) * 100
			b.ReportMetric(cpu, "agent-cpu%")
			b.Logf("--watch-sshd=%v: idle agent CPU %.4f%% over %v", watch, cpu, window)
		})
	}
}

// runNS is the CPU time (ns) pid's threads have run, from schedstat.
func runNS(tb testing.TB, pid int) int64 {
	tb.Helper()
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	var sum int64
	for _, p := range tasks {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // the thread exited
		}
		f := strings.Fields(string(b))
		if len(f) > 0 {
			n, _ := strconv.ParseInt(f[0], 10, 64)
			sum += n
		}
	}
	if sum == 0 {
		tb.Fatalf("no schedstat for pid %d", pid)
	}
	return sum
}
