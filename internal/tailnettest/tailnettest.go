// Package tailnettest runs a whole tailnet inside a test process: DERP and
// STUN on loopback, a testcontrol coordination server behind httptest, and
// tsnet nodes whose LocalClient is the real LocalAPI. It works offline.
//
// # Usage
//
//	tn := tailnettest.New(t)
//	b := tn.AddNode(t, "b1", "tag:nix-builder")
//	c := tn.AddNode(t, "client")
//	tn.WaitPeer(t, c, b)
//	conn, err := c.Server.Dial(ctx, "tcp", b.FQDN+":7461")
//
// Every node starts online in control (peers see Online=true); use
// [Net.SetOnline] to simulate a node leaving, and [Net.SetTags] to retag
// it, and [Net.Restart] to restart one in place (tailscaled restarted).
// Everything is torn down in t.Cleanup and every wait is bounded.
package tailnettest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"tailscale.com/client/local"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/ipn/store/mem"
	"tailscale.com/net/netns"
	"tailscale.com/tailcfg"
	"tailscale.com/tsnet"
	"tailscale.com/tstest/integration"
	"tailscale.com/tstest/integration/testcontrol"
	"tailscale.com/types/key"
	"tailscale.com/types/logger"
)

// Domain is the MagicDNS domain of every test tailnet.
const Domain = "tail-scale.ts.net"

// Tags that control lets any node advertise.
const (
	TagBuilder = "tag:nix-builder"
	TagClient  = "tag:nix-client"
)

// Timeout bounds every wait in this package.
const Timeout = 30 * time.Second

// Net is one in-process tailnet.
type Net struct {
	// Control is the coordination server; change nodes with Control.Node
	// and Control.UpdateNode (or the helpers on Net).
	Control *testcontrol.Server
	// ControlURL is the coordination server's base URL.
	ControlURL string

	fakeSeq int
}

// Node is one tsnet node on a Net.
type Node struct {
	// Server is the tsnet node; dial and listen on the tailnet through it.
	Server *tsnet.Server
	// LocalClient is the node's real LocalAPI client.
	LocalClient *local.Client
	// Name is the node's host name (its MagicDNS short name).
	Name string
	// FQDN is the node's MagicDNS name without the trailing dot.
	FQDN string
	// IPv4 and IPv6 are the node's tailnet addresses.
	IPv4, IPv6 netip.Addr
	// Key is the node's public node key (the key control indexes nodes by).
	Key key.NodePublic
	// StableID is the node's stable ID.
	StableID tailcfg.StableNodeID

	// What Restart needs to start the same node again.
	dir       string
	ephemeral bool
	tags      []string
}

// New starts DERP, STUN and a control server, all on loopback.
func New(tb testing.TB) *Net {
	tb.Helper()
	netns.SetEnabled(false)
	tb.Cleanup(func() { netns.SetEnabled(true) })

	derpMap := integration.RunDERPAndSTUN(tb, logger.Discard, "127.0.0.1")
	ctl := &testcontrol.Server{
		DERPMap:        derpMap,
		DNSConfig:      &tailcfg.DNSConfig{Proxied: true},
		MagicDNSDomain: Domain,
		TagOwners: map[string][]string{
			TagBuilder: nil,
			TagClient:  nil,
		},
		Logf: logger.Discard,
	}
	ctl.HTTPTestServer = httptest.NewUnstartedServer(ctl)
	ctl.HTTPTestServer.Start()
	tb.Cleanup(ctl.HTTPTestServer.Close)
	return &Net{Control: ctl, ControlURL: ctl.HTTPTestServer.URL}
}

// AddNode starts a tsnet node called name advertising tags, waits until it
// is Running with an address and connected to its home DERP, and marks it
// online in control. The node is closed in t.Cleanup.
func (n *Net) AddNode(tb testing.TB, name string, tags ...string) *Node {
	tb.Helper()
	return n.start(tb, name, filepath.Join(tb.TempDir(), name), true, tags)
}

// AddRestartableNode is AddNode for a node that [Net.Restart] can restart:
// it keeps its state in a file under its Dir and is not ephemeral (an
// ephemeral node logs out of control when it stops).
func (n *Net) AddRestartableNode(tb testing.TB, name string, tags ...string) *Node {
	tb.Helper()
	return n.start(tb, name, filepath.Join(tb.TempDir(), name), false, tags)
}

