//go:build !linux

package health

import (
	"net"
	"time"
)

// keepaliveUserTimeout is only used in messages off Linux.
const keepaliveUserTimeout = time.Second

// watchTCP is Linux-only (TCP_USER_TIMEOUT); elsewhere checks ping.
func watchTCP(net.Conn) bool { return false }
