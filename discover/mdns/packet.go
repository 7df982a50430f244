package mdns

import (
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/miekg/dns"

	"github.com/nixrb-discover/nixrb-discover/wire"
)

// Input bounds for mDNS packets.
const (
	// maxMDNSPacket is the largest mDNS packet we parse (RFC 6762 section
	// 17: 9000 bytes); larger ones are dropped.
	maxMDNSPacket = 9000
	// maxInstancesPerPacket bounds the instances taken from one packet.
	maxInstancesPerPacket = 32
	// maxAddrsPerInstance bounds the addresses kept per instance.
	maxAddrsPerInstance = 8
)

// mdnsObs is what one packet (or one query answer) says about one
// service instance.
type mdnsObs struct {
	instance string     // instance label, unescaped ("b1")
	src      netip.Addr // packet source; for a query answer, its address
	iface    string     // interface it arrived on
	hasSRV   bool
	port     uint16
	hasTXT   bool
	txt      []string
	addrs    []netip.Addr // A/AAAA of the SRV target
	ttl      uint32       // smallest TTL of its records
	ttlKnown bool         // false for hashicorp/mdns query answers
	goodbye  bool         // a record of it had TTL 0
}

// mdnsServiceName is the service type's fully qualified name.
func mdnsServiceName() string { return wire.MDNSService + "." + wire.MDNSDomain }

// parseMDNSResponse extracts the _nix-builder._tcp instances an mDNS
// response describes. It ignores queries, other services and malformed
// records, and returns at most maxInstancesPerPacket instances.
func parseMDNSResponse(m *dns.Msg, src netip.Addr, iface string) []mdnsObs {
	if !m.Response || m.Opcode != dns.OpcodeQuery || m.Rcode != dns.RcodeSuccess {
		return nil
	}
	service := mdnsServiceName()
	byName := map[string]*mdnsObs{}
	var order []string
	get := func(fqdn string) *mdnsObs {
		key := strings.ToLower(fqdn)
		if o, ok := byName[key]; ok {
			return o
		}
		if len(order) >= maxInstancesPerPacket {
			return nil
		}
		inst, ok := instanceLabel(fqdn, service)
		if !ok {
			return nil
		}
		o := &mdnsObs{instance: inst, src: src, iface: iface, ttl: ^uint32(0), ttlKnown: true}
		byName[key] = o
		order = append(order, key)
		return o
	}
	seen := func(o *mdnsObs, ttl uint32) {
		o.ttl = min(o.ttl, ttl)
		if ttl == 0 {
			o.goodbye = true
		}
	}
	hostAddrs := map[string][]netip.Addr{}
	targets := map[*mdnsObs]string{}
	for _, rr := range append(m.Answer, m.Extra...) {
		h := rr.Header()
		if h.Class&^(1<<15) != dns.ClassINET {
			continue
		}
		switch rr := rr.(type) {
		case *dns.PTR:
			if strings.EqualFold(h.Name, service) {
				if o := get(rr.Ptr); o != nil {
					seen(o, h.Ttl)
				}
			}
		case *dns.SRV:
			if o := get(h.Name); o != nil {
				seen(o, h.Ttl)
				o.hasSRV, o.port = true, rr.Port
				targets[o] = strings.ToLower(rr.Target)
			}
		case *dns.TXT:
			if o := get(h.Name); o != nil {
				seen(o, h.Ttl)
				if len(rr.Txt) <= wire.MaxTXTStrings {
					o.hasTXT, o.txt = true, rr.Txt
				}
			}
		case *dns.A:
			if a, ok := netip.AddrFromSlice(rr.A.To4()); ok && h.Ttl > 0 {
				k := strings.ToLower(h.Name)
				if len(hostAddrs[k]) < maxAddrsPerInstance {
					hostAddrs[k] = append(hostAddrs[k], a)
				}
			}
		case *dns.AAAA:
			if a, ok := netip.AddrFromSlice(rr.AAAA.To16()); ok && h.Ttl > 0 {
				if a.IsLinkLocalUnicast() {
					a = a.WithZone(iface)
				}
				k := strings.ToLower(h.Name)
				if len(hostAddrs[k]) < maxAddrsPerInstance {
					hostAddrs[k] = append(hostAddrs[k], a)
				}
			}
		}
	}
	out := make([]mdnsObs, 0, len(order))
	for _, k := range order {
		o := byName[k]
		o.addrs = hostAddrs[targets[o]]
		out = append(out, *o)
	}
	return out
}

// instanceLabel returns the unescaped instance label of an instance name
// "<label>.<service>", if fqdn is one.
func instanceLabel(fqdn, service string) (string, bool) {
	if len(fqdn) <= len(service)+1 || !strings.EqualFold(fqdn[len(fqdn)-len(service):], service) {
		return "", false
	}
	esc := fqdn[:len(fqdn)-len(service)]
	if !strings.HasSuffix(esc, ".") || strings.HasSuffix(esc, `\.`) && !strings.HasSuffix(esc, `\\.`) {
		return "", false
	}
	esc = esc[:len(esc)-1]
	var b strings.Builder
	for i := 0; i < len(esc); i++ {
		c := esc[i]
		switch {
		case c == '.':
			return "", false // more than one label before the service
		case c != '\\':
			b.WriteByte(c)
		case i+3 < len(esc) && isDigits(esc[i+1:i+4]):
			n, _ := strconv.Atoi(esc[i+1 : i+4])
			if n > 255 {
				return "", false
			}
			b.WriteByte(byte(n))
			i += 3
		case i+1 < len(esc):
			b.WriteByte(esc[i+1])
			i++
		default:
			return "", false
		}
	}
	if b.Len() == 0 || b.Len() > 63 {
		return "", false
	}
	return b.String(), true
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return len(s) > 0
}

// handleMDNSPacket parses one received packet; oversized or malformed
// packets give nothing.
func handleMDNSPacket(b []byte, from net.Addr, iface string) []mdnsObs {
	if len(b) > maxMDNSPacket || len(b) < 12 {
		return nil
	}
	var src netip.Addr
	if u, ok := from.(*net.UDPAddr); ok {
		if u.Port != 5353 {
			return nil // RFC 6762 section 6: responses come from port 5353
		}
		src = u.AddrPort().Addr().Unmap()
	}
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		return nil
	}
	return parseMDNSResponse(m, src, iface)
}
