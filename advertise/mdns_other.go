//go:build !linux

package advertise

import (
	"errors"
	"net"
)

// openAnnouncers is Linux-only for now (it relies on IP_MULTICAST_ALL).
func openAnnouncers(*net.Interface) (v4, v6 net.PacketConn, err error) {
	return nil, nil, errors.New("mdns announcements are only implemented on linux")
}
