package mdns

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/advertise"
	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/nixrb-discover/nixrb-discover/internal/netnstest"
	"github.com/nixrb-discover/nixrb-discover/wire"
)

// BenchmarkMDNSDiscoveryLatency measures, per iteration, the time from
// starting a builder's responder (in its namespace) to the Source in
// the client's namespace emitting a snapshot with it. Queries are 30 s
// apart, so what is measured is the announcement path. Reports the median
// and 90th percentile as ms-median and ms-p90.
func BenchmarkMDNSDiscoveryLatency(b *testing.B) {
	netnstest.RequireRoot(b)
	topo := netnstest.New(b)
	bh, q := topo.AddHost(b, "builder"), topo.AddHost(b, "client")
	fleet := mdnsFleetKey(b)
	rec := &mdnsRecorder{note: make(chan struct{}, 1)}
	src := &Source{Interfaces: []string{q.Iface}, TrustKeys: []wire.TrustKey{fleet.TrustKey()},
		QueryInterval: 30 * time.Second, QueryTimeout: 200 * time.Millisecond}
	stopSrc := mdnsRunIn(b, q, func(ctx context.Context) error { return src.Run(ctx, rec.emit) })
	defer stopSrc()
	time.Sleep(300 * time.Millisecond) // first query round over

	var lat []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		hk := mdnsHostKey(b)
		key := "mdns:" + mdnsFingerprint(b, hk)
		r := &advertise.MDNSResponder{Hostname: fmt.Sprintf("bench%d", i), Interfaces: []string{bh.Iface},
			TXT: mdnsTXT(b, mdnsAdvert(b, fmt.Sprintf("bench%d", i), hk, fleet, time.Now())), TTL: time.Second}
		from := rec.len()
		start := time.Now()
		stop := mdnsRunIn(b, bh, r.Run)
		at, ok := rec.waitUntil(from, 5*time.Second, mdnsHasKey(key))
		stop()
		if !ok {
			b.Fatalf("iteration %d: builder not seen within 5s", i)
		}
		lat = append(lat, at.Sub(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "ms-median")
	b.ReportMetric(float64(lat[len(lat)*9/10].Microseconds())/1000, "ms-p90")
}

// mdnsRunIn runs fn in h until the returned stop is called (stop cancels
// and waits at most 5 s).
func mdnsRunIn(tb testing.TB, h *netnstest.Host, fn func(context.Context) error) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Do(func() error { return fn(ctx) }) }()
	return func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				tb.Errorf("run in %s: %v", h.Name, err)
			}
		case <-time.After(5 * time.Second):
			tb.Errorf("run in %s: did not stop within 5s", h.Name)
		}
	}
}

// waitUntil is waitFor without failing: when the first snapshot from
// index from on satisfying ok was emitted.
func (r *mdnsRecorder) waitUntil(from int, within time.Duration, ok func(discover.Snapshot) bool) (time.Time, bool) {
	deadline := time.After(within)
	for {
		r.mu.Lock()
		for i := from; i < len(r.snaps); i++ {
			if ok(r.snaps[i]) {
				at := r.at[i]
				r.mu.Unlock()
				return at, true
			}
		}
		from = len(r.snaps)
		r.mu.Unlock()
		select {
		case <-r.note:
		case <-deadline:
			return time.Time{}, false
		}
	}
}
