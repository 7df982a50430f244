package tailnet_test

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/nixrb-discover/nixrb-discover/discover/tailnet"
	"github.com/nixrb-discover/nixrb-discover/internal/clienttest"
	"github.com/nixrb-discover/nixrb-discover/internal/tailnettest"
)

// tnRunFor runs src like tnStart, but stop ends it at once (a benchmark
// starts many sources, one per iteration).
func tnRunFor(b *testing.B, src discover.Source) (*tnRun, func()) {
	r, stopErr := tnRunStoppable(b, src)
	stop := func() { _ = stopErr() }
	b.Cleanup(stop)
	return r, stop
}

// tnReportPath reports one path's p50 and p95 in ms, and logs them.
func tnReportPath(b *testing.B, name string, lat []time.Duration) {
	p50, p95 := clienttest.Quantiles(lat)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(ms(p50), name+"-p50-ms")
	b.ReportMetric(ms(p95), name+"-p95-ms")
	b.Logf("%-14s n=%d p50=%v p95=%v", name, len(lat), p50.Round(time.Millisecond), p95.Round(time.Millisecond))
}

// BenchmarkTailnetJoinPaths measures, on the in-process tailnet with the
// real agent (facts overridden, no nix), how long the source takes from
// the event to a snapshot listing the builder with its advert (add the
// SSH + Nix check, ~100 ms, for its line in the file):
//
//	late      the source has run 1-5 s (random) with the builder online, agent not listening; the agent starts
//	killed    the agent is SIGKILLed (listener and long poll cut) and a new one starts 0.5-3 s later
//	start     the source starts, agents already up (a client (re)start)
//	boot      the source and two agents start together (the agents' listeners come up as the source subscribes)
//	reboot    the builder's tsnet node restarts in place (offline, online, its agent 0-1 s later); from the agent's start
//	ts-restart the laptop's tsnet node restarts in place; from its restart to the source's first good snapshot again
//	resume    the laptop's network goes away 2-5 s and comes back (tnLink, a fake); from its return to a change the agent pushes arriving
//
// n = max(b.N, 20) for late, killed, start and boot, 5 for the restarts
// and resume (each costs seconds).
//
//	go test -run '^$' -bench BenchmarkTailnetJoinPaths -benchtime 20x ./discover/tailnet
func BenchmarkTailnetJoinPaths(b *testing.B) {
	tn := tailnettest.New(b)
	c := tn.AddNode(b, "c1", tailnettest.TagClient)
	n := max(b.N, 20)
	const wait = 10 * time.Second
	newBuilder := func(name string) *tailnettest.Node {
		nb := tn.AddNode(b, name, tailnettest.TagBuilder)
		tn.WaitPeer(b, c, nb)
		tn.WaitPeer(b, nb, c)
		return nb
	}
	src := func() discover.Source {
		return &tailnet.Source{LocalAPI: c.LocalClient, Dial: c.Server.Dial, Refresh: time.Hour}
	}
	b.ResetTimer()

	var late []time.Duration
	lb := newBuilder("late")
	for range n {
		run, stop := tnRunFor(b, src())
		run.wait(b, 0, wait, "late without an advert", tnNoAdvert(lb))
		time.Sleep(time.Second + rand.N(4*time.Second))
		i := run.count()
		t0 := time.Now()
		agent := tnStartAgent(b, lb, 0, nil)
		s, _ := run.wait(b, i, wait, "late with its advert", tnDraining(lb, false))
		late = append(late, s.at.Sub(t0))
		stop()
		agent.stop()
	}
	tnReportPath(b, "late", late)

	var killed []time.Duration
	kb := newBuilder("killed")
	{
		crash := &tnCrash{listen: kb.Server.Listen}
		agent := tnStartAgent(b, kb, 0, crash.Listen)
		run, stop := tnRunFor(b, src())
		_, i := run.wait(b, 0, wait, "killed up", tnDraining(kb, false))
		for range n {
			time.Sleep(200 * time.Millisecond) // the long poll is held
			crash.crash()
			agent.stop()
			time.Sleep(500*time.Millisecond + rand.N(2500*time.Millisecond))
			crash = &tnCrash{listen: kb.Server.Listen}
			i = run.count()
			t0 := time.Now()
			agent = tnStartAgent(b, kb, 0, crash.Listen)
			// The new agent answers a fetch: it is the one that says draining.
			agent.ToggleDrain()
			var s tnSnap
			s, i = run.wait(b, i, wait, "the new agent's advert", tnDraining(kb, true))
			killed = append(killed, s.at.Sub(t0))
			agent.ToggleDrain()
			_, i = run.wait(b, i, wait, "not draining", tnDraining(kb, false))
		}
		stop()
		agent.stop()
	}
	tnReportPath(b, "killed", killed)

	var start, boot []time.Duration
	b1, b2 := newBuilder("s1"), newBuilder("s2")
	for range n {
		a1, a2 := tnStartAgent(b, b1, 0, nil), tnStartAgent(b, b2, 0, nil)
		time.Sleep(100 * time.Millisecond) // both listening
		t0 := time.Now()
		run, stop := tnRunFor(b, src())
		s, _ := run.wait(b, 0, wait, "both with adverts", func(s discover.Snapshot) bool { return tnDraining(b1, false)(s) && tnDraining(b2, false)(s) })
		start = append(start, s.at.Sub(t0))
		stop()
		a1.stop()
		a2.stop()

		t0 = time.Now()
		run, stop = tnRunFor(b, src())
		a1, a2 = tnStartAgent(b, b1, 0, nil), tnStartAgent(b, b2, 0, nil)
		s, _ = run.wait(b, 0, wait, "both with adverts", func(s discover.Snapshot) bool { return tnDraining(b1, false)(s) && tnDraining(b2, false)(s) })
		boot = append(boot, s.at.Sub(t0))
		stop()
		a1.stop()
		a2.stop()
	}
	tnReportPath(b, "start", start)
	tnReportPath(b, "boot", boot)

	var reboot, tsRestart []time.Duration
	rb := tn.AddRestartableNode(b, "reboot", tailnettest.TagBuilder)
	tn.WaitPeer(b, c, rb)
	tn.WaitPeer(b, rb, c)
	{
		agent := tnStartAgent(b, rb, 0, nil)
		run, stop := tnRunFor(b, src())
		_, i := run.wait(b, 0, wait, "reboot up", tnDraining(rb, false))
		for range 5 {
			agent.stop()
			rb = tn.Restart(b, rb, func() {
				_, i = run.wait(b, i, wait, "reboot gone", func(s discover.Snapshot) bool { return s.Err == nil && !tnHas(rb)(s) })
			})
			tn.WaitPeer(b, rb, c)
			time.Sleep(rand.N(time.Second))
			t0 := time.Now()
			agent = tnStartAgent(b, rb, 0, nil)
			var s tnSnap
			s, i = run.wait(b, i, tailnettest.Timeout, "reboot back", tnDraining(rb, false))
			reboot = append(reboot, s.at.Sub(t0))
		}
		stop()
		agent.stop()
	}
	tnReportPath(b, "reboot", reboot)

	{
		sb := newBuilder("steady")
		agent := tnStartAgent(b, sb, 0, nil)
		laptop := tn.AddRestartableNode(b, "laptop", tailnettest.TagClient)
		tn.WaitPeer(b, laptop, sb)
		tn.WaitPeer(b, sb, laptop)
		sys := &tnSystemTailscaled{node: laptop}
		run, stop := tnRunFor(b, &tailnet.Source{LocalAPI: sys, Dial: sys.Dial, Refresh: time.Hour})
		_, i := run.wait(b, 0, wait, "steady up", tnDraining(sb, false))
		for range 5 {
			t0 := time.Now()
			laptop = tn.Restart(b, laptop, func() {
				sys.set(nil)
				_, i = run.wait(b, i, wait, "the source down", func(s discover.Snapshot) bool { return s.Err != nil })
			})
			sys.set(laptop)
			var s tnSnap
			s, i = run.wait(b, i, wait, "the source up with steady", func(s discover.Snapshot) bool { return s.Err == nil && tnDraining(sb, false)(s) })
			tsRestart = append(tsRestart, s.at.Sub(t0))
		}
		stop()
		agent.stop()
	}
	tnReportPath(b, "ts-restart", tsRestart)

	// The laptop's network away 2–5 s and back (tnLink, a fake for a
	// fault the in-process tailnet cannot produce): from the link's
	// return to a change the agent pushes reaching the source, i.e. the
	// agent long-polled again.
	var resume []time.Duration
	{
		rb := newBuilder("resume")
		agent := tnStartAgent(b, rb, 0, nil)
		link := &tnLink{dial: c.Server.Dial}
		run, stop := tnRunFor(b, &tailnet.Source{LocalAPI: c.LocalClient, Dial: link.Dial, Refresh: time.Hour, FetchTimeout: 500 * time.Millisecond})
		_, i := run.wait(b, 0, wait, "resume up", tnDraining(rb, false))
		draining := false
		for range 5 {
			time.Sleep(200 * time.Millisecond) // the long poll is held
			link.setDown(true)
			time.Sleep(2*time.Second + rand.N(3*time.Second))
			link.setDown(false)
			t0 := time.Now()
			draining = !draining
			agent.ToggleDrain()
			var s tnSnap
			s, i = run.wait(b, i, wait, "the agent's change after the network came back", tnDraining(rb, draining))
			resume = append(resume, s.at.Sub(t0))
		}
		stop()
		agent.stop()
	}
	tnReportPath(b, "resume", resume)
	b.StopTimer()
}

