package advertise

import (
	"log/slog"
	"net"
	"strings"
	"sync"

	"github.com/hashicorp/mdns"
	"github.com/miekg/dns"
	"github.com/nixrb-discover/nixrb-discover/wire"
)

// cacheFlush is the mDNS cache-flush bit of a record's class (RFC 6762
// section 10.2), set on unique records (SRV, TXT, A, AAAA) in announcements.
const cacheFlush = 1 << 15

// dnssdServices is the DNS-SD service type enumeration name.
const dnssdServices = "_services._dns-sd._udp." + wire.MDNSDomain

// mdnsZone is a hashicorp/mdns Zone whose TXT and addresses may change
// while the server runs. It answers the service type (PTR), the instance
// (SRV, TXT, ANY; PTR too, which hashicorp/mdns's querier sends for
// incomplete entries), the host (A, AAAA) and the service enumeration.
type mdnsZone struct {
	names mdnsNames
	txt   func() []string

	mu    sync.Mutex
	addrs []net.IP
}

var _ mdns.Zone = (*mdnsZone)(nil)

func (z *mdnsZone) setAddrs(ips []net.IP) {
	z.mu.Lock()
	z.addrs = ips
	z.mu.Unlock()
}

// Records answers one question (hashicorp/mdns puts them all in the
// answer section, in this order: PTR, SRV, A, AAAA, TXT; its querier
// relies on SRV coming before the addresses).
func (z *mdnsZone) Records(q dns.Question) []dns.RR {
	n := z.names
	anyType := q.Qtype == dns.TypeANY
	switch {
	case strings.EqualFold(q.Name, n.service) && (anyType || q.Qtype == dns.TypePTR):
		return z.records(n.ttl, 0, true, true, true)
	case strings.EqualFold(q.Name, n.inst):
		switch q.Qtype {
		case dns.TypeANY, dns.TypePTR:
			return z.records(n.ttl, 0, false, true, true)
		case dns.TypeSRV:
			return z.records(n.ttl, 0, false, true, false)
		case dns.TypeTXT:
			return z.records(n.ttl, 0, false, false, true)
		}
	case strings.EqualFold(q.Name, n.host):
		var out []dns.RR
		for _, rr := range z.addrRecords(n.ttl, 0) {
			if anyType || rr.Header().Rrtype == q.Qtype {
				out = append(out, rr)
			}
		}
		return out
	case strings.EqualFold(q.Name, dnssdServices) && (anyType || q.Qtype == dns.TypePTR):
		return []dns.RR{&dns.PTR{Hdr: hdr(dnssdServices, dns.TypePTR, n.ttl, 0), Ptr: n.service}}
	}
	return nil
}

// records builds the chosen records with class flags flush on the unique
// ones.
func (z *mdnsZone) records(ttl uint32, flush uint16, ptr, srv, txt bool) []dns.RR {
	n := z.names
	var out []dns.RR
	if ptr {
		out = append(out, &dns.PTR{Hdr: hdr(n.service, dns.TypePTR, ttl, 0), Ptr: n.inst})
	}
	if srv {
		out = append(out, &dns.SRV{
			Hdr:      hdr(n.inst, dns.TypeSRV, ttl, flush),
			Priority: 0,
			Weight:   0,
			Port:     n.port,
			Target:   n.host,
		})
		out = append(out, z.addrRecords(ttl, flush)...)
	}
	if txt {
		out = append(out, &dns.TXT{Hdr: hdr(n.inst, dns.TypeTXT, ttl, flush), Txt: z.txt()})
	}
	return out
}

func (z *mdnsZone) addrRecords(ttl uint32, flush uint16) []dns.RR {
	z.mu.Lock()
	defer z.mu.Unlock()
	var out []dns.RR
	for _, ip := range z.addrs {
		if ip4 := ip.To4(); ip4 != nil {
			out = append(out, &dns.A{Hdr: hdr(z.names.host, dns.TypeA, ttl, flush), A: ip4})
		}
	}
	for _, ip := range z.addrs {
		if ip.To4() == nil && ip.To16() != nil {
			out = append(out, &dns.AAAA{Hdr: hdr(z.names.host, dns.TypeAAAA, ttl, flush), AAAA: ip})
		}
	}
	return out
}

// announcement is an unsolicited response with every record (ttl 0: a
// goodbye).
func (z *mdnsZone) announcement(ttl uint32) *dns.Msg {
	return &dns.Msg{
		MsgHdr:   dns.MsgHdr{Response: true, Authoritative: true},
		Compress: true,
		Answer:   z.records(ttl, cacheFlush, true, true, true),
	}
}

func hdr(name string, typ uint16, ttl uint32, flush uint16) dns.RR_Header {
	return dns.RR_Header{Name: name, Rrtype: typ, Class: dns.ClassINET | flush, Ttl: ttl}
}

// mdnsLink is the responder on one interface.
type mdnsLink struct {
	ifi    *net.Interface
	zone   *mdnsZone
	server *mdns.Server
	ann4   net.PacketConn // bound to 224.0.0.251:5353, sends on ifi
	ann6   net.PacketConn // bound to [ff02::fb%ifi]:5353; nil without IPv6
}

// send multicasts msg on the link (v4, and v6 when usable).
func (l *mdnsLink) send(logger *slog.Logger, msg *dns.Msg) {
	buf, err := msg.Pack()
	if err != nil {
		logger.Warn("mdns announcement does not pack", "err", err)
		return
	}
	if l.ann4 != nil {
		to := &net.UDPAddr{IP: net.IPv4(224, 0, 0, 251), Port: 5353}
		if _, err := l.ann4.WriteTo(buf, to); err != nil {
			logger.Debug("mdns announcement not sent", "iface", l.ifi.Name, "family", "ipv4", "err", err)
		}
	}
	if l.ann6 != nil {
		to := &net.UDPAddr{IP: net.ParseIP("ff02::fb"), Port: 5353, Zone: l.ifi.Name}
		if _, err := l.ann6.WriteTo(buf, to); err != nil {
			logger.Debug("mdns announcement not sent", "iface", l.ifi.Name, "family", "ipv6", "err", err)
		}
	}
}

func (l *mdnsLink) close() {
	if l.server != nil {
		_ = l.server.Shutdown()
	}
	if l.ann4 != nil {
		_ = l.ann4.Close()
	}
	if l.ann6 != nil {
		_ = l.ann6.Close()
	}
}
