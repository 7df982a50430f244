package mdns

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/nixrb-discover/nixrb-discover/wire"
)

var mdnsT0 = time.Date(2026, 11, 26, 4, 0, 0, 0, time.UTC)

func mdnsObsOf(inst, src string, txt []string, ttl uint32) mdnsObs {
	a := netip.MustParseAddr(src)
	return mdnsObs{instance: inst, src: a, iface: "veth0", hasSRV: true, port: 22, hasTXT: true,
		txt: txt, addrs: []netip.Addr{a}, ttl: ttl, ttlKnown: true, goodbye: ttl == 0}
}

func mdnsCandidate(t *testing.T, snap discover.Snapshot, key string) discover.Candidate {
	t.Helper()
	for _, c := range snap.Candidates {
		if c.Key == key {
			return c
		}
	}
	t.Fatalf("no candidate %s in %v", key, mdnsKeys(snap))
	return discover.Candidate{}
}

func mdnsKeys(snap discover.Snapshot) []string {
	var ks []string
	for _, c := range snap.Candidates {
		ks = append(ks, c.Key)
	}
	return ks
}

func TestMDNSStateStories(t *testing.T) {
	fleet := mdnsFleetKey(t)
	realKey := mdnsHostKey(t)
	realTXT := mdnsTXT(t, mdnsAdvert(t, "b1", realKey, fleet, mdnsT0))
	realFP := "mdns:" + mdnsFingerprint(t, realKey)
	newState := func() *mdnsState {
		return newMDNSState([]wire.TrustKey{fleet.TrustKey()}, nil, wire.DefaultMaxAge, 120*time.Second, 8, 8)
	}

	t.Run("signed-advert-trusted-by-fingerprint", func(t *testing.T) {
		s := newState()
		s.observe(mdnsT0, mdnsObsOf("b1", "10.0.0.2", realTXT, 120))
		snap, ok := s.snapshot(false)
		c := mdnsCandidate(t, snap, realFP)
		if !ok || !c.Trusted || c.Address != "10.0.0.2" || c.Name != "b1" || !strings.HasPrefix(c.TrustReason, "signed by fleet key") {
			t.Fatalf("candidate %+v", c)
		}
		if _, ok := s.snapshot(false); ok {
			t.Error("re-emitted an unchanged set")
		}
		s.observe(mdnsT0.Add(time.Second), mdnsObsOf("b1", "10.0.0.2", realTXT, 120))
		if _, ok := s.snapshot(false); ok {
			t.Error("re-emitted after an identical announcement")
		}
	})

	t.Run("rogue-same-name-cannot-replace-or-remove", func(t *testing.T) {
		s := newState()
		s.observe(mdnsT0, mdnsObsOf("b1", "10.0.0.2", realTXT, 120))
		// Unsigned advert with another host key, same instance, other IP.
		s.observe(mdnsT0, mdnsObsOf("b1", "10.0.0.66", mdnsTXT(t, mdnsAdvert(t, "b1", mdnsHostKey(t), nil, mdnsT0)), 120))
		// The same from the real builder's (spoofed) source address.
		s.observe(mdnsT0, mdnsObsOf("b1", "10.0.0.2", mdnsTXT(t, mdnsAdvert(t, "b1", mdnsHostKey(t), nil, mdnsT0)), 120))
		// The real signed advert replayed from the rogue's address.
		s.observe(mdnsT0, mdnsObsOf("b1", "10.0.0.66", realTXT, 120))
		// An older signed advert of the real builder, replayed.
		s.observe(mdnsT0, mdnsObsOf("b1", "10.0.0.66", mdnsTXT(t, mdnsAdvert(t, "b1", realKey, fleet, mdnsT0.Add(-time.Minute))), 120))
		// Goodbyes for b1 from anyone.
		s.observe(mdnsT0, mdnsObsOf("b1", "10.0.0.66", realTXT, 0))
		s.observe(mdnsT0, mdnsObsOf("b1", "10.0.0.2", realTXT, 0))
		snap, _ := s.snapshot(false)
		c := mdnsCandidate(t, snap, realFP)
		if !c.Trusted || c.Address != "10.0.0.2" || c.Advert.IssuedAt != mdnsT0 {
			t.Fatalf("real builder changed: %+v", c)
		}
		u := mdnsCandidate(t, snap, "mdns-untrusted:b1@10.0.0.66")
		if u.Trusted || u.TrustReason != "unsigned advert" || !strings.HasPrefix(u.TrustHint, "--pin 'b1=ssh-ed25519 ") {
			t.Errorf("rogue candidate %+v", u)
		}
		if len(snap.Recheck) == 0 || !strings.Contains(strings.Join(snap.Recheck, " "), realFP) {
			t.Errorf("goodbye did not ask for a re-check of %s: %v", realFP, snap.Recheck)
		}
	})

	t.Run("newer-signed-draining-advert-replaces", func(t *testing.T) {
		s := newState()
		s.observe(mdnsT0, mdnsObsOf("b1", "10.0.0.2", realTXT, 120))
		drain := mdnsAdvert(t, "b1", realKey, nil, mdnsT0)
		drain.Draining = true
		if err := wire.Sign(drain, fleet, mdnsT0.Add(time.Second)); err != nil {
			t.Fatal(err)
		}
		s.observe(mdnsT0.Add(time.Second), mdnsObsOf("b1", "10.0.0.2", mdnsTXT(t, drain), 120))
		snap, ok := s.snapshot(false)
		if c := mdnsCandidate(t, snap, realFP); !ok || !c.Advert.Draining {
			t.Fatalf("draining advert not emitted: %+v", c)
		}
	})

	t.Run("ttl-and-signature-age-expire", func(t *testing.T) {
		s := newState()
		s.observe(mdnsT0, mdnsObsOf("b1", "10.0.0.2", realTXT, 2))
		s.expire(mdnsT0.Add(1900 * time.Millisecond))
		if len(s.entries) != 1 {
			t.Fatal("expired before its TTL")
		}
		s.expire(mdnsT0.Add(2 * time.Second))
		if len(s.entries) != 0 {
			t.Fatal("still there after its TTL")
		}
		s.observe(mdnsT0, mdnsObsOf("b1", "10.0.0.2", realTXT, 4000))
		if got, want := s.nextExpiry(), mdnsT0.Add(wire.DefaultMaxAge); !got.Equal(want) {
			t.Errorf("signed entry expires at %v, want its max age %v", got, want)
		}
	})

	t.Run("flood-is-bounded-and-trusted-gets-in", func(t *testing.T) {
		s := newState()
		for i := range 100 {
			s.observe(mdnsT0, mdnsObsOf(fmt.Sprintf("rogue%d", i), "10.0.1.1", mdnsTXT(t, mdnsAdvert(t, "b1", mdnsHostKey(t), nil, mdnsT0)), 120))
		}
		if len(s.entries) != 8 {
			t.Fatalf("%d entries, want the bound 8", len(s.entries))
		}
		s.observe(mdnsT0, mdnsObsOf("b1", "10.0.0.2", realTXT, 120))
		if s.entries[realFP] == nil || len(s.entries) != 8 {
			t.Fatalf("trusted advert not admitted over a full cache of untrusted ones")
		}
	})

	t.Run("txt-only-update-completes-from-cache", func(t *testing.T) {
		s := newState()
		s.observe(mdnsT0, mdnsObsOf("b1", "10.0.0.2", realTXT, 120))
		newer := mdnsAdvert(t, "b1", realKey, nil, mdnsT0)
		newer.Capacity.RunningBuilds = 5
		if err := wire.Sign(newer, fleet, mdnsT0.Add(time.Second)); err != nil {
			t.Fatal(err)
		}
		o := mdnsObsOf("b1", "10.0.0.2", mdnsTXT(t, newer), 120)
		o.hasSRV, o.port, o.addrs = false, 0, nil
		s.observe(mdnsT0.Add(time.Second), o)
		if c := s.entries[realFP]; c == nil || c.cand.Advert.Capacity.RunningBuilds != 5 || c.cand.Address != "10.0.0.2" {
			t.Fatalf("TXT-only update not applied: %+v", c)
		}
	})

	t.Run("initial-empty-snapshot-only-when-forced", func(t *testing.T) {
		s := newState()
		if _, ok := s.snapshot(false); ok {
			t.Error("emitted an empty set unasked")
		}
		if snap, ok := s.snapshot(true); !ok || snap.Source != "mdns" {
			t.Error("did not emit the first (empty) set when forced")
		}
		if _, ok := s.snapshot(true); ok {
			t.Error("forced emit repeated")
		}
	})
}