// Restart closes node's tsnet server and starts it again in place, as a
// restart of tailscaled (a builder's reboot, a laptop's `systemctl
// restart tailscaled`) does: the same state (node key, so the same node
// in control, the same addresses and name), a new process (a new disco
// key, every connection and listener of the old one gone). It returns the
// new node; the old one must no longer be used. Control marks the node
// offline while it is down (testcontrol does not notice by itself) and
// online again once it is up; between runs while it is down. The node
// must come from [Net.AddRestartableNode].
func (n *Net) Restart(tb testing.TB, node *Node, between func()) *Node {
	tb.Helper()
	if node.ephemeral {
		tb.Fatalf("tailnettest: node %s is ephemeral: start it with AddRestartableNode", node.Name)
	}
	n.SetOnline(tb, node, false)
	node.Server.Close()
	if between != nil {
		between()
	}
	nn := n.start(tb, node.Name, node.dir, false, node.tags)
	if nn.Key != node.Key || nn.IPv4 != node.IPv4 {
		tb.Fatalf("tailnettest: node %s came back as another node (%v %v, was %v %v)", node.Name, nn.Key.ShortString(), nn.IPv4, node.Key.ShortString(), node.IPv4)
	}
	return nn
}

func (n *Net) start(tb testing.TB, name, dir string, ephemeral bool, tags []string) *Node {
	tb.Helper()
	s := &tsnet.Server{
		Dir:           dir,
		Hostname:      name,
		ControlURL:    n.ControlURL,
		Ephemeral:     ephemeral,
		AdvertiseTags: tags,
		Logf:          logger.Discard,
		UserLogf:      logger.Discard,
	}
	if ephemeral {
		s.Store = new(mem.Store)
	}
	node := Join(tb, s)
	node.dir, node.ephemeral, node.tags = dir, ephemeral, tags
	if node.FQDN == "" {
		node.FQDN = name + "." + Domain
	}
	if got := n.Control.Node(node.Key); got != nil && !slices.Equal(got.Tags, tags) && len(tags) > 0 {
		tb.Fatalf("tailnettest: node %s: control has tags %v, want %v", name, got.Tags, tags)
	}
	n.SetOnline(tb, node, true)
	return node
}

// Join brings s up on whatever control server its ControlURL names (this
// package's testcontrol, or another one such as a real headscale), waits
// until it is Running with an address and has heard from its home DERP,
// and returns it as a Node. s is closed in tb.Cleanup. Call
// netns.SetEnabled(false) first, as [New] does.
func Join(tb testing.TB, s *tsnet.Server) *Node {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	name := s.Hostname
	tb.Cleanup(func() { s.Close() })
	st, err := s.Up(ctx)
	if err != nil {
		tb.Fatalf("tailnettest: start node %s: %v", name, err)
	}
	lc, err := s.LocalClient()
	if err != nil {
		tb.Fatalf("tailnettest: node %s: local client: %v", name, err)
	}
	waitHomeDERP(tb, ctx, s, name)

	node := &Node{Server: s, LocalClient: lc, Name: name}
	if st.Self != nil {
		node.Key = st.Self.PublicKey
		node.StableID = st.Self.ID
		node.FQDN = strings.TrimSuffix(st.Self.DNSName, ".")
	}
	for _, ip := range st.TailscaleIPs {
		if ip.Is4() {
			node.IPv4 = ip
		} else {
			node.IPv6 = ip
		}
	}
	return node
}

