package tailnet_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/advertise"
	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/nixrb-discover/nixrb-discover/discover/tailnet"
	"github.com/nixrb-discover/nixrb-discover/internal/tailnettest"
	"github.com/nixrb-discover/nixrb-discover/wire"
)

// tnAgent is the real advertise agent running on a tailnet node.
type tnAgent struct {
	*advertise.Agent
	cancel context.CancelFunc
	done   chan struct{}
}

// tnStartAgent runs an agent on node until stop or the end of the test.
// Its facts are all overrides (no nix needed); it re-measures capacity
// only hourly, so that its advert changes only when the test says so.
// wait is its server's long-poll bound (0: the default); listen opens its
// listeners (nil: the node's).
func tnStartAgent(tb testing.TB, node *tailnettest.Node, wait time.Duration, listen func(string, string) (net.Listener, error)) *tnAgent {
	tb.Helper()
	if listen == nil {
		listen = node.Server.Listen
	}
	a := &advertise.Agent{
		Facts: advertise.FactsOptions{Overrides: advertise.Overrides{
			Hostname: "advertised-" + node.Name, HostKey: tnHostKey, Systems: []string{"x86_64-linux"},
			SupportedFeatures: []string{}, MaxJobs: 4, AgentVersion: "test",
		}},
		Interval: time.Hour,
		Tailnet:  &advertise.TailnetServer{LocalAPI: node.LocalClient, Listen: listen, Wait: wait},
	}
	ctx, cancel := context.WithCancel(context.Background())
	ta := &tnAgent{Agent: a, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(ta.done)
		if err := a.Run(ctx); err != nil {
			tb.Errorf("agent on %s: %v", node.Name, err)
		}
	}()
	tb.Cleanup(ta.stop)
	return ta
}

// stop cancels the agent (a clean stop) and waits until Run returned.
func (a *tnAgent) stop() {
	a.cancel()
	<-a.done
}

// tnDraining is a snapshot predicate: node is a candidate with an advert
// whose draining flag is want.
func tnDraining(node *tailnettest.Node, want bool) func(discover.Snapshot) bool {
	key := "tailnet:" + string(node.StableID)
	return func(s discover.Snapshot) bool {
		for _, c := range s.Candidates {
			if c.Key == key && c.Advert != nil {
				return c.Advert.Draining == want
			}
		}
		return false
	}
}

// TestTailnetSourceLongPoll runs the real agent on a builder node and the
// source on a client node, with a Refresh of an hour: every change seen
// here was pushed by the builder's long poll, not re-fetched.
func TestTailnetSourceLongPoll(t *testing.T) {
	tn := tailnettest.New(t)
	b := tn.AddNode(t, "b1", tailnettest.TagBuilder)
	c := tn.AddNode(t, "c1", tailnettest.TagClient)
	tn.WaitPeer(t, c, b)
	tn.WaitPeer(t, b, c)
	const hold = 400 * time.Millisecond
	agent := tnStartAgent(t, b, hold, nil)
	dial := &tnCountingDial{dial: c.Server.Dial}
	run := tnStart(t, &tailnet.Source{LocalAPI: c.LocalClient, Dial: dial.Dial, Refresh: time.Hour, Logger: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))})
	const wait = 10 * time.Second
	_, i := run.wait(t, 0, wait, "b1 not draining", tnDraining(b, false))

	// Nothing changes: no snapshot, and one held request re-issued per
	// bound (the server holds each for 400 ms here, ~25 s by default).
	t.Run("steady-state-no-churn", func(t *testing.T) {
		time.Sleep(hold) // the first poll is held
		n0, s0, t0 := dial.count(), run.count(), time.Now()
		time.Sleep(5 * hold / 2)
		dials, snaps := dial.count()-n0, run.count()-s0
		t.Logf("in %v: %d requests, %d snapshots", time.Since(t0).Round(time.Millisecond), dials, snaps)
		if snaps != 0 {
			t.Errorf("%d snapshots while nothing changed, want 0", snaps)
		}
		if dials < 1 || dials > 4 {
			t.Errorf("%d requests in 2.5 long-poll bounds, want 2 or 3", dials)
		}
	})

	// SIGUSR1 (ToggleDrain) on the builder reaches a snapshot at once.
	t.Run("drain-toggle-pushed", func(t *testing.T) {
		var lat []time.Duration
		draining := false
		for range 6 {
			time.Sleep(150 * time.Millisecond)
			draining = !draining
			start := time.Now()
			agent.ToggleDrain()
			var s tnSnap
			s, i = run.wait(t, i, 2*time.Second, "b1 draining toggled", tnDraining(b, draining))
			lat = append(lat, s.at.Sub(start))
		}
		t.Logf("drain toggle → snapshot: median %v, all %v", tnMedian(lat), lat)
		if m := tnMedian(lat); m > 200*time.Millisecond {
			t.Errorf("median drain toggle → snapshot %v, want ~tens of ms", m)
		}
	})

	// A clean stop (the agent's Run context cancelled): the draining
	// advert it publishes on its way out reaches a snapshot at once, and
	// stays (the last good advert is kept through a few failed fetches).
	t.Run("clean-stop-pushes-draining", func(t *testing.T) {
		run.wait(t, i, wait, "b1 not draining", tnDraining(b, false))
		i = run.count()
		time.Sleep(150 * time.Millisecond)
		start := time.Now()
		agent.cancel()
		s, _ := run.wait(t, i, 2*time.Second, "b1 draining after the stop", tnDraining(b, true))
		took := s.at.Sub(start)
		t.Logf("clean stop → snapshot with draining: %v", took)
		if took > 300*time.Millisecond {
			t.Errorf("clean stop → snapshot took %v, want < 100ms", took)
		}
		<-agent.done
		time.Sleep(time.Second)
		if last := tnLast(run); !tnDraining(b, true)(last) {
			t.Errorf("after the stop, last snapshot %s, want b1 kept as draining", tnDescribe(last))
		}
	})
}