func mdnsFingerprint(t testing.TB, hostKey string) string {
	t.Helper()
	tr := decideTrust(&wire.Advert{HostKey: hostKey}, "x", nil, nil, mdnsT0, time.Minute)
	if tr.fp == "" {
		t.Fatalf("no fingerprint for %q", hostKey)
	}
	return tr.fp
}

// TestMDNSStateRekey: a builder re-keyed (a newer signed advert naming a
// new host key) retires its old key at once, and the last advert from
// before the re-key, replayed from anywhere by whoever holds the old key,
// is refused with a reason, while a fresh signed advert may still name
// the old key again (a deliberate roll-back).
func TestMDNSStateRekey(t *testing.T) {
	fleet := mdnsFleetKey(t)
	oldKey, newKey := mdnsHostKey(t), mdnsHostKey(t)
	oldFP, newFP := "mdns:"+mdnsFingerprint(t, oldKey), "mdns:"+mdnsFingerprint(t, newKey)
	s := newMDNSState([]wire.TrustKey{fleet.TrustKey()}, nil, wire.DefaultMaxAge, 120*time.Second, 8, 8)
	before := mdnsTXT(t, mdnsAdvert(t, "b3", oldKey, fleet, mdnsT0))
	s.observe(mdnsT0, mdnsObsOf("b3", "10.0.0.3", before, 120))
	if c := s.entries[oldFP]; c == nil || !c.cand.Trusted {
		t.Fatalf("b3 with its first key not trusted: %+v", c)
	}

	t1 := mdnsT0.Add(10 * time.Second)
	s.observe(t1, mdnsObsOf("b3", "10.0.0.3", mdnsTXT(t, mdnsAdvert(t, "b3", newKey, fleet, t1)), 120))
	snap, _ := s.snapshot(true)
	if keys := mdnsKeys(snap); len(keys) != 1 || keys[0] != newFP {
		t.Fatalf("after the re-key the candidates are %v, want only the new key %s", keys, newFP)
	}

	// The replay: the old advert, still within its max age, from the
	// attacker's address.
	t2 := t1.Add(5 * time.Second)
	s.observe(t2, mdnsObsOf("b3", "10.0.0.66", before, 120))
	snap, _ = s.snapshot(true)
	var refused *discover.Candidate
	for i, c := range snap.Candidates {
		if c.Key == oldFP {
			t.Fatalf("the replayed advert with the old key is trusted again: %+v", c)
		}
		if c.Address == "10.0.0.66" {
			refused = &snap.Candidates[i]
		}
	}
	if refused == nil || refused.Trusted || refused.TrustReason != "superseded host key" || !strings.Contains(refused.Problem, "re-key") || refused.Name != "b3" {
		t.Fatalf("replayed advert listed as %+v; want b3, untrusted, superseded, with the reason", refused)
	}
	mdnsCandidate(t, snap, newFP) // the real b3 stays

	// A fresh signed advert naming the old key again wins: the fleet key
	// holder rolled back.
	t3 := t2.Add(5 * time.Second)
	s.observe(t3, mdnsObsOf("b3", "10.0.0.3", mdnsTXT(t, mdnsAdvert(t, "b3", oldKey, fleet, t3)), 120))
	snap, _ = s.snapshot(true)
	if c := mdnsCandidate(t, snap, oldFP); !c.Trusted {
		t.Fatalf("a fresh signed advert naming the old key is not trusted: %+v", c)
	}
	for _, c := range snap.Candidates {
		if c.Key == newFP {
			t.Fatalf("the key rolled back from is still a candidate: %+v", c)
		}
	}

	// Past the max age after the re-keys, the record goes (any advert
	// from before them is stale by then anyway).
	s.expire(t3.Add(wire.DefaultMaxAge))
	if len(s.retired) != 0 {
		t.Fatalf("retired keeps %d keys past their max age", len(s.retired))
	}
}