// waitHomeDERP waits until s has a home DERP region and has heard from it,
// so that a fast test does not race the DERP handshake.
func waitHomeDERP(tb testing.TB, ctx context.Context, s *tsnet.Server, name string) {
	tb.Helper()
	h := s.Sys().HealthTracker.Get()
	ms := s.Sys().MagicSock.Get()
	for {
		if r := ms.GetLastNetcheckReport(ctx); r != nil && r.PreferredDERP != 0 &&
			!h.GetDERPRegionReceivedTime(r.PreferredDERP).IsZero() {
			return
		}
		select {
		case <-ctx.Done():
			tb.Fatalf("tailnettest: node %s: home DERP: %v", name, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// update applies edit to node's entry in control and pushes the change to
// every connected node. It replaces the whole node: call it when the node
// is idle.
func (n *Net) update(tb testing.TB, k key.NodePublic, edit func(*tailcfg.Node)) {
	tb.Helper()
	cn := n.Control.Node(k)
	if cn == nil {
		tb.Fatalf("tailnettest: control has no node %v", k.ShortString())
	}
	edit(cn)
	n.Control.UpdateNode(cn)
}

// SetOnline sets whether peers see node as online. testcontrol does not
// notice a closed node: mark it offline to simulate a node leaving.
func (n *Net) SetOnline(tb testing.TB, node *Node, online bool) {
	tb.Helper()
	n.update(tb, node.Key, func(cn *tailcfg.Node) { cn.Online = &online })
}

// SetTags replaces node's tags in control (nil or none: untagged).
func (n *Net) SetTags(tb testing.TB, node *Node, tags ...string) {
	tb.Helper()
	n.update(tb, node.Key, func(cn *tailcfg.Node) { cn.Tags = slices.Clone(tags) })
}

// WaitPeer waits until from's LocalAPI status shows peer, online.
func (n *Net) WaitPeer(tb testing.TB, from, peer *Node) *ipnstate.PeerStatus {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	for {
		st, err := from.LocalClient.Status(ctx)
		if err == nil {
			if ps := st.Peer[peer.Key]; ps != nil && ps.Online {
				return ps
			}
		}
		select {
		case <-ctx.Done():
			tb.Fatalf("tailnettest: %s does not see %s online: %v (last err %v)", from.Name, peer.Name, ctx.Err(), err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// AddFakePeers adds count nodes to control that exist in every netmap,
// online and with tags, but never answer: they have no endpoints and no
// home DERP, so packets to them are dropped. Their addresses are unique in
// 100.96.0.0/16 and their MagicDNS names are fake-N.<Domain>. It returns
// the nodes as control stores them.
func (n *Net) AddFakePeers(tb testing.TB, count int, tags ...string) []*tailcfg.Node {
	tb.Helper()
	if n.fakeSeq+count > 1<<16-2 {
		tb.Fatalf("tailnettest: too many fake peers")
	}
	before := make(map[tailcfg.StableNodeID]bool)
	for _, cn := range n.Control.AllNodes() {
		before[cn.StableID] = true
	}
	for range count {
		n.Control.AddFakeNode()
	}
	var out []*tailcfg.Node
	for _, cn := range n.Control.AllNodes() {
		if before[cn.StableID] {
			continue
		}
		n.fakeSeq++
		seq := n.fakeSeq
		name := fmt.Sprintf("fake-%d", seq)
		ip := netip.AddrFrom4([4]byte{100, 96, byte(seq >> 8), byte(seq)})
		pfx := netip.PrefixFrom(ip, 32)
		on := true
		cn.Name = name + "." + Domain + "."
		cn.Hostinfo = (&tailcfg.Hostinfo{Hostname: name}).View()
		cn.Addresses = []netip.Prefix{pfx}
		cn.AllowedIPs = []netip.Prefix{pfx}
		cn.Online = &on
		cn.Tags = slices.Clone(tags)
		// UpdateNode coalesces the pushes to connected nodes.
		n.Control.UpdateNode(cn)
		out = append(out, cn)
	}
	if len(out) != count {
		tb.Fatalf("tailnettest: added %d fake peers, want %d", len(out), count)
	}
	return out
}

// ForwardTCP pipes every connection to the node's tailnet port to backend
// (a real server outside the tailnet, e.g. a builder's sshd in its own
// namespace), as the kernel would route a tailnet address to a local
// service. Faults of the backend (killed, stopped, re-keyed) pass through.
// The listener is closed in tb.Cleanup.
func (n *Node) ForwardTCP(tb testing.TB, port int, backend string) {
	tb.Helper()
	ln, err := n.Server.Listen("tcp", fmt.Sprintf(":%d", port))
	if err != nil {
		tb.Fatalf("tailnettest: listen on %s:%d: %v", n.Name, port, err)
	}
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go pipe(c, backend)
		}
	}()
}

// pipe copies c to a new connection to backend and back until both close.
func pipe(c net.Conn, backend string) {
	defer c.Close()
	b, err := net.DialTimeout("tcp", backend, 5*time.Second)
	if err != nil {
		return
	}
	defer b.Close()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		io.Copy(b, c)
		if tc, ok := b.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
	}()
	go func() { defer wg.Done(); io.Copy(c, b); c.Close() }()
	wg.Wait()
}
