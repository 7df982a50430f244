package tailnettest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/internal/netnstest"
)

// TestRouteTailnet: a plain process in the namespace (bash's /dev/tcp,
// no tsnet) reaches a peer by MagicDNS name and by IP, the peer sees the
// routing node as the caller, and a fake peer's address swallows the SYN
// (a timeout, not a refusal).
func TestRouteTailnet(t *testing.T) {
	netnstest.RequireRoot(t)
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("needs bash for /dev/tcp")
	}
	tn := New(t)
	b := tn.AddNode(t, "b1", TagBuilder)
	c := tn.AddNode(t, "c1")
	fake := tn.AddFakePeers(t, 1, TagBuilder)[0]
	tn.WaitPeer(t, c, b)
	tn.WaitPeer(t, b, c)

	ln, err := b.Server.Listen("tcp", ":7000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			// Tell the caller who it is, as WhoIs would see it.
			host, _, _ := net.SplitHostPort(conn.RemoteAddr().String())
			io.WriteString(conn, host+"\n")
			conn.Close()
		}
	}()

	h := netnstest.New(t).AddHost(t, "client")
	c.RouteTailnet(t, h, []*Node{b}, 7000)

	run := func(timeout time.Duration, script string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		cmd := h.Command("bash", "-c", script)
		out, err := exec.CommandContext(ctx, cmd.Path, cmd.Args[1:]...).CombinedOutput()
		if ctx.Err() != nil {
			return string(out), ctx.Err()
		}
		return string(out), err
	}
	for _, addr := range []string{b.FQDN, b.Name, b.IPv4.String()} {
		out, err := run(10*time.Second, fmt.Sprintf("exec 3<>/dev/tcp/%s/7000 && cat <&3", addr))
		if err != nil {
			t.Fatalf("connect to %s from the namespace: %v: %s", addr, err, out)
		}
		if got := strings.TrimSpace(out); got != c.IPv4.String() {
			t.Fatalf("via %s the peer saw caller %q, want %s", addr, got, c.IPv4)
		}
	}
	addr := fake.Addresses[0].Addr().String()
	out, err := run(time.Second, fmt.Sprintf("exec 3<>/dev/tcp/%s/7000", addr))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("connect to fake peer %s: %v %s; want no answer (timeout)", addr, err, out)
	}
}