// TestMDNSStatePartial: snapshots are Partial until the first query round
// ends; then one snapshot that is not Partial goes out even if the set is
// unchanged, so the client knows the source has settled.
func TestMDNSStatePartial(t *testing.T) {
	fleet := mdnsFleetKey(t)
	s := newMDNSState([]wire.TrustKey{fleet.TrustKey()}, nil, wire.DefaultMaxAge, 120*time.Second, 8, 8)
	s.observe(mdnsT0, mdnsObsOf("b1", "10.0.0.2", mdnsTXT(t, mdnsAdvert(t, "b1", mdnsHostKey(t), fleet, mdnsT0)), 120))
	snap, ok := s.snapshot(false)
	if !ok || !snap.Partial || len(snap.Candidates) != 1 {
		t.Fatalf("first snapshot before the round ended: ok=%v %+v, want emitted and Partial", ok, snap)
	}
	snap, ok = s.snapshot(true)
	if !ok || snap.Partial || len(snap.Candidates) != 1 {
		t.Fatalf("at the round's end: ok=%v %+v, want an unchanged set emitted, not Partial", ok, snap)
	}
	if _, ok := s.snapshot(true); ok {
		t.Fatal("settled snapshot repeated")
	}
}

// TestMDNSStateRekeyBounded: the record of retired keys stays bounded
// however many re-keys arrive.
func TestMDNSStateRekeyBounded(t *testing.T) {
	fleet := mdnsFleetKey(t)
	s := newMDNSState([]wire.TrustKey{fleet.TrustKey()}, nil, wire.DefaultMaxAge, 120*time.Second, 2, 2)
	for i := range 20 {
		at := mdnsT0.Add(time.Duration(i) * time.Second)
		s.observe(at, mdnsObsOf("b1", "10.0.0.2", mdnsTXT(t, mdnsAdvert(t, "b1", mdnsHostKey(t), fleet, at)), 120))
	}
	if len(s.retired) > 8 || len(s.retired) == 0 {
		t.Fatalf("retired holds %d keys after 19 re-keys, want 1 to 8 (4 × maxEntries)", len(s.retired))
	}
}

