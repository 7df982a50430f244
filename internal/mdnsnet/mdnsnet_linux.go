// Package mdnsnet holds the one piece of socket setup that both mDNS ends
// (the builder's responder and the client's listener) need.
package mdnsnet

import (
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// BindGroup makes a UDP socket bound to an mDNS group address and port
// 5353 (sa), sharing the port with other mDNS programs (SO_REUSEADDR) and
// receiving only multicast groups it joins itself (IP_MULTICAST_ALL off),
// so it never hears traffic of interfaces it was not asked to use.
func BindGroup(family int, sa unix.Sockaddr) (*net.UDPConn, error) {
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.IPPROTO_UDP)
	if err != nil {
		return nil, fmt.Errorf("mdns socket: %w", err)
	}
	opt := func(level, name, v int) {
		if err == nil {
			err = unix.SetsockoptInt(fd, level, name, v)
		}
	}
	opt(unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if family == unix.AF_INET6 {
		opt(unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1)
		opt(unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_ALL, 0)
	} else {
		opt(unix.IPPROTO_IP, unix.IP_MULTICAST_ALL, 0)
	}
	if err == nil {
		err = unix.Bind(fd, sa)
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind mdns group: %w", err)
	}
	f := os.NewFile(uintptr(fd), "mdns")
	defer f.Close()
	c, err := net.FilePacketConn(f)
	if err != nil {
		return nil, fmt.Errorf("mdns socket: %w", err)
	}
	return c.(*net.UDPConn), nil
}
