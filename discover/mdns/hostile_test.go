package mdns

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/wire"
)

// Hostile cases from the security review (issue 17): what one packet from
// anyone on the link must not achieve.

// TestMDNSTTLIsCapped: a TTL of 2^32-1 s (~136 years) is held for at most
// maxMDNSTTL (75 minutes, RFC 6762 section 10), for a pinned advert as for
// an untrusted one.
func TestMDNSTTLIsCapped(t *testing.T) {
	hk := mdnsHostKey(t)
	pins := &Pins{}
	if err := pins.AddFlag("b1=" + hk); err != nil {
		t.Fatal(err)
	}
	s := newMDNSState(nil, pins, wire.DefaultMaxAge, 120*time.Second, 8, 8)
	s.observe(mdnsT0, mdnsObsOf("b1", "10.0.0.2", mdnsTXT(t, mdnsAdvert(t, "b1", hk, nil, mdnsT0)), ^uint32(0)))
	s.observe(mdnsT0, mdnsObsOf("rogue", "10.0.0.66", mdnsTXT(t, mdnsAdvert(t, "rogue", mdnsHostKey(t), nil, mdnsT0)), ^uint32(0)))
	if len(s.entries) != 2 {
		t.Fatalf("%d entries, want the pinned and the untrusted one", len(s.entries))
	}
	for k, e := range s.entries {
		if e.expires.After(mdnsT0.Add(maxMDNSTTL)) {
			t.Errorf("%s expires %v after it was heard, more than the cap %v", k, e.expires.Sub(mdnsT0), maxMDNSTTL)
		}
	}
	s.expire(mdnsT0.Add(maxMDNSTTL))
	if len(s.entries) != 0 {
		t.Fatalf("%d entries left %v after a TTL of 2^32-1 s", len(s.entries), maxMDNSTTL)
	}
}

// TestMDNSPinnedFirstSenderCannotLockOut: a rogue sends first an unsigned
// advert for pinned b1 with b1's real (public) host key, draining, TTL
// 2^32-1, the A record of the real builder, from its own address. The
// real builder, announcing itself after, wins; the rogue, sending again,
// does not take it back.
func TestMDNSPinnedFirstSenderCannotLockOut(t *testing.T) {
	hk := mdnsHostKey(t)
	pins := &Pins{}
	if err := pins.AddFlag("b1=" + hk); err != nil {
		t.Fatal(err)
	}
	key := "mdns:" + mdnsFingerprint(t, hk)
	s := newMDNSState(nil, pins, wire.DefaultMaxAge, 120*time.Second, 8, 8)
	drain := mdnsAdvert(t, "b1", hk, nil, mdnsT0)
	drain.Draining = true
	rogue := mdnsObsOf("b1", "10.0.0.66", mdnsTXT(t, drain), ^uint32(0))
	rogue.addrs = []netip.Addr{netip.MustParseAddr("10.0.0.2")} // the real builder's address
	s.observe(mdnsT0, rogue)
	if e := s.entries[key]; e == nil || !e.cand.Advert.Draining || e.cand.Address != "10.0.0.2" {
		t.Fatalf("the rogue's pinned advert is not held as the attack needs: %+v", e)
	}

	s.observe(mdnsT0.Add(time.Second), mdnsObsOf("b1", "10.0.0.2", mdnsTXT(t, mdnsAdvert(t, "b1", hk, nil, mdnsT0)), 120))
	e := s.entries[key]
	if e == nil || e.cand.Advert.Draining || e.src != netip.MustParseAddr("10.0.0.2") {
		t.Fatalf("the real builder announcing itself after the rogue does not win: %+v", e)
	}
	s.observe(mdnsT0.Add(2*time.Second), rogue)
	if e := s.entries[key]; e.cand.Advert.Draining || e.src != netip.MustParseAddr("10.0.0.2") {
		t.Fatalf("the rogue, sending again, took b1 back: %+v", e)
	}
}

// TestMDNSSignedAdvertCannotBypassHostnamePin: an advert signed by the
// fleet key for hostname b1 with an unpinned host key, while b1 is pinned
// to another key, under another instance name, is not trusted (and does
// not appear as a trusted b1).
func TestMDNSSignedAdvertCannotBypassHostnamePin(t *testing.T) {
	fleet := mdnsFleetKey(t)
	pinned, other := mdnsHostKey(t), mdnsHostKey(t)
	pins := &Pins{}
	if err := pins.AddFlag("b1=" + pinned); err != nil {
		t.Fatal(err)
	}
	s := newMDNSState([]wire.TrustKey{fleet.TrustKey()}, pins, wire.DefaultMaxAge, 120*time.Second, 8, 8)
	s.observe(mdnsT0, mdnsObsOf("zzz", "10.0.0.66", mdnsTXT(t, mdnsAdvert(t, "b1", other, fleet, mdnsT0)), 120))
	snap, _ := s.snapshot(true)
	if len(snap.Candidates) != 1 {
		t.Fatalf("candidates %v", mdnsKeys(snap))
	}
	c := snap.Candidates[0]
	if c.Trusted || !strings.HasPrefix(c.Key, "mdns-untrusted:") || c.TrustReason != "host key differs from the key pinned for b1" {
		t.Fatalf("signed advert for pinned b1 with another key, under instance zzz: trusted=%v key=%s reason=%q", c.Trusted, c.Key, c.TrustReason)
	}
	if c.TrustHint != "" {
		t.Errorf("hint %q offers to pin a key that contradicts the pin for b1", c.TrustHint)
	}
	// The real b1, signed, with its pinned key, under its own name: trusted.
	s.observe(mdnsT0, mdnsObsOf("b1", "10.0.0.2", mdnsTXT(t, mdnsAdvert(t, "b1", pinned, fleet, mdnsT0)), 120))
	snap, _ = s.snapshot(true)
	if c := mdnsCandidate(t, snap, "mdns:"+mdnsFingerprint(t, pinned)); !c.Trusted || c.Name != "b1" {
		t.Fatalf("the real b1: %+v", c)
	}
}

// TestMDNSPinHintOnlyForPlainNames: the `--pin` hint is offered only for
// an instance name that is one DNS label, and is one shell word; a name
// with escape sequences, newlines or shell syntax gets none.
func TestMDNSPinHintOnlyForPlainNames(t *testing.T) {
	hk := mdnsHostKey(t)
	for _, c := range []struct {
		instance, want string
	}{
		{"b1", "--pin 'b1=" + hk + "'"},
		{"Builder-07", "--pin 'Builder-07=" + hk + "'"},
		{"b1\x1b[2K\x1b[1A\x1b[32mok $(touch X)\n", ""},
		{"b1'; touch X; '", ""},
		{"b1 b2", ""},
		{"-rf", ""},
		{"b1\u202e", ""},
	} {
		tr := decideTrust(mdnsAdvert(t, "b1", hk, nil, mdnsT0), c.instance, nil, nil, mdnsT0, wire.DefaultMaxAge)
		if tr.hint != c.want {
			t.Errorf("instance %q: hint %q, want %q", c.instance, tr.hint, c.want)
		}
	}
	if got, want := shellQuote("a'b"), `'a'\''b'`; got != want {
		t.Errorf("shellQuote(a'b) = %s, want %s", got, want)
	}
}