// TestMDNSStateSameHostnameTwoBuilders: two builders that share a
// hostname (NixOS machines left at "nixos") but not an address keep
// both their keys however their re-signs interleave.
func TestMDNSStateSameHostnameTwoBuilders(t *testing.T) {
	fleet := mdnsFleetKey(t)
	s := newMDNSState([]wire.TrustKey{fleet.TrustKey()}, nil, wire.DefaultMaxAge, 120*time.Second, 8, 8)
	ka, kb := mdnsHostKey(t), mdnsHostKey(t)
	fa, fb := "mdns:"+mdnsFingerprint(t, ka), "mdns:"+mdnsFingerprint(t, kb)
	for i := range 6 {
		at := mdnsT0.Add(time.Duration(i) * 30 * time.Second)
		key, addr := ka, "10.0.0.2"
		if i%2 == 1 {
			key, addr = kb, "10.0.0.3"
		}
		s.observe(at, mdnsObsOf("nixos", addr, mdnsTXT(t, mdnsAdvert(t, "nixos", key, fleet, at)), 120))
	}
	snap, _ := s.snapshot(true)
	if a, b := mdnsCandidate(t, snap, fa), mdnsCandidate(t, snap, fb); !a.Trusted || !b.Trusted {
		t.Fatalf("two builders named nixos: %+v, %+v; want both trusted", a, b)
	}
}