// TestTailnetSourceNoETagFallback serves the advert from a plain server
// that sends no ETag and knows no long polls (an older agent): the source
// never sends ?wait and sees changes by its periodic Refresh.
func TestTailnetSourceNoETagFallback(t *testing.T) {
	tn := tailnettest.New(t)
	b := tn.AddNode(t, "b1", tailnettest.TagBuilder)
	c := tn.AddNode(t, "c1", tailnettest.TagClient)
	tn.WaitPeer(t, c, b)
	tn.WaitPeer(t, b, c)

	ad := tnAdvertFor("advertised-b1")
	var body atomic.Pointer[[]byte]
	set := func() {
		js, err := wire.EncodeJSON(ad)
		if err != nil {
			t.Fatal(err)
		}
		body.Store(&js)
	}
	set()
	var mu sync.Mutex
	var gets, waits int
	ln, err := b.Server.Listen("tcp", ":7461")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		gets++
		if r.URL.Query().Has("wait") {
			waits++
		}
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Write(*body.Load())
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	const refresh = 300 * time.Millisecond
	run := tnStart(t, &tailnet.Source{LocalAPI: c.LocalClient, Dial: c.Server.Dial, Refresh: refresh})
	_, i := run.wait(t, 0, 10*time.Second, "b1 not draining", tnDraining(b, false))
	ad.Draining = true
	set()
	start := time.Now()
	s, _ := run.wait(t, i, 10*refresh, "b1 draining", tnDraining(b, true))
	t.Logf("draining seen %v after the change (Refresh %v)", s.at.Sub(start), refresh)
	time.Sleep(2 * refresh)
	mu.Lock()
	defer mu.Unlock()
	if waits != 0 || gets < 3 {
		t.Errorf("%d GETs of which %d long polls; want periodic fetches, no long polls", gets, waits)
	}
}

// tnCrash opens listeners that a test can cut like a crashed process
// would: every listener and connection closed at once, nothing answered.
type tnCrash struct {
	listen func(string, string) (net.Listener, error)
	mu     sync.Mutex
	closer []io.Closer
}

func (c *tnCrash) Listen(network, addr string) (net.Listener, error) {
	ln, err := c.listen(network, addr)
	if err != nil {
		return nil, err
	}
	c.track(ln)
	return &tnCrashListener{Listener: ln, c: c}, nil
}

func (c *tnCrash) track(x io.Closer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closer = append(c.closer, x)
}

func (c *tnCrash) crash() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, x := range c.closer {
		x.Close()
	}
	c.closer = nil
}

type tnCrashListener struct {
	net.Listener
	c *tnCrash
}

func (l *tnCrashListener) Accept() (net.Conn, error) {
	conn, err := l.Listener.Accept()
	if err == nil {
		l.c.track(conn)
	}
	return conn, err
}

// TestTailnetSourceAgentRestart crashes a builder's agent (its listener
// and held long poll cut, no draining advert) and starts a new one a few
// hundred ms later: the source re-fetches at once when the poll breaks,
// keeps the builder with its last good advert and no problem throughout,
// and long-polls the new agent (Refresh is an hour).
func TestTailnetSourceAgentRestart(t *testing.T) {
	tn := tailnettest.New(t)
	b := tn.AddNode(t, "b1", tailnettest.TagBuilder)
	c := tn.AddNode(t, "c1", tailnettest.TagClient)
	tn.WaitPeer(t, c, b)
	tn.WaitPeer(t, b, c)
	crash := &tnCrash{listen: b.Server.Listen}
	tnStartAgent(t, b, 0, crash.Listen)
	dial := &tnCountingDial{dial: c.Server.Dial}
	run := tnStart(t, &tailnet.Source{LocalAPI: c.LocalClient, Dial: dial.Dial, Refresh: time.Hour})
	_, i := run.wait(t, 0, 10*time.Second, "b1 not draining", tnDraining(b, false))
	time.Sleep(200 * time.Millisecond) // the long poll is held

	n0 := dial.count()
	crash.crash()
	time.Sleep(300 * time.Millisecond)
	if n := dial.count() - n0; n < 1 {
		t.Errorf("%d requests within 300ms of the crash, want a prompt re-fetch", n)
	}
	agent := tnStartAgent(t, b, 0, nil)
	// Back on the first retry (1 s after the failed re-fetch).
	deadline := time.Now().Add(5 * time.Second)
	for dial.count()-n0 < 3 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	agent.ToggleDrain()
	s, j := run.wait(t, i, 2*time.Second, "b1 draining (pushed by the new agent)", tnDraining(b, true))
	t.Logf("new agent's drain seen %v after the toggle", s.at.Sub(start))
	run.mu.Lock()
	defer run.mu.Unlock()
	for _, s := range run.snaps[i : j+1] {
		if !tnHas(b)(s.Snapshot) {
			t.Errorf("during the restart: snapshot %s, want b1 kept with its advert", tnDescribe(s.Snapshot))
		}
	}
}
