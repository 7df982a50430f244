package mdns

import (
	"crypto/ed25519"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nixrb-discover/nixrb-discover/wire"
	"golang.org/x/crypto/ssh"
)

// mdnsFuzzFleet is a fixed fleet key, so that seeds can carry signatures
// the fuzz target trusts.
func mdnsFuzzFleet() *wire.SigningKey {
	priv := ed25519.NewKeyFromSeed([]byte("nixrb-discover mdns fuzz fleet!!"))
	return &wire.SigningKey{KeyID: wire.KeyID(priv.Public().(ed25519.PublicKey)), Private: priv}
}

// mdnsFuzzHostKey is a fixed host key, pinned for b1 in the fuzz target.
func mdnsFuzzHostKey(seed string) string {
	priv := ed25519.NewKeyFromSeed([]byte(seed))
	sp, _ := ssh.NewPublicKey(priv.Public())
	return wire.CanonicalHostKey(sp)
}

// mdnsFuzzSeeds are real packets: an announcement of a signed advert, of
// an unsigned one, a goodbye, a TXT-only update and a query; and the
// hostile ones of the security review (issue 17): an instance name with
// escape sequences, a newline and shell syntax; an unsigned advert for
// pinned b1 with its key, draining, TTL 2^32-1; a fleet-signed advert for
// b1 with another key under instance zzz.
func mdnsFuzzSeeds(t testing.TB) map[string][]byte {
	fleet := mdnsFuzzFleet()
	hk := mdnsFuzzHostKey("nixrb-discover mdns fuzz host!!!")
	signed := mdnsTXT(t, mdnsAdvert(t, "b1", hk, fleet, mdnsT0))
	unsigned := mdnsTXT(t, mdnsAdvert(t, "b1", hk, nil, mdnsT0))
	drain := mdnsAdvert(t, "b1", hk, nil, mdnsT0)
	drain.Draining = true
	draining := mdnsTXT(t, drain)
	otherKey := mdnsTXT(t, mdnsAdvert(t, "b1", mdnsFuzzHostKey("nixrb-discover mdns fuzz other!!"), fleet, mdnsT0))
	svc := mdnsServiceName()
	inst := "b1." + svc
	named := func(label string, ttl uint32, txt []string) []dns.RR {
		in := label + "." + svc
		return []dns.RR{
			&dns.PTR{Hdr: dns.RR_Header{Name: svc, Rrtype: dns.TypePTR, Class: dns.ClassINET, Ttl: ttl}, Ptr: in},
			&dns.SRV{Hdr: dns.RR_Header{Name: in, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: ttl}, Port: 22, Target: "b1.local."},
			&dns.A{Hdr: dns.RR_Header{Name: "b1.local.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl}, A: net.IPv4(10, 0, 0, 2)},
			&dns.TXT{Hdr: dns.RR_Header{Name: in, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: ttl}, Txt: txt},
		}
	}
	records := func(ttl uint32, txt []string) []dns.RR {
		h := func(name string, typ uint16, flush uint16) dns.RR_Header {
			return dns.RR_Header{Name: name, Rrtype: typ, Class: dns.ClassINET | flush, Ttl: ttl}
		}
		return []dns.RR{
			&dns.PTR{Hdr: h(svc, dns.TypePTR, 0), Ptr: inst},
			&dns.SRV{Hdr: h(inst, dns.TypeSRV, 1<<15), Port: 22, Target: "b1.local."},
			&dns.A{Hdr: h("b1.local.", dns.TypeA, 1<<15), A: net.IPv4(10, 0, 0, 2)},
			&dns.AAAA{Hdr: h("b1.local.", dns.TypeAAAA, 1<<15), AAAA: net.ParseIP("fe80::1")},
			&dns.TXT{Hdr: h(inst, dns.TypeTXT, 1<<15), Txt: txt},
		}
	}
	pack := func(m *dns.Msg) []byte {
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	resp := func(rrs []dns.RR) []byte {
		return pack(&dns.Msg{MsgHdr: dns.MsgHdr{Response: true, Authoritative: true}, Compress: true, Answer: rrs})
	}
	q := new(dns.Msg)
	q.SetQuestion(svc, dns.TypePTR)
	return map[string][]byte{
		"announce-signed":   resp(records(120, signed)),
		"announce-unsigned": resp(records(120, unsigned)),
		"goodbye":           resp(records(0, signed)),
		"txt-only":          resp(records(120, signed)[4:]),
		"query":             pack(q),
		"hostile-instance":  resp(named(`b1\027[2K\027[1A\027[32mok\ $(touch\ X)\010`, 120, unsigned)),
		"ttl-max-draining":  resp(named("b1", ^uint32(0), draining)),
		"signed-other-key":  resp(named("zzz", 120, otherKey)),
	}
}

// TestMDNSFuzzSeedsUpToDate rewrites testdata/fuzz/FuzzHandlePacket when
// NRBD_UPDATE_SEEDS=1, and otherwise checks the files are there.
func TestMDNSFuzzSeedsUpToDate(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzHandlePacket")
	for name, b := range mdnsFuzzSeeds(t) {
		path := filepath.Join(dir, name)
		if os.Getenv("NRBD_UPDATE_SEEDS") == "1" {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, fmt.Appendf(nil, "go test fuzz v1\n[]byte(%q)\n", b), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if _, err := os.Stat(path); err != nil {
			t.Errorf("seed %s missing (NRBD_UPDATE_SEEDS=1 go test -run TestMDNSFuzzSeedsUpToDate ./discover): %v", name, err)
		}
	}
}

// FuzzHandlePacket feeds arbitrary packets through the listener's parser
// into the source's state, checking its bounds and key rules.
func FuzzHandlePacket(f *testing.F) {
	for _, b := range mdnsFuzzSeeds(f) {
		f.Add(b)
	}
	fleet := mdnsFuzzFleet()
	pinned := mdnsFuzzHostKey("nixrb-discover mdns fuzz host!!!")
	pins := &Pins{}
	if err := pins.AddFlag("b1=" + pinned); err != nil {
		f.Fatal(err)
	}
	from := &net.UDPAddr{IP: net.IPv4(10, 0, 0, 66), Port: 5353}
	f.Fuzz(func(t *testing.T, b []byte) {
		const bound = 4
		s := newMDNSState([]wire.TrustKey{fleet.TrustKey()}, pins, wire.DefaultMaxAge, 120*time.Second, bound, bound)
		for i := range 3 { // the same packet thrice, as announcements repeat
			for _, o := range handleMDNSPacket(b, from, "veth0") {
				if len(o.txt) > wire.MaxTXTStrings || len(o.addrs) > maxAddrsPerInstance {
					t.Fatalf("unbounded observation: %d txt, %d addrs", len(o.txt), len(o.addrs))
				}
				s.observe(mdnsT0.Add(time.Duration(i)*time.Second), o)
			}
		}
		if len(s.entries) > bound {
			t.Fatalf("%d entries, more than the bound %d", len(s.entries), bound)
		}
		for k, e := range s.entries {
			if e.expires.After(mdnsT0.Add(2*time.Second + maxMDNSTTL)) {
				t.Fatalf("%s held until %v, past the TTL cap %v", k, e.expires, maxMDNSTTL)
			}
		}
		snap, _ := s.snapshot(true)
		for i, c := range snap.Candidates {
			if i > 0 && snap.Candidates[i-1].Key >= c.Key {
				t.Fatalf("keys not sorted and unique: %v", mdnsKeys(snap))
			}
			if c.Trusted != strings.HasPrefix(c.Key, "mdns:SHA256:") || !c.Trusted && !strings.HasPrefix(c.Key, "mdns-untrusted:") {
				t.Fatalf("key %s for trusted=%v", c.Key, c.Trusted)
			}
			if c.Trusted && c.Advert == nil {
				t.Fatalf("trusted candidate without advert: %+v", c)
			}
			if c.Trusted && c.Advert.HostKey != pinned && (strings.EqualFold(c.Advert.Hostname, "b1") || strings.EqualFold(c.Name, "b1")) {
				t.Fatalf("b1 is pinned to another key, yet trusted: %+v", c)
			}
			if strings.Contains(c.TrustHint, "--pin") && !strings.HasPrefix(c.TrustHint, "--pin '") {
				t.Fatalf("pin hint is not shell-quoted: %q", c.TrustHint)
			}
			if h := c.TrustHint; strings.ContainsFunc(h, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
				t.Fatalf("control character in the hint %q", h)
			}
		}
		if len(b) > maxMDNSPacket && len(snap.Candidates) > 0 {
			t.Fatal("oversized packet accepted")
		}
	})
}

func TestHandlePacketSeeds(t *testing.T) {
	seeds := mdnsFuzzSeeds(t)
	from := &net.UDPAddr{IP: net.IPv4(10, 0, 0, 2), Port: 5353}
	s := newMDNSState([]wire.TrustKey{mdnsFuzzFleet().TrustKey()}, nil, wire.DefaultMaxAge, 120*time.Second, 8, 8)
	for _, o := range handleMDNSPacket(seeds["announce-signed"], from, "veth0") {
		if o.addrs[1].Zone() != "veth0" {
			t.Errorf("link-local AAAA without the interface zone: %v", o.addrs)
		}
		s.observe(mdnsT0, o)
	}
	snap, _ := s.snapshot(false)
	if len(snap.Candidates) != 1 || !snap.Candidates[0].Trusted || snap.Candidates[0].Address != "10.0.0.2" {
		t.Fatalf("signed announcement gave %+v", snap.Candidates)
	}
	for _, o := range handleMDNSPacket(seeds["goodbye"], from, "veth0") {
		s.observe(mdnsT0, o)
	}
	snap, _ = s.snapshot(false)
	if len(snap.Candidates) != 1 || len(snap.Recheck) != 1 || snap.Recheck[0] != snap.Candidates[0].Key {
		t.Fatalf("goodbye gave %+v, recheck %v", snap.Candidates, snap.Recheck)
	}
	if obs := handleMDNSPacket(seeds["announce-signed"], &net.UDPAddr{IP: from.IP, Port: 40000}, "veth0"); obs != nil {
		t.Error("accepted a response whose source port is not 5353")
	}
	if obs := handleMDNSPacket(seeds["query"], from, "veth0"); obs != nil {
		t.Error("took a query for a response")
	}
}
