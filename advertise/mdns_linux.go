package advertise

import (
	"github.com/nixrb-discover/nixrb-discover/internal/mdnsnet"

	"fmt"
	"net"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// openAnnouncers opens the sockets announcements and goodbyes leave from.
// RFC 6762 requires source port 5353, so each socket is bound to the mDNS
// group address (not the wildcard address, as Go's net package would do:
// then it would take unicast packets for port 5353 away from other mDNS
// programs on the host) with SO_REUSEADDR, IP_MULTICAST_ALL off and no
// group joined, so it receives nothing. Its multicast interface is ifi and
// its hop limit 255 (RFC 6762 section 11). v6 is nil when the interface has
// no usable IPv6.
func openAnnouncers(ifi *net.Interface) (v4, v6 net.PacketConn, err error) {
	c4, err := mdnsnet.BindGroup(unix.AF_INET, &unix.SockaddrInet4{Port: 5353, Addr: [4]byte{224, 0, 0, 251}})
	if err != nil {
		return nil, nil, fmt.Errorf("ipv4 socket: %w", err)
	}
	p4 := ipv4.NewPacketConn(c4)
	if err := p4.SetMulticastInterface(ifi); err != nil {
		c4.Close()
		return nil, nil, fmt.Errorf("ipv4 multicast interface: %w", err)
	}
	_ = p4.SetMulticastTTL(255)
	group6 := [16]byte{0xff, 0x02, 15: 0xfb}
	c6, err := mdnsnet.BindGroup(unix.AF_INET6, &unix.SockaddrInet6{Port: 5353, Addr: group6, ZoneId: uint32(ifi.Index)})
	if err != nil {
		return c4, nil, nil // no IPv6 here: announce on IPv4 only
	}
	p6 := ipv6.NewPacketConn(c6)
	if err := p6.SetMulticastInterface(ifi); err != nil {
		c6.Close()
		return c4, nil, nil
	}
	_ = p6.SetMulticastHopLimit(255)
	return c4, c6, nil
}
