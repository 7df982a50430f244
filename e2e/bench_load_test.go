//go:build linux

package e2e

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/internal/clienttest"
	"github.com/nixrb-discover/nixrb-discover/internal/nixtest"
)

// Overcommit benchmark shape: 2 builders of overcommitJobs jobs each,
// two laptops each building overcommitParts independent parts of
// overcommitSleep, laptop 1 starting overcommitStagger after laptop 2.
const (
	overcommitJobs    = 2
	overcommitParts   = 4
	overcommitSleep   = 8 * time.Second
	overcommitStagger = 3 * time.Second
)

// BenchmarkFleetOvercommit: two laptops (each its own /nix and client)
// share two builders of 2 jobs each (4 build users each, so a builder's
// daemon never queues a build for a user: what runs at once is what the
// laptops sent). Laptop 2 starts 4 independent 8 s parts; 3 s later laptop
// 1 starts 4 more. Each part records its builder and when it ran there
// (/proc/uptime: one clock, one kernel). Per round it reports the
// overcommit (the most parts running at once on a builder / its max-jobs),
// how long laptop 1's first part waited, and the makespan, two ways:
// "plain" (clients with --nix-state-dir "": each laptop's Nix sees only
// its own builds) and "load-holding" (the clients as shipped, holding the
// slots other laptops' running builds fill).
func BenchmarkFleetOvercommit(b *testing.B) {
	for _, hold := range []bool{false, true} {
		name := "plain"
		if hold {
			name = "load-holding"
		}
		b.Run(name, func(b *testing.B) {
			f := newFleetWith(b, 2, false, func(_ string, o *nixtest.BuilderOptions) {
				o.BuildUsers, o.ExtraNixConf = 2*overcommitJobs, fmt.Sprintf("max-jobs = %d", overcommitJobs)
			})
			for _, fb := range f.builders {
				f.startAgent(b, fb)
			}
			stateDir := ""
			if hold {
				stateDir = nixtest.ClientStateDir(f.nixDir)
			}
			f.startClientStateDir(b, stateDir)
			l1 := &laptop{h: f.laptop, nixDir: f.nixDir, machines: f.machines, socket: f.socket}
			l2 := f.newLaptopHolding(b, "laptop2", hold)
			laptops := []*laptop{l1, l2}
			idle := func(what string) {
				for _, l := range laptops {
					for _, fb := range f.builders {
						waitFor(b, joinWithin, fmt.Sprintf("%s: %s in %s's file, nothing held", what, fb.name, l.h.Name), func() bool {
							s := l.slots(f, fb)
							return s != nil && s.Max == overcommitJobs && s.Held == 0
						})
					}
				}
			}
			idle("before the first round")
			var ratios []float64
			var waits, spans []time.Duration
			for i := 0; i < b.N; i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
				start := uptime(b)
				bl2 := f.startBuild(b, ctx, l2.buildOpts(intervalExpr(overcommitParts, overcommitSleep)))
				time.Sleep(overcommitStagger)
				start1 := uptime(b)
				bl1 := f.startBuild(b, ctx, l1.buildOpts(intervalExpr(overcommitParts, overcommitSleep)))
				r1, r2 := bl1.wait(), bl2.wait()
				end := uptime(b)
				cancel()
				if r1.err != nil || r2.err != nil {
					b.Fatalf("round %d: laptop 1: %v\n%s\nlaptop 2: %v\n%s", i, r1.err, r1.stderr, r2.err, r2.stderr)
				}
				runs1, runs2 := parseRuns(b, r1.out), parseRuns(b, r2.out)
				most := mostAtOnce(append(slices.Clone(runs1), runs2...))
				worst := 0
				for _, n := range most {
					worst = max(worst, n)
				}
				first1 := runs1[0].start
				for _, r := range runs1 {
					first1 = min(first1, r.start)
				}
				ratios = append(ratios, float64(worst)/overcommitJobs)
				waits = append(waits, secs(first1-start1))
				spans = append(spans, secs(end-start))
				b.Logf("round %d: most at once per builder %v (max-jobs %d); laptop 2's parts on %v, laptop 1's on %v; laptop 1's first part waited %v; makespan %v",
					i, most, overcommitJobs, hostsOf(runs2), hostsOf(runs1), secs(first1-start1).Round(100*time.Millisecond), secs(end-start).Round(100*time.Millisecond))
				idle(fmt.Sprintf("after round %d", i))
			}
			slices.Sort(ratios)
			w50, _ := clienttest.Quantiles(waits)
			s50, _ := clienttest.Quantiles(spans)
			b.ReportMetric(ratios[len(ratios)/2], "overcommit-p50")
			b.ReportMetric(ratios[len(ratios)-1], "overcommit-max")
			b.ReportMetric(w50.Seconds(), "laptop1-wait-p50-s")
			b.ReportMetric(s50.Seconds(), "makespan-p50-s")
		})
	}
}

