package advertise

import (
	"net"
	"testing"

	"github.com/miekg/dns"
)

func TestMDNSZoneRecords(t *testing.T) {
	r := &MDNSResponder{Hostname: "b1.lab", Port: 2222, Interfaces: []string{"x"}, TXT: []string{"v=1"}}
	names, err := r.names()
	if err != nil {
		t.Fatal(err)
	}
	z := &mdnsZone{names: names, txt: r.currentTXT}
	z.setAddrs([]net.IP{net.IPv4(10, 0, 0, 2), net.ParseIP("fe80::2")})
	types := func(rrs []dns.RR) (s string) {
		for _, rr := range rrs {
			s += dns.TypeToString[rr.Header().Rrtype] + " "
		}
		return s
	}
	for _, c := range []struct {
		name string
		q    dns.Question
		want string
	}{
		// Browsing: the service type gets everything, in the order
		// hashicorp/mdns's querier needs (SRV before the addresses).
		{"browse", dns.Question{Name: "_nix-builder._tcp.local.", Qtype: dns.TypePTR}, "PTR SRV A AAAA TXT "},
		{"browse-any-case", dns.Question{Name: "_NIX-builder._tcp.LOCAL.", Qtype: dns.TypeANY}, "PTR SRV A AAAA TXT "},
		// The instance label keeps its dot, escaped.
		{"instance-ptr", dns.Question{Name: `b1\.lab._nix-builder._tcp.local.`, Qtype: dns.TypePTR}, "SRV A AAAA TXT "},
		{"instance-srv", dns.Question{Name: `b1\.lab._nix-builder._tcp.local.`, Qtype: dns.TypeSRV}, "SRV A AAAA "},
		{"instance-txt", dns.Question{Name: `b1\.lab._nix-builder._tcp.local.`, Qtype: dns.TypeTXT}, "TXT "},
		{"host-a", dns.Question{Name: "b1.local.", Qtype: dns.TypeA}, "A "},
		{"host-aaaa", dns.Question{Name: "b1.local.", Qtype: dns.TypeAAAA}, "AAAA "},
		{"enumeration", dns.Question{Name: "_services._dns-sd._udp.local.", Qtype: dns.TypePTR}, "PTR "},
		{"other-service", dns.Question{Name: "_ssh._tcp.local.", Qtype: dns.TypePTR}, ""},
	} {
		rrs := z.Records(c.q)
		if got := types(rrs); got != c.want {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
		for _, rr := range rrs {
			if rr.Header().Ttl != 120 || rr.Header().Class != dns.ClassINET {
				t.Errorf("%s: %v: want TTL 120, class IN without cache-flush (answers may be legacy unicast)", c.name, rr)
			}
		}
	}
	if err := r.Update([]string{"v=2"}); err != nil {
		t.Fatal(err)
	}
	rrs := z.Records(dns.Question{Name: `b1\.lab._nix-builder._tcp.local.`, Qtype: dns.TypeTXT})
	if txt := rrs[0].(*dns.TXT).Txt; len(txt) != 1 || txt[0] != "v=2" {
		t.Errorf("zone TXT after Update = %q", txt)
	}
	bye := z.announcement(0)
	for _, rr := range bye.Answer {
		if rr.Header().Ttl != 0 {
			t.Errorf("goodbye record with TTL %d", rr.Header().Ttl)
		}
	}
}