// BenchmarkTailnetBootScale is the boot path among 1,000 peers: 900
// untagged and 100 tagged that never answer (their fetches time out), and
// two real builders whose agents start together with the source. It
// reports the time from the source's start to both builders listed with
// their adverts, n = max(b.N, 20).
//
//	go test -run '^$' -bench BenchmarkTailnetBootScale -benchtime 20x ./discover/tailnet
func BenchmarkTailnetBootScale(b *testing.B) {
	tn := tailnettest.New(b)
	tn.AddFakePeers(b, 900)
	tn.AddFakePeers(b, 100, tailnettest.TagBuilder)
	c := tn.AddNode(b, "c1", tailnettest.TagClient)
	b1, b2 := tn.AddNode(b, "s1", tailnettest.TagBuilder), tn.AddNode(b, "s2", tailnettest.TagBuilder)
	for _, nb := range []*tailnettest.Node{b1, b2} {
		tn.WaitPeer(b, c, nb)
		tn.WaitPeer(b, nb, c)
	}
	both := func(s discover.Snapshot) bool { return tnDraining(b1, false)(s) && tnDraining(b2, false)(s) }
	var boot []time.Duration
	b.ResetTimer()
	for range max(b.N, 20) {
		t0 := time.Now()
		run, stop := tnRunFor(b, &tailnet.Source{LocalAPI: c.LocalClient, Dial: c.Server.Dial, Refresh: time.Hour})
		a1, a2 := tnStartAgent(b, b1, 0, nil), tnStartAgent(b, b2, 0, nil)
		s, _ := run.wait(b, 0, 10*time.Second, "both with adverts", both)
		boot = append(boot, s.at.Sub(t0))
		stop()
		a1.stop()
		a2.stop()
	}
	b.StopTimer()
	tnReportPath(b, "boot-1000", boot)
}
