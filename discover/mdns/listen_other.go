//go:build !linux

package mdns

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
)

// mdnsListener is Linux-only for now (it relies on IP_MULTICAST_ALL and
// binding to the group address).
type mdnsListener struct{}

func listenMDNS([]*net.Interface) (*mdnsListener, error) {
	return nil, errors.New("the mdns listener is only implemented on linux")
}

func (*mdnsListener) start(context.Context, *sync.WaitGroup, chan<- mdnsEvent, *slog.Logger) {}

func (*mdnsListener) close() {}
