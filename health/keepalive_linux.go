package health

import (
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// Kernel TCP keepalive on the cached SSH connection: the kernel sends an
// empty probe after keepaliveIdle of silence and every keepaliveInterval
// after, and drops the connection when nothing is acknowledged for
// keepaliveUserTimeout. No process wakes up while the builder answers, so
// an idle client watches every builder for almost no CPU, and a builder
// whose packets are dropped is noticed within about a second.
const (
	keepaliveIdle        = 300 * time.Millisecond
	keepaliveInterval    = 200 * time.Millisecond
	keepaliveUserTimeout = time.Second
)

// watchTCP turns on kernel keepalive for conn; false if conn is not a
// kernel TCP connection (a tsnet connection, say) or the kernel refused.
func watchTCP(conn net.Conn) bool {
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		return false
	}
	err := tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: keepaliveIdle, Interval: keepaliveInterval, Count: 4})
	if err != nil {
		return false
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return false
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(keepaliveUserTimeout.Milliseconds()))
	}); err != nil || serr != nil {
		return false
	}
	return true
}
