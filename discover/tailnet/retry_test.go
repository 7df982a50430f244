package tailnet

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"tailscale.com/ipn"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"

	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/nixrb-discover/nixrb-discover/wire"
)

// tnInitial is the source's loop after the initial status of
// testdata/ipnbus/patches.json: b1 (node 1) a tagged online peer.
func tnInitial(t *testing.T) *tnLoop {
	t.Helper()
	raw, err := os.ReadFile("testdata/ipnbus/patches.json")
	if err != nil {
		t.Fatal(err)
	}
	var steps []struct{ Notify ipn.Notify }
	if err := json.Unmarshal(raw, &steps); err != nil {
		t.Fatal(err)
	}
	l := (&Source{}).newLoop(func(discover.Snapshot) {})
	l.onBus(busEvent{n: &steps[0].Notify})
	if l.entries[1] == nil {
		t.Fatal("b1 is not a candidate after the initial status")
	}
	return l
}

// fail records a failed fetch of b1 at now and returns the wait before
// its next one.
func tnFail(l *tnLoop, now time.Time, err error) time.Duration {
	e := l.entries[1]
	l.onResult(fetchResult{id: 1, seq: e.seq, err: err}, now)
	return e.due.Sub(now)
}

var (
	tnRefused = &net.OpError{Op: "connect", Net: "tcp", Err: errors.New("connection was refused")} // as tsnet's Dial returns it
	tnTimeout = context.DeadlineExceeded
)

// TestTailnetRetrySchedule tells the stories of one tagged peer's fetches:
// when the next one is due after each outcome.
func TestTailnetRetrySchedule(t *testing.T) {
	fast := func(t *testing.T, d time.Duration) {
		t.Helper()
		if d < tnFastRetryMin || d >= tnFastRetryMax {
			t.Errorf("next fetch in %v, want a fast retry in [%v, %v)", d, tnFastRetryMin, tnFastRetryMax)
		}
	}
	slow := func(t *testing.T, d, want time.Duration) {
		t.Helper()
		if d != want {
			t.Errorf("next fetch in %v, want the backoff's %v", d, want)
		}
	}
	t.Run("agent-not-up-yet-is-retried-fast-then-backs-off", func(t *testing.T) {
		l := tnInitial(t)
		now := time.Now()
		for i := range 5 {
			fast(t, tnFail(l, now.Add(time.Duration(i)*time.Second), tnRefused))
		}
		if e := l.entries[1]; e.slowRetry() || e.stale {
			t.Errorf("a refused peer is a slow retry (%v) or stale (%v)", e.slowRetry(), e.stale)
		}
		// The window is over: the usual backoff.
		later := now.Add(tnFastWindow + time.Second)
		slow(t, tnFail(l, later, tnRefused), time.Second)
		slow(t, tnFail(l, later.Add(time.Second), tnRefused), 2*time.Second)
	})
	t.Run("unreachable-peer-backs-off-at-once", func(t *testing.T) {
		l := tnInitial(t)
		now := time.Now()
		slow(t, tnFail(l, now, tnTimeout), time.Second)
		slow(t, tnFail(l, now.Add(time.Second), tnTimeout), 2*time.Second)
		slow(t, tnFail(l, now.Add(3*time.Second), tnTimeout), 4*time.Second)
		if !l.entries[1].slowRetry() {
			t.Error("a timing-out peer is not a slow retry (it would take the pool's main share)")
		}
	})
	t.Run("agent-went-away-is-watched-fast-again", func(t *testing.T) {
		l := tnInitial(t)
		now := time.Now()
		e := l.entries[1]
		l.onResult(fetchResult{id: 1, seq: e.seq, advert: &wire.Advert{Version: 1}}, now)
		// Long after the peer came online, the agent goes away.
		gone := now.Add(10 * tnFastWindow)
		for i := range 4 {
			fast(t, tnFail(l, gone.Add(time.Duration(i)*tnFastRetryMax), tnRefused))
		}
		if e.stale {
			t.Error("stale after 4 fast retries (2 s): the restart of an agent flags its builder")
		}
		tnFail(l, gone.Add(tnStaleFor), tnRefused)
		if !e.stale {
			t.Errorf("not stale after failing for %v", tnStaleFor)
		}
	})
	t.Run("node-restart-in-the-netmap-asks-at-once", func(t *testing.T) {
		l := tnInitial(t)
		now := time.Now()
		k1, k2 := key.NewDisco().Public(), key.NewDisco().Public()
		l.onBus(busEvent{n: &ipn.Notify{PeerChangedPatch: []*tailcfg.PeerChange{{NodeID: 1, DiscoKey: &k1}}}})
		for range 3 {
			tnFail(l, now.Add(tnFastWindow+time.Minute), tnTimeout)
		}
		e := l.entries[1]
		if !e.due.After(time.Now()) {
			t.Fatal("a backing-off peer is due now")
		}
		l.onBus(busEvent{n: &ipn.Notify{PeerChangedPatch: []*tailcfg.PeerChange{{NodeID: 1, DiscoKey: &k2}}}})
		if e := l.entries[1]; e.due.After(time.Now()) || !e.fastUntil.After(time.Now()) {
			t.Errorf("after a new disco key: due %v, fast until %v; want due now, fast window open", e.due, e.fastUntil)
		}
	})
	t.Run("local-tailscaled-back-asks-known-builders-at-once", func(t *testing.T) {
		l := tnInitial(t)
		now := time.Now()
		e := l.entries[1]
		l.onResult(fetchResult{id: 1, seq: e.seq, advert: &wire.Advert{Version: 1}}, now)
		for i := range 4 {
			tnFail(l, now.Add(tnFastWindow+time.Duration(i)*time.Minute), tnTimeout)
		}
		l.onBus(busEvent{err: errors.New("tailscaled gone")})
		raw, _ := os.ReadFile("testdata/ipnbus/patches.json")
		var steps []struct{ Notify ipn.Notify }
		json.Unmarshal(raw, &steps)
		l.onBus(busEvent{n: &steps[0].Notify})
		if e := l.entries[1]; e.due.After(time.Now()) {
			t.Errorf("after the bus came back: b1 due in %v, want now", time.Until(e.due))
		}
	})
}

// TestTailnetQuickFailure classifies the errors real fetches return.
func TestTailnetQuickFailure(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := (&Source{Dial: (&net.Dialer{}).DialContext}).newHTTPClient(300 * time.Millisecond)
	get := func(addr string) error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v1/advert", nil)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	listen := func(serve func(net.Conn)) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go serve(c)
			}
		}()
		return ln.Addr().String()
	}
	closed := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		return addr
	}()
	for _, c := range []struct {
		name  string
		err   error
		quick bool
	}{
		// nothing listens: the kernel answers with a RST
		{"kernel-connection-refused", get(closed), true},
		// accepted and closed before any answer (an agent dying, or a forwarder whose far side refused)
		{"closed-before-answer", get(listen(func(c net.Conn) { c.Close() })), true},
		// accepted, never answered: a hung peer
		{"no-answer-times-out", get(listen(func(c net.Conn) { <-ctx.Done(); c.Close() })), false},
		// gVisor's netstack (tsnet, userspace tailscaled) on a RST; the in-process tests see the real one
		{"netstack-connection-refused", tnRefused, true},
		{"context-deadline", tnTimeout, false},
		{"not-an-advert", errors.New("advert fetch failed: http://x/v1/advert: 403 Forbidden"), false},
	} {
		if got := tnQuickFailure(c.err); got != c.quick {
			t.Errorf("%s: tnQuickFailure(%v) = %v, want %v", c.name, c.err, got, c.quick)
		}
	}
}
