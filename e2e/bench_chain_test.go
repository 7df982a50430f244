//go:build linux

package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/internal/clienttest"
	"github.com/nixrb-discover/nixrb-discover/internal/hoststate"
	"github.com/nixrb-discover/nixrb-discover/internal/nixtest"
)

// chainBenchWithin bounds every build of BenchmarkChainBuildOutage: one
// still running then counts as hung and is killed (NixBuild SIGKILLs its
// unshare by PID, and with it the build's whole PID namespace).
const chainBenchWithin = 180 * time.Second

// chainWay is how the laptop's Nix gets its machines file.
type chainWay struct {
	name string
	// stateDir is the client's --nix-state-dir ("" holds no slots); unused
	// when static.
	stateDir string
	// static: a hand-written file with the builder's line, no client.
	static bool
}

// chainCell is one build of BenchmarkChainBuildOutage.
type chainCell struct {
	ok       bool
	hung     bool
	early    bool // ended before the fault came
	void     bool // broken by something outside the test (errLine says what)
	took     time.Duration
	errLine  string // the first line of Nix's error
	rewrites int
}

// BenchmarkChainBuildOutage: one builder host (own /nix, nix-daemon, sshd,
// agent) and the laptop; a chain of 6 derivations (2 s each, as in
// TestChainBuildRidesThroughBuilderFault) built `nix-build --max-jobs 0`
// through a machines file while, ~3 s in, the builder breaks (sshd killed,
// sshd hung, link down) for OUTAGE seconds and is then repaired. Three
// ways of keeping the file: "hand-written" (a static file with the
// builder's line, no client: what users have today), "remove-line" (the
// client with --nix-state-dir "": it holds no slots and removes a failing
// builder's line) and "hold-slots" (the client as shipped, holding the
// laptop Nix's slot locks). Per (way, fault, outage) it reports whether
// the chain built, its time over a fault-free chain measured once at the
// start, and for the client ways how often the machines file was
// rewritten during the build (inode, mtime or bytes changed; polled every
// 20 ms). Every build is bounded by 180 s. Outages 3 s and 10 s, and 60 s
// with NIXRB_BENCH_LONG=1 (60 s alone with NIXRB_BENCH_LONG=only). -benchtime 1x is one sweep; with -benchtime
// Nx a cell lists every sweep's outcome. It prints a Markdown table, one
// row per (way, fault, outage); go test shows a benchmark's whole log
// only with -v (otherwise its first 10 lines). A build during which the
// builder's sshd logged that /run/sshd was missing (another process on a
// shared machine removed it: scripts/fresh-check.sh does) is reported as
// void, not as the way's failure.
//
//	go test -v -run '^$' -bench BenchmarkChainBuildOutage -benchtime 1x -timeout 60m ./e2e
func BenchmarkChainBuildOutage(b *testing.B) {
	f := newFleetOf(b, 1, false)
	b1 := f.builders[0]
	f.startAgent(b, b1)
	f.startClient(b)
	waitFor(b, joinWithin, "b1 in use", f.inUse(b1))

	// The hand-written file is the line the client writes, so that the
	// three ways differ only in who keeps the file.
	data, err := os.ReadFile(f.machines)
	if err != nil {
		b.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(l, line(b1)) {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 {
		b.Fatalf("want one line of b1 in the client's file, got:\n%s", data)
	}
	static := filepath.Join(f.laptop.dir, "machines.hand-written")
	if err := os.WriteFile(static, []byte(lines[0]+"\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	b.Logf("hand-written file: %s", lines[0])

	out, base := f.build(b, chainExpr(chainLen, chainSleep))
	if hosts := strings.Fields(out); len(hosts) != chainLen || slices.ContainsFunc(hosts, func(h string) bool { return h != "b1" }) {
		b.Fatalf("the fault-free chain was built on %v, want %d times b1", hosts, chainLen)
	}
	b.Logf("fault-free chain of %d × %v: %v", chainLen, chainSleep, base.Round(time.Millisecond))
	b.ReportMetric(base.Seconds(), "fault-free-s")
	stopClient(b, f)

	ways := []chainWay{
		{name: "hand-written", static: true},
		{name: "remove-line", stateDir: ""},
		{name: "hold-slots", stateDir: nixtest.ClientStateDir(f.nixDir)},
	}
	outages := []time.Duration{3 * time.Second, 10 * time.Second}
	switch os.Getenv("NIXRB_BENCH_LONG") {
	case "1":
		outages = append(outages, 60*time.Second)
	case "only":
		outages = []time.Duration{60 * time.Second}
	}
	faults := faultsOf(b1)
	key := func(w chainWay, ft fault, o time.Duration) string {
		return fmt.Sprintf("%s/%s/%s", w.name, ft.name, o)
	}
	cells := map[string][]chainCell{}
	for b.Loop() {
		for _, w := range ways {
			if !w.static {
				f.startClientStateDir(b, w.stateDir)
			}
			for _, ft := range faults {
				for _, o := range outages {
					c := chainOutage(b, f, w, ft, o, static)
					k := key(w, ft, o)
					cells[k] = append(cells[k], c)
					b.Logf("%s: %s", k, c.outcome())
				}
			}
			if !w.static {
				stopClient(b, f)
			}
		}
	}

	b.Logf("chain of %d × %v, --max-jobs 0, one builder; fault ~3 s in; fault-free chain %v; builds cut off at %v",
		chainLen, chainSleep, base.Round(100*time.Millisecond), chainBenchWithin)
	b.Logf("| way | fault | outage | outcome | extra over fault-free | machines-file rewrites during the build |")
	b.Logf("|---|---|---|---|---|---|")
	for _, w := range ways {
		for _, ft := range faults {
			for _, o := range outages {
				k := key(w, ft, o)
				cs := cells[k]
				var outcomes, extras, rewrites []string
				var okExtras, fails []time.Duration
				var rw []time.Duration // rewrite counts, as durations for Quantiles
				nOK, nValid := 0, 0
				for _, c := range cs {
					outcomes = append(outcomes, c.outcome())
					if c.void {
						extras, rewrites = append(extras, "–"), append(rewrites, "–")
						continue
					}
					nValid++
					if c.ok {
						nOK++
						okExtras = append(okExtras, c.took-base)
						extras = append(extras, fmt.Sprintf("%+.1f s", (c.took-base).Seconds()))
					} else {
						extras = append(extras, "–")
						if !c.hung {
							fails = append(fails, c.took)
						}
					}
					rewrites = append(rewrites, fmt.Sprint(c.rewrites))
					rw = append(rw, time.Duration(c.rewrites))
				}
				name := strings.ReplaceAll(k, "/", ".")
				if nValid > 0 {
					b.ReportMetric(float64(nOK)/float64(nValid), name+"-ok")
				}
				if len(okExtras) > 0 {
					p50, _ := clienttest.Quantiles(okExtras)
					b.ReportMetric(p50.Seconds(), name+"-extra-s")
				}
				if len(fails) > 0 {
					p50, _ := clienttest.Quantiles(fails)
					b.ReportMetric(p50.Seconds(), name+"-failed-after-s")
				}
				rwCol := "–"
				if !w.static && nValid > 0 {
					p50, _ := clienttest.Quantiles(rw)
					b.ReportMetric(float64(p50), name+"-rewrites")
					rwCol = strings.Join(rewrites, ", ")
				}
				b.Logf("| %s | %s | %v | %s | %s | %s |", w.name, ft.what, o, strings.Join(outcomes, "; "), strings.Join(extras, ", "), rwCol)
			}
		}
	}
}

// outcome is c for the table: ok, failed after N s with Nix's error, or
// hung.
func (c chainCell) outcome() string {
	switch {
	case c.void:
		return "void: /run/sshd was removed under the test (" + c.errLine + ")"
	case c.hung:
		return fmt.Sprintf("hung >%v (killed)", chainBenchWithin)
	case c.early:
		return fmt.Sprintf("ended before the fault, after %.1f s: %s", c.took.Seconds(), c.errLine)
	case c.ok:
		return "ok"
	default:
		return fmt.Sprintf("failed after %.1f s: `%s`", c.took.Seconds(), c.errLine)
	}
}

// chainOutage builds one chain through way w with fault ft injected ~3 s
// in for outage, then repaired, and waits until the builder is usable
// again.
func chainOutage(b testing.TB, f *fleet, w chainWay, ft fault, outage time.Duration, static string) chainCell {
	b.Helper()
	const faultAfter = 3 * time.Second
	b1 := ft.fb
	opts := f.buildOpts(chainExpr(chainLen, chainSleep))
	var ready func() bool
	if w.static {
		opts.MachinesFile = static
		ready = func() bool { return f.laptop.Do(func() error { return sshBanner(b1) }) == nil }
	} else {
		ready = f.inUse(b1)
	}
	waitUsable(b, b1.name+" usable before the fault", ready)

	gone0 := strings.Count(b1.nix.Logs(), privsepGone)
	_, err := os.Stat(hoststate.SSHDPrivsepDir)
	privsepOK := err == nil
	stopCount := make(chan struct{})
	counted := countRewrites(f.machines, stopCount)
	ctx, cancel := context.WithTimeout(context.Background(), chainBenchWithin)
	defer cancel()
	bb := f.startBuild(b, ctx, opts)
	defer func() { cancel(); bb.wait() }()

	var c chainCell
	select {
	case <-bb.done:
		c.early = true
	case <-time.After(faultAfter):
	}
	if !c.early {
		if err := ft.inject(); err != nil {
			b.Fatal(err)
		}
		select {
		case <-bb.done:
		case <-time.After(outage):
		}
		if err := ft.repair(); err != nil {
			b.Fatal(err)
		}
	}
	r := bb.wait()
	close(stopCount)
	c.rewrites = <-counted
	c.took = r.took
	switch {
	case r.err == nil:
		hosts := strings.Fields(r.out)
		c.ok = len(hosts) == chainLen && !slices.ContainsFunc(hosts, func(h string) bool { return h != "b1" })
		if !c.ok {
			c.errLine = fmt.Sprintf("built on %v", hosts)
		}
	case errors.Is(r.err, context.DeadlineExceeded) || ctx.Err() != nil:
		c.hung = true
	default:
		c.errLine = nixError(r.stderr)
		c.errLine = strings.ReplaceAll(c.errLine, b1.host.IP.String(), b1.name)
		b.Logf("%s/%s/%v: nix-build failed after %v; what Nix and ssh said:\n%s", w.name, ft.name, outage,
			r.took.Round(time.Millisecond), sshAndErrors(r.stderr))
	}
	if n := strings.Count(b1.nix.Logs(), privsepGone); n > gone0 || !privsepOK {
		// Not the way's doing: another process (scripts/fresh-check.sh
		// on a shared machine) removed /run/sshd, and b1's sshd resets
		// every new connection until something creates it again.
		c.void = true
		c.errLine = fmt.Sprintf("sshd logged %q %d times during the build", privsepGone, n-gone0)
	}
	// The next build starts with the builder usable again.
	waitUsable(b, b1.name+" usable after the repair", ready)
	return c
}

// sshBanner reads b1's sshd banner over a new TCP connection (from the
// namespace it is called in).
func sshBanner(fb *fleetBuilder) error {
	c, err := net.DialTimeout("tcp", net.JoinHostPort(fb.host.IP.String(), strconv.Itoa(fb.nix.Port)), time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	l, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(l, "SSH-") {
		return fmt.Errorf("banner %q", l)
	}
	return nil
}

// waitUsable is waitFor(joinWithin) that, when the builder never comes
// back because /run/sshd is gone (see privsepGone), says so.
func waitUsable(b testing.TB, what string, ready func() bool) {
	b.Helper()
	start := time.Now()
	for !ready() {
		if time.Since(start) > joinWithin {
			if _, err := os.Stat(hoststate.SSHDPrivsepDir); err != nil {
				b.Fatalf("not within %v: %s: %s is gone (%v): another process removed it (scripts/fresh-check.sh does); "+
					"run this benchmark when nothing else on the machine does", joinWithin, what, hoststate.SSHDPrivsepDir, err)
			}
			b.Fatalf("not within %v: %s", joinWithin, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stopClient stops f's client (SIGTERM) and waits for it to exit.
func stopClient(b testing.TB, f *fleet) {
	b.Helper()
	if err := f.client.Process.Signal(syscall.SIGTERM); err != nil {
		b.Fatal(err)
	}
	waitExit(b, f.client, 10*time.Second)
}

// countRewrites polls path every 20 ms until stop is closed and sends how
// often it changed (inode, mtime or bytes) from one poll to the next.
func countRewrites(path string, stop <-chan struct{}) <-chan int {
	n := make(chan int, 1)
	go func() {
		count := 0
		last, lastErr := snapFile(path)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				n <- count
				return
			case <-tick.C:
			}
			now, err := snapFile(path)
			if (err == nil) != (lastErr == nil) || err == nil && !now.same(last) {
				count++
			}
			last, lastErr = now, err
		}
	}()
	return n
}

// nixError is the first line of Nix's error in stderr: the first line
// with "error:", else the last line.
func nixError(stderr string) string {
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	for _, l := range lines {
		if strings.Contains(l, "error:") {
			return shorten(strings.TrimSpace(l), 160)
		}
	}
	return shorten(strings.TrimSpace(lines[len(lines)-1]), 160)
}

func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// sshAndErrors is the lines of a nix-build's stderr that say why it
// failed: ssh's own and Nix's errors.
func sshAndErrors(stderr string) string {
	var out []string
	for _, l := range strings.Split(stderr, "\n") {
		if strings.Contains(l, "error:") || strings.Contains(l, "ssh") && !strings.Contains(l, "ssh-ng://") ||
			strings.Contains(l, "Connection") || strings.HasPrefix(l, "kex_") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// privsepGone is what sshd logs when a connection comes and /run/sshd is
// missing (it then closes the connection).
const privsepGone = "Missing privilege separation directory"
