//go:build linux || darwin

package mdns

import (
	"github.com/nixrb-discover/nixrb-discover/internal/mdnsnet"

	"context"
	"fmt"
	"log/slog"
	"net"
	"sync"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// mdnsListener receives mDNS multicast (announcements, goodbyes, answers
// to anyone's queries) on the chosen interfaces only: one IPv4 socket
// joined on each of them, and one IPv6 socket per interface where IPv6
// works. Sockets are bound to the group address, not the wildcard (so
// they never take unicast for port 5353 from another mDNS program), with
// IP_MULTICAST_ALL off (so they only get the groups they joined, on the
// interfaces they joined them), and check the arrival interface anyway.
type mdnsListener struct {
	ifaces map[int]string // index -> name
	v4     *ipv4.PacketConn
	v6     []*ipv6.PacketConn
	conns  []net.PacketConn
}

func listenMDNS(ifis []*net.Interface) (*mdnsListener, error) {
	l := &mdnsListener{ifaces: map[int]string{}}
	c4, err := bindMDNSGroup(unix.AF_INET, &unix.SockaddrInet4{Port: 5353, Addr: [4]byte{224, 0, 0, 251}})
	if err != nil {
		return nil, fmt.Errorf("listen on ipv4 mdns group: %w", err)
	}
	l.conns = append(l.conns, c4)
	l.v4 = ipv4.NewPacketConn(c4)
	group4 := &net.UDPAddr{IP: net.IPv4(224, 0, 0, 251)}
	for _, ifi := range ifis {
		l.ifaces[ifi.Index] = ifi.Name
		if err := l.v4.JoinGroup(ifi, group4); err != nil {
			l.close()
			return nil, fmt.Errorf("join ipv4 mdns group on %s: %w", ifi.Name, err)
		}
	}
	if err := l.v4.SetControlMessage(ipv4.FlagInterface, true); err != nil {
		l.close()
		return nil, fmt.Errorf("ipv4 packet info: %w", err)
	}
	group6 := [16]byte{0xff, 0x02, 15: 0xfb}
	for _, ifi := range ifis {
		c6, err := bindMDNSGroup(unix.AF_INET6, &unix.SockaddrInet6{Port: 5353, Addr: group6, ZoneId: uint32(ifi.Index)})
		if err != nil {
			continue // no IPv6 on this interface: IPv4 only
		}
		p6 := ipv6.NewPacketConn(c6)
		if p6.JoinGroup(ifi, &net.UDPAddr{IP: group6[:]}) != nil || p6.SetControlMessage(ipv6.FlagInterface, true) != nil {
			c6.Close()
			continue
		}
		l.conns = append(l.conns, c6)
		l.v6 = append(l.v6, p6)
	}
	return l, nil
}

// start runs one reader goroutine per socket; they end when close is
// called.
func (l *mdnsListener) start(ctx context.Context, wg *sync.WaitGroup, events chan<- mdnsEvent, logger *slog.Logger) {
	read4 := func(b []byte) (int, int, net.Addr, error) {
		n, cm, src, err := l.v4.ReadFrom(b)
		if cm == nil {
			return n, 0, src, err
		}
		return n, cm.IfIndex, src, err
	}
	wg.Add(1)
	go l.read(ctx, wg, read4, events, logger)
	for _, p6 := range l.v6 {
		read6 := func(b []byte) (int, int, net.Addr, error) {
			n, cm, src, err := p6.ReadFrom(b)
			if cm == nil {
				return n, 0, src, err
			}
			return n, cm.IfIndex, src, err
		}
		wg.Add(1)
		go l.read(ctx, wg, read6, events, logger)
	}
}

func (l *mdnsListener) read(ctx context.Context, wg *sync.WaitGroup, readFrom func([]byte) (int, int, net.Addr, error), events chan<- mdnsEvent, logger *slog.Logger) {
	defer wg.Done()
	buf := make([]byte, maxMDNSPacket+1)
	for {
		n, ifindex, from, err := readFrom(buf)
		if err != nil {
			if ctx.Err() == nil {
				logger.Warn("mdns listener stopped", "err", err)
			}
			return
		}
		iface, ok := l.ifaces[ifindex]
		if !ok {
			continue // not one of ours
		}
		obs := handleMDNSPacket(buf[:n], from, iface)
		if len(obs) == 0 {
			continue
		}
		select {
		case events <- mdnsEvent{obs: obs}:
		case <-ctx.Done():
			return
		}
	}
}

func (l *mdnsListener) close() {
	for _, c := range l.conns {
		c.Close()
	}
}

// bindMDNSGroup is mdnsnet.BindGroup: see there.
func bindMDNSGroup(family int, sa unix.Sockaddr) (net.PacketConn, error) {
	return mdnsnet.BindGroup(family, sa)
}
