//go:build !linux && !darwin

package mdns

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
)

// mdnsListener is for Linux and macOS only (it relies on binding to the
// group address and per-socket multicast membership).
type mdnsListener struct{}

func listenMDNS([]*net.Interface) (*mdnsListener, error) {
	return nil, errors.New("the mdns listener is only implemented on linux")
}

func (*mdnsListener) start(context.Context, *sync.WaitGroup, chan<- mdnsEvent, *slog.Logger) {}

func (*mdnsListener) close() {}
