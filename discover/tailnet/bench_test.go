package tailnet_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"tailscale.com/ipn"

	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/nixrb-discover/nixrb-discover/discover/tailnet"
	"github.com/nixrb-discover/nixrb-discover/internal/tailnettest"
)

// tnBusProbe watches the same IPN bus as the source and records when it
// sees a builder come online, to split join latency into the bus delivery
// (control and tailscaled) and what the source adds after it.
type tnBusProbe struct {
	mu   sync.Mutex
	seen []time.Time
}

func tnStartProbe(b *testing.B, c *tailnettest.Node, builder *tailnettest.Node) *tnBusProbe {
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	w, err := c.LocalClient.WatchIPNBus(ctx, ipn.NotifyInitialStatus|ipn.NotifyPeerChanges|ipn.NotifyPeerPatches)
	if err != nil {
		b.Fatal(err)
	}
	p := &tnBusProbe{}
	go func() {
		defer w.Close()
		for {
			n, err := w.Next()
			if err != nil {
				return
			}
			for _, pn := range n.PeersChanged {
				if pn.StableID == builder.StableID && pn.Online != nil && *pn.Online {
					p.mu.Lock()
					p.seen = append(p.seen, time.Now())
					p.mu.Unlock()
				}
			}
		}
	}()
	return p
}

// first is the first sighting in [from, to], if any.
func (p *tnBusProbe) first(from, to time.Time) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, t := range p.seen {
		if !t.Before(from) && !t.After(to) {
			return t, true
		}
	}
	return time.Time{}, false
}

// tnJoinLoop measures, b.N times, how long a builder takes from control
// marking it online to the source emitting it with its advert (the IPN
// bus delivery, the advert fetch over the tailnet, and the emit), and
// how much of that came after the bus delivered the change.
func tnJoinLoop(b *testing.B, tn *tailnettest.Net, run *tnRun, probe *tnBusProbe, builder *tailnettest.Node) (lat, after []time.Duration) {
	b.Helper()
	const wait = 10 * time.Second
	_, i := run.wait(b, 0, wait, "the builder", tnHas(builder))
	b.ResetTimer()
	for range b.N {
		tn.SetOnline(b, builder, false)
		_, i = run.wait(b, i, wait, "the builder gone", func(s discover.Snapshot) bool { return s.Err == nil && !tnHas(builder)(s) })
		start := time.Now()
		tn.SetOnline(b, builder, true)
		var snap tnSnap
		snap, i = run.wait(b, i, wait, "the builder back", tnHas(builder))
		lat = append(lat, snap.at.Sub(start))
		if t, ok := probe.first(start, snap.at); ok {
			after = append(after, snap.at.Sub(t))
		}
	}
	b.StopTimer()
	return lat, after
}

// tnReport reports the join figures (after any ResetTimer, which drops
// reported metrics).
func tnReport(b *testing.B, lat, after []time.Duration) {
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(ms(tnMedian(lat)), "ms/join-p50")
	b.ReportMetric(ms(slicesMax(lat)), "ms/join-max")
	b.ReportMetric(ms(tnMedian(after)), "ms/after-bus-p50")
}

// BenchmarkTailnetJoin: builder online in control → candidate with advert
// emitted, on a small tailnet. Reports the median as ms/join-p50.
func BenchmarkTailnetJoin(b *testing.B) {
	tn := tailnettest.New(b)
	builder := tnBuilder(b, tn, "b1", tailnettest.TagBuilder)
	c := tn.AddNode(b, "c1")
	tn.WaitPeer(b, c, builder)
	probe := tnStartProbe(b, c, builder)
	run := tnStart(b, &tailnet.Source{LocalAPI: c.LocalClient, Dial: c.Server.Dial})
	lat, after := tnJoinLoop(b, tn, run, probe, builder)
	tnReport(b, lat, after)
}

