//go:build linux || darwin

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
// 5353 (sa), sharing the port with the system's mDNS daemon (avahi on
// Linux, mDNSResponder on macOS: see [groupOptions]) and receiving only
// multicast groups it joins itself, so it never hears traffic of
// interfaces it was not asked to use.
func BindGroup(family int, sa unix.Sockaddr) (*net.UDPConn, error) {
	fd, err := unix.Socket(family, unix.SOCK_DGRAM, unix.IPPROTO_UDP)
	if err != nil {
		return nil, fmt.Errorf("mdns socket: %w", err)
	}
	// Not SOCK_CLOEXEC|SOCK_NONBLOCK in the socket call: macOS has
	// neither flag.
	unix.CloseOnExec(fd)
	err = unix.SetNonblock(fd, true)
	for _, o := range groupOptions(family) {
		if err == nil {
			err = unix.SetsockoptInt(fd, o.level, o.name, o.value)
			if err != nil {
				err = fmt.Errorf("%s: %w", o.what, err)
			}
		}
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

// sockOpt is one setsockopt of an mDNS group socket.
type sockOpt struct {
	what               string
	level, name, value int
}
