package tailnettest

import (
	"context"
	"io"
	"net"
	"testing"
	"time"
)

// TestNet proves the harness: a tagged node and an untagged node see each
// other online, tags reach control and peers, MagicDNS names resolve
// through tsnet's dialer, and SetOnline/SetTags reach the peer.
func TestNet(t *testing.T) {
	tn := New(t)
	b := tn.AddNode(t, "b1", TagBuilder)
	c := tn.AddNode(t, "c1")

	ps := tn.WaitPeer(t, c, b)
	if ps.Tags == nil || ps.Tags.Len() != 1 || ps.Tags.At(0) != TagBuilder {
		t.Fatalf("peer tags = %v, want [%s]", ps.Tags, TagBuilder)
	}
	if b.FQDN != "b1."+Domain {
		t.Fatalf("FQDN = %q", b.FQDN)
	}

	ln, err := b.Server.Listen("tcp", ":80")
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
			io.WriteString(conn, "hi")
			conn.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, addr := range []string{b.FQDN, "b1", b.IPv4.String()} {
		conn, err := c.Server.Dial(ctx, "tcp", net.JoinHostPort(addr, "80"))
		if err != nil {
			t.Fatalf("dial %s: %v", addr, err)
		}
		got, _ := io.ReadAll(conn)
		conn.Close()
		if string(got) != "hi" {
			t.Fatalf("dial %s: read %q", addr, got)
		}
	}

	tn.SetOnline(t, b, false)
	waitFor(t, func() bool {
		st, err := c.LocalClient.Status(ctx)
		return err == nil && st.Peer[b.Key] != nil && !st.Peer[b.Key].Online
	})
	tn.SetTags(t, b)
	waitFor(t, func() bool {
		st, err := c.LocalClient.Status(ctx)
		return err == nil && st.Peer[b.Key] != nil && st.Peer[b.Key].Tags == nil
	})

	fakes := tn.AddFakePeers(t, 5, TagBuilder)
	tn.SetTags(t, b, TagBuilder) // pushes an update to c
	waitFor(t, func() bool {
		st, err := c.LocalClient.Status(ctx)
		return err == nil && len(st.Peer) == 1+len(fakes)
	})
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(Timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRestart proves Restart: the node comes back as the same node (key,
// address), its peer sees it offline and then online again, and it serves
// on the tailnet again; its old connections are gone.
func TestRestart(t *testing.T) {
	tn := New(t)
	b := tn.AddRestartableNode(t, "b1", TagBuilder)
	c := tn.AddNode(t, "c1")
	tn.WaitPeer(t, c, b)
	tn.WaitPeer(t, b, c)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	serve := func(n *Node) {
		ln, err := n.Server.Listen("tcp", ":80")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { io.Copy(conn, conn); conn.Close() }()
			}
		}()
	}
	serve(b)
	old, err := c.Server.Dial(ctx, "tcp", net.JoinHostPort(b.IPv4.String(), "80"))
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	sawOffline := false
	nb := tn.Restart(t, b, func() {
		waitFor(t, func() bool {
			st, err := c.LocalClient.Status(ctx)
			sawOffline = err == nil && st.Peer[b.Key] != nil && !st.Peer[b.Key].Online
			return sawOffline
		})
	})
	if !sawOffline {
		t.Fatal("the peer never saw the node offline")
	}
	tn.WaitPeer(t, c, nb)
	tn.WaitPeer(t, nb, c)
	serve(nb)
	conn, err := c.Server.Dial(ctx, "tcp", net.JoinHostPort(nb.IPv4.String(), "80"))
	if err != nil {
		t.Fatalf("dial the restarted node: %v", err)
	}
	io.WriteString(conn, "hi")
	buf := make([]byte, 2)
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "hi" {
		t.Fatalf("echo from the restarted node: %q, %v", buf, err)
	}
	conn.Close()
	// The old process's connection is gone: its peer answers it with a
	// reset, or it is silent, but never echoes.
	old.SetDeadline(time.Now().Add(3 * time.Second))
	io.WriteString(old, "hi")
	if n, _ := io.ReadFull(old, buf); n == 2 {
		t.Error("a connection to the old process still echoes")
	}
}
