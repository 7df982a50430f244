//go:build !linux

package discover

import "net"

// watchTCP is Linux-only (TCP_USER_TIMEOUT); elsewhere checks ping.
func watchTCP(net.Conn) bool { return false }