// BenchmarkTailnetJoinScale: the same on a tailnet of 1,000 other peers of
// which 100 are tagged builders that never answer. It also reports how
// long the real builder took to appear when the source started with all
// of them present (ms/startup-join; ms/startup-bus of it went to the
// initial peer list arriving on the IPN bus) and how many dials per second the
// source made while the dead builders were backing off (dials/s-idle).
func BenchmarkTailnetJoinScale(b *testing.B) {
	tn := tailnettest.New(b)
	tn.AddFakePeers(b, 900)
	tn.AddFakePeers(b, 100, tailnettest.TagBuilder)
	builder := tnBuilder(b, tn, "b1", tailnettest.TagBuilder)
	c := tn.AddNode(b, "c1")
	tn.WaitPeer(b, c, builder)

	probe := tnStartProbe(b, c, builder)
	dial := &tnCountingDial{dial: c.Server.Dial}
	start := time.Now()
	run := tnStart(b, &tailnet.Source{LocalAPI: c.LocalClient, Dial: dial.Dial})
	snap, _ := run.wait(b, 0, 10*time.Second, "the builder", tnHas(builder))
	startup := snap.at.Sub(start)
	run.mu.Lock()
	startupBus := run.snaps[0].at.Sub(start) // first snapshot: the initial peer list is in
	run.mu.Unlock()

	// Let the dead builders' first fetches time out and back off, then
	// count what the source does while nothing changes.
	time.Sleep(tailnet.DefaultTailnetFetchTimeout + time.Second)
	n0, t0 := dial.count(), time.Now()
	time.Sleep(5 * time.Second)
	idle := float64(dial.count()-n0) / time.Since(t0).Seconds()
	if last := tnLast(run); len(last.Candidates) != 101 {
		b.Errorf("candidates: %d, want 101 (100 dead with a problem + b1)", len(last.Candidates))
	}

	lat, after := tnJoinLoop(b, tn, run, probe, builder)
	tnReport(b, lat, after)
	b.ReportMetric(float64(startup.Microseconds())/1000, "ms/startup-join")
	b.ReportMetric(float64(startupBus.Microseconds())/1000, "ms/startup-bus")
	b.ReportMetric(idle, "dials/s-idle")
}

func tnLast(r *tnRun) discover.Snapshot {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.snaps) == 0 {
		return discover.Snapshot{}
	}
	return r.snaps[len(r.snaps)-1].Snapshot
}

func slicesMax(ds []time.Duration) time.Duration {
	var m time.Duration
	for _, d := range ds {
		m = max(m, d)
	}
	return m
}

// BenchmarkTailnetCleanStop: the builder's agent stops cleanly (its Run
// context cancelled, as on SIGTERM) → a snapshot shows it draining, pushed
// by the long poll the source holds on it. Each run starts a new agent
// on the same node and waits for the source to see it, then stops it.
// Runs max(b.N, 20) times and reports the median as ms/stop-p50.
func BenchmarkTailnetCleanStop(b *testing.B) {
	tn := tailnettest.New(b)
	builder := tn.AddNode(b, "b1", tailnettest.TagBuilder)
	c := tn.AddNode(b, "c1")
	tn.WaitPeer(b, c, builder)
	tn.WaitPeer(b, builder, c)
	run := tnStart(b, &tailnet.Source{LocalAPI: c.LocalClient, Dial: c.Server.Dial, Refresh: time.Hour})
	const wait = 10 * time.Second
	var lat []time.Duration
	i := 0
	b.ResetTimer()
	for range max(b.N, 20) {
		agent := tnStartAgent(b, builder, 0, nil)
		_, i = run.wait(b, i, wait, "b1 up, not draining", tnDraining(builder, false))
		time.Sleep(150 * time.Millisecond) // the long poll is held
		i = run.count()
		start := time.Now()
		agent.cancel()
		var snap tnSnap
		snap, i = run.wait(b, i, wait, "b1 draining", tnDraining(builder, true))
		lat = append(lat, snap.at.Sub(start))
		agent.stop()
	}
	b.StopTimer()
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(ms(tnMedian(lat)), "ms/stop-p50")
	b.ReportMetric(ms(slicesMax(lat)), "ms/stop-max")
	b.ReportMetric(float64(len(lat)), "runs")
}

// BenchmarkTailnetDrain: the builder's agent toggles draining (SIGUSR1) →
// a snapshot shows the new flag. Runs max(b.N, 20) toggles and reports
// the median as ms/drain-p50.
func BenchmarkTailnetDrain(b *testing.B) {
	tn := tailnettest.New(b)
	builder := tn.AddNode(b, "b1", tailnettest.TagBuilder)
	c := tn.AddNode(b, "c1")
	tn.WaitPeer(b, c, builder)
	tn.WaitPeer(b, builder, c)
	agent := tnStartAgent(b, builder, 0, nil)
	run := tnStart(b, &tailnet.Source{LocalAPI: c.LocalClient, Dial: c.Server.Dial, Refresh: time.Hour})
	_, i := run.wait(b, 0, 10*time.Second, "b1 not draining", tnDraining(builder, false))
	var lat []time.Duration
	draining := false
	b.ResetTimer()
	for range max(b.N, 20) {
		time.Sleep(150 * time.Millisecond) // past the source's least gap between polls
		draining = !draining
		start := time.Now()
		agent.ToggleDrain()
		var snap tnSnap
		snap, i = run.wait(b, i, 2*time.Second, "draining toggled", tnDraining(builder, draining))
		lat = append(lat, snap.at.Sub(start))
	}
	b.StopTimer()
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(ms(tnMedian(lat)), "ms/drain-p50")
	b.ReportMetric(ms(slicesMax(lat)), "ms/drain-max")
}
