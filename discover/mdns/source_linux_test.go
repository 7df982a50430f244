package mdns

import (
	"context"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/nixrb-discover/nixrb-discover/advertise"
	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/nixrb-discover/nixrb-discover/internal/netnstest"
	"github.com/nixrb-discover/nixrb-discover/wire"
)

// mdnsRecorder keeps every snapshot an Source emits.
type mdnsRecorder struct {
	mu    sync.Mutex
	snaps []discover.Snapshot
	at    []time.Time
	note  chan struct{}
}

func (r *mdnsRecorder) emit(s discover.Snapshot) {
	r.mu.Lock()
	r.snaps = append(r.snaps, s)
	r.at = append(r.at, time.Now())
	r.mu.Unlock()
	select {
	case r.note <- struct{}{}:
	default:
	}
}

// waitFor returns the first snapshot from index from on that satisfies ok,
// its index and when it was emitted, or fails the test after within.
func (r *mdnsRecorder) waitFor(t *testing.T, from int, within time.Duration, what string, ok func(discover.Snapshot) bool) (discover.Snapshot, int, time.Time) {
	t.Helper()
	deadline := time.After(within)
	for {
		r.mu.Lock()
		for i := from; i < len(r.snaps); i++ {
			if ok(r.snaps[i]) {
				s, at := r.snaps[i], r.at[i]
				r.mu.Unlock()
				return s, i, at
			}
		}
		from = len(r.snaps)
		r.mu.Unlock()
		select {
		case <-r.note:
		case <-deadline:
			t.Fatalf("no snapshot with %s within %v", what, within)
		}
	}
}

func (r *mdnsRecorder) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.snaps)
}

// mdnsStartSource runs src in h until the test ends.
func mdnsStartSource(t *testing.T, h *netnstest.Host, src *Source) *mdnsRecorder {
	t.Helper()
	if src.Interfaces == nil {
		src.Interfaces = []string{h.Iface}
	}
	rec := &mdnsRecorder{note: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Do(func() error { return src.Run(ctx, rec.emit) }) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("source Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("source Run did not return within 5s of cancel")
		}
	})
	return rec
}

// mdnsStartBuilder runs an mDNS responder for txt in h; stop cancels it and
// waits for Run.
func mdnsStartBuilder(t *testing.T, h *netnstest.Host, instance string, txt []string, ttl time.Duration) (r *advertise.MDNSResponder, stop func()) {
	t.Helper()
	r = &advertise.MDNSResponder{Hostname: instance, Port: 22, Interfaces: []string{h.Iface}, TXT: txt, TTL: ttl}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Do(func() error { return r.Run(ctx) }) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("responder %s: %v", instance, err)
				}
			case <-time.After(5 * time.Second):
				t.Errorf("responder %s did not stop within 5s", instance)
			}
		})
	}
	t.Cleanup(stop)
	return r, stop
}

func mdnsHasKey(key string) func(discover.Snapshot) bool {
	return func(s discover.Snapshot) bool {
		return slices.ContainsFunc(s.Candidates, func(c discover.Candidate) bool { return c.Key == key })
	}
}

func mdnsCandidateIn(s discover.Snapshot, key string) (discover.Candidate, bool) {
	for _, c := range s.Candidates {
		if c.Key == key {
			return c, true
		}
	}
	return discover.Candidate{}, false
}

func TestMDNSSourceFindsRunningBuilderByQuery(t *testing.T) {
	netnstest.RequireRoot(t)
	topo := netnstest.New(t)
	b, q := topo.AddHost(t, "builder"), topo.AddHost(t, "client")
	fleet := mdnsFleetKey(t)
	hk := mdnsHostKey(t)
	mdnsStartBuilder(t, b, "b1", mdnsTXT(t, mdnsAdvert(t, "b1", hk, fleet, time.Now())), 0)
	time.Sleep(1200 * time.Millisecond) // its announcements are over: only a query finds it

	rec := mdnsStartSource(t, q, &Source{TrustKeys: []wire.TrustKey{fleet.TrustKey()}, QueryTimeout: 300 * time.Millisecond})
	key := "mdns:" + mdnsFingerprint(t, hk)
	snap, _, _ := rec.waitFor(t, 0, 3*time.Second, "b1", mdnsHasKey(key))
	c, _ := mdnsCandidateIn(snap, key)
	if !c.Trusted || c.Address != b.IP.String() || c.Name != "b1" || c.Advert == nil || c.Advert.HostKey != hk {
		t.Fatalf("candidate %+v", c)
	}
}