// partRun is where and when one part of an intervalExpr ran, in
// /proc/uptime seconds.
type partRun struct {
	host       string
	start, end float64
}

// intervalExpr is n independent derivations that each sleep, recording
// "hostname start end" (from /proc/uptime), and one that collects them.
func intervalExpr(n int, sleep time.Duration) string {
	nonce := fmt.Sprintf("%d-%d", os.Getpid(), time.Now().UnixNano())
	var parts []string
	for i := range n {
		parts = append(parts, fmt.Sprintf(`(derivation { name = "run%d"; system = %q; builder = "/bin/sh"; `+
			`args = [ "-c" "read s x < /proc/uptime; /bin/sleep %g; read e x < /proc/uptime; read h < /proc/sys/kernel/hostname; echo $h $s $e > $out" ]; nonce = "%s-%d"; })`,
			i, nixtest.System, sleep.Seconds(), nonce, i))
	}
	return fmt.Sprintf(`derivation { name = "runs"; system = %q; builder = "/bin/sh"; `+
		`args = [ "-c" "for p in $parts; do read l < $p; echo $l; done > $out" ]; parts = [ %s ]; }`,
		nixtest.System, strings.Join(parts, " "))
}

// parseRuns reads an intervalExpr's output.
func parseRuns(t testing.TB, out string) []partRun {
	t.Helper()
	var runs []partRun
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(l)
		if len(f) != 3 {
			t.Fatalf("part output %q: want \"host start end\"", l)
		}
		s, err1 := strconv.ParseFloat(f[1], 64)
		e, err2 := strconv.ParseFloat(f[2], 64)
		if err1 != nil || err2 != nil {
			t.Fatalf("part output %q: %v %v", l, err1, err2)
		}
		runs = append(runs, partRun{host: f[0], start: s, end: e})
	}
	if len(runs) == 0 {
		t.Fatal("no parts in the output")
	}
	return runs
}

// mostAtOnce is, per builder, the most runs overlapping at one instant
// (a run ending when another starts does not overlap it).
func mostAtOnce(runs []partRun) map[string]int {
	type edge struct {
		at    float64
		delta int
	}
	by := map[string][]edge{}
	for _, r := range runs {
		by[r.host] = append(by[r.host], edge{r.start, +1}, edge{r.end, -1})
	}
	most := map[string]int{}
	for host, es := range by {
		slices.SortFunc(es, func(a, b edge) int {
			if a.at != b.at {
				if a.at < b.at {
					return -1
				}
				return 1
			}
			return a.delta - b.delta // ends first
		})
		n := 0
		for _, e := range es {
			n += e.delta
			most[host] = max(most[host], n)
		}
	}
	return most
}

// hostsOf is how many runs each builder had.
func hostsOf(runs []partRun) map[string]int {
	m := map[string]int{}
	for _, r := range runs {
		m[r.host]++
	}
	return m
}

// uptime is /proc/uptime's first field: the clock intervalExpr's parts use.
func uptime(t testing.TB) float64 {
	t.Helper()
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		t.Fatalf("/proc/uptime: %q", b)
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// secs is a duration of s seconds.
func secs(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
