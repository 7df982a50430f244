package tailnettest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/internal/netnstest"
)

// Tailnet address ranges (CGNAT IPv4 and Tailscale's IPv6 ULA).
const (
	tailnetRange4 = "100.64.0.0/10"
	tailnetRange6 = "fd7a:115c:a1e0::/48"
)

// RouteTailnet makes the namespace of h look, to processes in it, like a
// machine where tailscaled runs as node n with its TUN: a process there
// that knows nothing of tsnet (the real client binary, unmodified) can
// connect to peers by tailnet IP or MagicDNS name.
//
//   - The IPv4 address of each of peers is local (on lo) in h, and every
//     TCP connection to it on one of ports is carried over the tailnet
//     through n.Server.Dial, so the peer sees n as the caller (WhoIs
//     works) and faults of the peer pass through.
//   - Every other tailnet address (100.64.0.0/10, fd7a:115c:a1e0::/48) is
//     routed to a link whose far end swallows packets: connecting to a
//     peer that never answers (see [Net.AddFakePeers]) times out, as it
//     does through tailscaled when the peer is unreachable.
//   - The peers' MagicDNS names resolve (an /etc/netns/<ns>/hosts, which
//     `ip netns exec`, and so [netnstest.Host.Command], bind-mounts over
//     /etc/hosts).
//
// Unlike tailscaled, a connection to a listed peer is accepted before the
// tailnet dial is made; if that dial fails the connection is closed at
// once. Everything is undone in tb.Cleanup (the namespace itself belongs
// to h's topology).
func (n *Node) RouteTailnet(tb testing.TB, h *netnstest.Host, peers []*Node, ports ...int) {
	tb.Helper()
	ip := func(args ...string) {
		tb.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		full := append([]string{"-n", h.NS}, args...)
		if out, err := exec.CommandContext(ctx, "ip", full...).CombinedOutput(); err != nil {
			tb.Fatalf("tailnettest: ip %s: %v: %s", strings.Join(full, " "), err, bytes.TrimSpace(out))
		}
	}
	// tailscale0 is a veth without ARP whose peer, up in the same
	// namespace with no address, drops whatever arrives.
	ip("link", "add", "tailscale0", "type", "veth", "peer", "name", "tssink0")
	ip("link", "set", "tssink0", "up")
	ip("link", "set", "tailscale0", "arp", "off", "up")
	ip("route", "add", tailnetRange4, "dev", "tailscale0")
	ip("-6", "route", "add", tailnetRange6, "dev", "tailscale0")

	var hosts strings.Builder
	if base, err := os.ReadFile("/etc/hosts"); err == nil {
		hosts.Write(base)
		hosts.WriteString("\n")
	}
	for _, p := range peers {
		if !p.IPv4.IsValid() {
			tb.Fatalf("tailnettest: peer %s has no IPv4 address", p.Name)
		}
		ip("addr", "add", p.IPv4.String()+"/32", "dev", "lo")
		fmt.Fprintf(&hosts, "%s %s %s\n", p.IPv4, p.FQDN, p.Name)
	}
	etc := filepath.Join("/etc/netns", h.NS)
	if err := os.MkdirAll(etc, 0o755); err != nil {
		tb.Fatalf("tailnettest: %v", err)
	}
	tb.Cleanup(func() {
		os.RemoveAll(etc)
		os.Remove(filepath.Dir(etc)) // only if no other namespace uses it
	})
	if err := os.WriteFile(filepath.Join(etc, "hosts"), []byte(hosts.String()), 0o644); err != nil {
		tb.Fatalf("tailnettest: %v", err)
	}

	var lns []net.Listener
	err := h.Do(func() error {
		for _, port := range ports {
			ln, err := net.Listen("tcp4", fmt.Sprintf("0.0.0.0:%d", port))
			if err != nil {
				return fmt.Errorf("listen on port %d in %s: %w", port, h.NS, err)
			}
			lns = append(lns, ln)
		}
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	tr := &tracker{conns: make(map[net.Conn]bool)}
	var wg sync.WaitGroup
	tb.Cleanup(func() {
		cancel()
		for _, ln := range lns {
			ln.Close()
		}
		tr.closeAll()
		wg.Wait()
	})
	if err != nil {
		tb.Fatalf("tailnettest: %v", err)
	}
	for _, ln := range lns {
		wg.Go(func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				if !tr.add(c) {
					return
				}
				wg.Go(func() { n.carry(ctx, c, tr) })
			}
		})
	}
}

// tracker holds the open connections of RouteTailnet so that cleanup can
// close them; once closed, it closes whatever is added.
type tracker struct {
	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]bool
}

// add tracks c, or closes it and reports false after closeAll.
func (t *tracker) add(c net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		c.Close()
		return false
	}
	t.conns[c] = true
	return true
}

func (t *tracker) remove(c net.Conn) {
	t.mu.Lock()
	delete(t.conns, c)
	t.mu.Unlock()
	c.Close()
}

func (t *tracker) closeAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	for c := range t.conns {
		c.Close()
	}
}

// carry dials c's destination (its local address in the namespace) over
// the tailnet and copies both ways until both sides close.
func (n *Node) carry(ctx context.Context, c net.Conn, tr *tracker) {
	defer tr.remove(c)
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	t, err := n.Server.Dial(dctx, "tcp", c.LocalAddr().String())
	cancel()
	if err != nil || !tr.add(t) {
		return
	}
	defer tr.remove(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(t, c)
		if cw, ok := t.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		} else {
			t.Close()
		}
	}()
	io.Copy(c, t)
	c.(*net.TCPConn).CloseWrite()
	<-done
}