func TestMDNSSourceFollowsAnnouncementsAndGoodbye(t *testing.T) {
	netnstest.RequireRoot(t)
	topo := netnstest.New(t)
	b, q := topo.AddHost(t, "builder"), topo.AddHost(t, "client")
	onWire := mdnsListenGoodbyes(t, q)
	fleet := mdnsFleetKey(t)
	hk := mdnsHostKey(t)
	key := "mdns:" + mdnsFingerprint(t, hk)
	// Queries every 30 s: what follows must come from announcements.
	rec := mdnsStartSource(t, q, &Source{TrustKeys: []wire.TrustKey{fleet.TrustKey()}, QueryInterval: 30 * time.Second, QueryTimeout: 200 * time.Millisecond})
	rec.waitFor(t, 0, 3*time.Second, "the first (empty) snapshot", func(discover.Snapshot) bool { return true })

	started := time.Now()
	r, stop := mdnsStartBuilder(t, b, "b1", mdnsTXT(t, mdnsAdvert(t, "b1", hk, fleet, time.Now())), 0)
	_, i, at := rec.waitFor(t, 0, 2*time.Second, "b1 after its announcement", mdnsHasKey(key)) // target < 400ms; bound loose for -race on a loaded machine
	t.Logf("builder seen %v after its responder started", at.Sub(started))

	busy := mdnsAdvert(t, "b1", hk, nil, time.Now())
	busy.Capacity.RunningBuilds = 7
	if err := wire.Sign(busy, fleet, time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	updated := time.Now()
	if err := r.Update(mdnsTXT(t, busy)); err != nil {
		t.Fatal(err)
	}
	_, i, at = rec.waitFor(t, i+1, 500*time.Millisecond, "the TXT change", func(s discover.Snapshot) bool {
		c, ok := mdnsCandidateIn(s, key)
		return ok && c.Advert.Capacity.RunningBuilds == 7
	})
	t.Logf("TXT change seen %v after Update", at.Sub(updated))

	// A clean leave: a signed advert that says draining, then the goodbye.
	drain := mdnsAdvert(t, "b1", hk, nil, time.Now())
	drain.Draining = true
	if err := wire.Sign(drain, fleet, time.Now().Add(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := r.Update(mdnsTXT(t, drain)); err != nil {
		t.Fatal(err)
	}
	_, i, _ = rec.waitFor(t, i+1, time.Second, "the signed draining advert", func(s discover.Snapshot) bool {
		c, ok := mdnsCandidateIn(s, key)
		return ok && c.Trusted && c.Advert.Draining
	})

	stopped := time.Now()
	stop()
	snap, _, at := rec.waitFor(t, i+1, time.Second, "a re-check after the goodbye", func(s discover.Snapshot) bool { return slices.Contains(s.Recheck, key) })
	t.Logf("goodbye became Recheck %v after the responder was stopped", at.Sub(stopped))
	if _, ok := mdnsCandidateIn(snap, key); !ok {
		t.Error("a goodbye removed the candidate; it must only ask for a re-check")
	}
	select {
	case m := <-onWire:
		for _, rr := range m.Answer {
			if rr.Header().Ttl != 0 {
				t.Errorf("goodbye record with TTL %d: %v", rr.Header().Ttl, rr)
			}
		}
	case <-time.After(time.Second):
		t.Fatal("no goodbye packet seen on the client's wire")
	}
}

// mdnsListenGoodbyes joins the mDNS group in h with a plain socket of its own
// and reports responses whose records all have TTL 0.
func mdnsListenGoodbyes(t *testing.T, h *netnstest.Host) <-chan *dns.Msg {
	t.Helper()
	out := make(chan *dns.Msg, 8)
	var c *net.UDPConn
	err := h.Do(func() error {
		ifi, err := net.InterfaceByName(h.Iface)
		if err != nil {
			return err
		}
		c, err = net.ListenMulticastUDP("udp4", ifi, &net.UDPAddr{IP: net.IPv4(224, 0, 0, 251), Port: 5353})
		return err
	})
	if err != nil {
		t.Fatalf("goodbye listener: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 9000)
		for {
			n, _, err := c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			m := new(dns.Msg)
			if m.Unpack(buf[:n]) != nil || !m.Response || len(m.Answer) == 0 {
				continue
			}
			if slices.ContainsFunc(m.Answer, func(rr dns.RR) bool { return rr.Header().Ttl == 0 }) {
				select {
				case out <- m:
				default:
				}
			}
		}
	}()
	return out
}

func TestMDNSSourceTrustDecisions(t *testing.T) {
	netnstest.RequireRoot(t)
	topo := netnstest.New(t)
	q := topo.AddHost(t, "client")
	fleet, other := mdnsFleetKey(t), mdnsFleetKey(t)
	now := time.Now()
	pins := &Pins{}
	pinnedKey := mdnsHostKey(t)
	if err := pins.AddFlag("pinned=" + pinnedKey); err != nil {
		t.Fatal(err)
	}
	forged := mdnsAdvert(t, "forged", mdnsHostKey(t), fleet, now)
	forged.MaxJobs = 64 // changed after signing
	cases := []struct {
		name    string
		advert  *wire.Advert
		trusted bool
		reason  string // prefix
		hint    string // prefix
	}{
		{"signed", mdnsAdvert(t, "signed", mdnsHostKey(t), fleet, now), true, "signed by fleet key " + fleet.KeyID, ""},
		{"unsigned", mdnsAdvert(t, "unsigned", mdnsHostKey(t), nil, now), false, "unsigned advert", "--pin 'unsigned=ssh-ed25519 AAAA"},
		{"unknown", mdnsAdvert(t, "unknown", mdnsHostKey(t), other, now), false, "signature by unknown key " + other.KeyID, "--trust-key FILE"},
		{"forged", forged, false, "bad signature by fleet key " + fleet.KeyID, ""},
		{"pinned", mdnsAdvert(t, "pinned", pinnedKey, nil, now), true, "host key pinned for pinned", ""},
	}
	for _, c := range cases {
		h := topo.AddHost(t, c.name)
		mdnsStartBuilder(t, h, c.name, mdnsTXT(t, c.advert), 0)
	}
	rec := mdnsStartSource(t, q, &Source{TrustKeys: []wire.TrustKey{fleet.TrustKey()}, Pins: pins, QueryTimeout: 300 * time.Millisecond})
	snap, _, _ := rec.waitFor(t, 0, 3*time.Second, "all five builders", func(s discover.Snapshot) bool { return len(s.Candidates) == len(cases) })
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var got *discover.Candidate
			for i := range snap.Candidates {
				if snap.Candidates[i].Name == c.name {
					got = &snap.Candidates[i]
				}
			}
			if got == nil {
				t.Fatalf("no candidate named %s", c.name)
			}
			wantKey := "mdns:" + mdnsFingerprint(t, c.advert.HostKey)
			if !c.trusted {
				wantKey = "mdns-untrusted:" + c.name + "@"
			}
			if got.Trusted != c.trusted || !strings.HasPrefix(got.Key, wantKey) ||
				!strings.HasPrefix(got.TrustReason, c.reason) || !strings.HasPrefix(got.TrustHint, c.hint) {
				t.Errorf("got trusted=%v key=%s reason=%q hint=%q\nwant trusted=%v key=%s… reason=%q… hint=%q…",
					got.Trusted, got.Key, got.TrustReason, got.TrustHint, c.trusted, wantKey, c.reason, c.hint)
			}
		})
	}
}

func TestMDNSSourceRogueCannotReplaceOrRemove(t *testing.T) {
	netnstest.RequireRoot(t)
	topo := netnstest.New(t)
	b, rogue, q := topo.AddHost(t, "builder"), topo.AddHost(t, "rogue"), topo.AddHost(t, "client")
	fleet := mdnsFleetKey(t)
	hk := mdnsHostKey(t)
	key := "mdns:" + mdnsFingerprint(t, hk)
	realTXT := mdnsTXT(t, mdnsAdvert(t, "b1", hk, fleet, time.Now()))
	rec := mdnsStartSource(t, q, &Source{TrustKeys: []wire.TrustKey{fleet.TrustKey()}, QueryInterval: 30 * time.Second, QueryTimeout: 200 * time.Millisecond})
	mdnsStartBuilder(t, b, "b1", realTXT, 0)
	_, i, _ := rec.waitFor(t, 0, 2*time.Second, "the real b1", mdnsHasKey(key))

	// The rogue reuses the name with its own unsigned advert, then replays
	// the real signed advert from its own address, then says goodbye.
	r, stop := mdnsStartBuilder(t, rogue, "b1", mdnsTXT(t, mdnsAdvert(t, "b1", mdnsHostKey(t), nil, time.Now())), 0)
	rogueKey := "mdns-untrusted:b1@" + rogue.IP.String()
	_, i, _ = rec.waitFor(t, i+1, 2*time.Second, "the rogue as untrusted", mdnsHasKey(rogueKey))
	if err := r.Update(realTXT); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	stop()
	snap, _, _ := rec.waitFor(t, i+1, 2*time.Second, "the rogue's goodbye as a re-check", func(s discover.Snapshot) bool { return slices.Contains(s.Recheck, key) })
	c, ok := mdnsCandidateIn(snap, key)
	if !ok || !c.Trusted || c.Address != b.IP.String() || c.Name != "b1" {
		t.Fatalf("real b1 after the rogue: present=%v %+v", ok, c)
	}
	time.Sleep(200 * time.Millisecond)
	rec.mu.Lock()
	last := rec.snaps[len(rec.snaps)-1]
	rec.mu.Unlock()
	if c, ok := mdnsCandidateIn(last, key); !ok || c.Address != b.IP.String() {
		t.Fatalf("real b1 replaced or removed: present=%v %+v", ok, c)
	}
}

func TestMDNSSourceExpiresSilentBuilderByTTL(t *testing.T) {
	netnstest.RequireRoot(t)
	topo := netnstest.New(t)
	b, q := topo.AddHost(t, "builder"), topo.AddHost(t, "client")
	hk := mdnsHostKey(t)
	pins := &Pins{}
	if err := pins.AddFlag("b1=" + hk); err != nil {
		t.Fatal(err)
	}
	key := "mdns:" + mdnsFingerprint(t, hk)
	rec := mdnsStartSource(t, q, &Source{Pins: pins, QueryInterval: 30 * time.Second, QueryTimeout: 200 * time.Millisecond})
	_, stop := mdnsStartBuilder(t, b, "b1", mdnsTXT(t, mdnsAdvert(t, "b1", hk, nil, time.Now())), 2*time.Second)
	_, i, _ := rec.waitFor(t, 0, 2*time.Second, "b1", mdnsHasKey(key))
	time.Sleep(1100 * time.Millisecond)  // past the repeated announcement
	if err := b.LinkDown(); err != nil { // dies silently: the goodbye is lost
		t.Fatal(err)
	}
	down := time.Now()
	stop()
	snap, _, at := rec.waitFor(t, i+1, 4*time.Second, "b1 expired", func(s discover.Snapshot) bool { return !mdnsHasKey(key)(s) })
	t.Logf("silent builder expired %v after its link went down (TTL 2s)", at.Sub(down))
	if len(snap.Recheck) != 0 {
		t.Errorf("recheck %v without a goodbye", snap.Recheck)
	}
}
