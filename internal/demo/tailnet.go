package demo

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"tailscale.com/client/local"
	"tailscale.com/derp/derpserver"
	"tailscale.com/envknob"
	"tailscale.com/ipn/store/mem"
	"tailscale.com/logtail"
	"tailscale.com/net/netns"
	"tailscale.com/net/stun"
	"tailscale.com/tailcfg"
	"tailscale.com/tsnet"
	"tailscale.com/tstest/integration/testcontrol"
	"tailscale.com/types/key"
	"tailscale.com/types/logger"
)

// Domain is the MagicDNS domain of the demo tailnet.
const Domain = "tail-scale.ts.net"

// TagBuilder is the tag that makes a peer a builder candidate (the
// client's default).
const TagBuilder = "tag:nix-builder"

// tailnet is an in-process tailnet, built like internal/tailnettest builds
// one for tests (DERP and STUN on 127.0.0.1, a testcontrol coordination
// server, tsnet nodes) but without the testing package: nothing here
// reaches beyond loopback.
type inProcTailnet struct {
	control    *testcontrol.Server
	controlURL string
	dir        string
	logf       logger.Logf

	mu      sync.Mutex
	closers []func()
}

// node is one tsnet node of the demo tailnet.
type node struct {
	server *tsnet.Server
	lc     *local.Client
	name   string
	fqdn   string
	key    key.NodePublic
	ipv4   netip.Addr
}

// quietTailscale keeps the tailscale libraries on loopback and quiet: no
// log uploads, no port mapping probes of the LAN gateway, no netns marks
// (which need root).
func quietTailscale() {
	envknob.SetNoLogsNoSupport()
	envknob.Setenv("TS_DISABLE_PORTMAPPER", "1")
	logtail.Disable()
	netns.SetEnabled(false)
}

// newTailnet starts DERP, STUN and control on loopback. dir holds the
// nodes' state directories; logf gets the servers' logs.
func newTailnet(ctx context.Context, dir string, logf logger.Logf) (*inProcTailnet, error) {
	quietTailscale()
	tn := &inProcTailnet{dir: dir, logf: logf}
	derpMap, err := tn.runDERPAndSTUN(ctx)
	if err != nil {
		tn.close()
		return nil, err
	}
	tn.control = &testcontrol.Server{
		DERPMap:        derpMap,
		DNSConfig:      &tailcfg.DNSConfig{Proxied: true},
		MagicDNSDomain: Domain,
		TagOwners:      map[string][]string{TagBuilder: nil},
		Logf:           logf,
	}
	tn.control.HTTPTestServer = httptest.NewUnstartedServer(tn.control)
	tn.control.HTTPTestServer.Config.ErrorLog = logger.StdLogger(logf)
	tn.control.HTTPTestServer.Start()
	tn.onClose(tn.control.HTTPTestServer.Close)
	tn.controlURL = tn.control.HTTPTestServer.URL
	return tn, nil
}

// runDERPAndSTUN is integration.RunDERPAndSTUN without a testing.TB: a
// DERP server over TLS and a STUN responder, both on 127.0.0.1.
func (tn *inProcTailnet) runDERPAndSTUN(ctx context.Context) (*tailcfg.DERPMap, error) {
	d := derpserver.New(key.NewNode(), tn.logf)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("derp: %w", err)
	}
	srv := httptest.NewUnstartedServer(derpserver.Handler(d))
	srv.Listener.Close()
	srv.Listener = ln
	srv.Config.ErrorLog = logger.StdLogger(tn.logf)
	srv.Config.TLSNextProto = make(map[string]func(*http.Server, *tls.Conn, http.Handler))
	srv.StartTLS()
	tn.onClose(func() { srv.CloseClientConnections(); srv.Close(); d.Close() })

	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("stun: %w", err)
	}
	tn.onClose(func() { pc.Close() })
	go serveSTUN(pc)

	return &tailcfg.DERPMap{Regions: map[int]*tailcfg.DERPRegion{
		1: {RegionID: 1, RegionCode: "demo", Nodes: []*tailcfg.DERPNode{{
			Name:             "d1",
			RegionID:         1,
			HostName:         "127.0.0.1",
			IPv4:             "127.0.0.1",
			IPv6:             "none",
			STUNPort:         pc.LocalAddr().(*net.UDPAddr).Port,
			DERPPort:         ln.Addr().(*net.TCPAddr).Port,
			InsecureForTests: true,
			STUNTestIP:       "127.0.0.1",
		}}},
	}}, nil
}

// serveSTUN answers STUN binding requests on pc until it is closed.
func serveSTUN(pc net.PacketConn) {
	buf := make([]byte, 64<<10)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		txid, err := stun.ParseBindingRequest(buf[:n])
		ua, ok := addr.(*net.UDPAddr)
		if err != nil || !ok {
			continue
		}
		ap := ua.AddrPort()
		_, _ = pc.WriteTo(stun.Response(txid, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())), addr)
	}
}

// addNode starts a tsnet node called name with tags, waits until it runs
// with an address and has reached its home DERP, and marks it online in
// control (testcontrol does not do it by itself).
func (tn *inProcTailnet) addNode(ctx context.Context, name string, tags ...string) (*node, error) {
	s := &tsnet.Server{
		Dir:           filepath.Join(tn.dir, name),
		Store:         new(mem.Store),
		Hostname:      name,
		ControlURL:    tn.controlURL,
		Ephemeral:     true,
		AdvertiseTags: tags,
		Logf:          tn.logf,
		UserLogf:      tn.logf,
	}
	tn.onClose(func() { s.Close() })
	st, err := s.Up(ctx)
	if err != nil {
		return nil, fmt.Errorf("start node %s: %w", name, err)
	}
	lc, err := s.LocalClient()
	if err != nil {
		return nil, fmt.Errorf("node %s: local client: %w", name, err)
	}
	if err := waitHomeDERP(ctx, s); err != nil {
		return nil, fmt.Errorf("node %s: home DERP: %w", name, err)
	}
	n := &node{server: s, lc: lc, name: name, fqdn: name + "." + Domain}
	if st.Self != nil {
		n.key = st.Self.PublicKey
		if d := strings.TrimSuffix(st.Self.DNSName, "."); d != "" {
			n.fqdn = d
		}
	}
	for _, ip := range st.TailscaleIPs {
		if ip.Is4() {
			n.ipv4 = ip
		}
	}
	cn := tn.control.Node(n.key)
	if cn == nil {
		return nil, fmt.Errorf("node %s: control does not know it", name)
	}
	on := true
	cn.Online = &on
	tn.control.UpdateNode(cn)
	return n, nil
}

// waitHomeDERP waits until s has a home DERP region and has heard from it,
// so that the first dial does not race the DERP handshake.
func waitHomeDERP(ctx context.Context, s *tsnet.Server) error {
	h := s.Sys().HealthTracker.Get()
	ms := s.Sys().MagicSock.Get()
	for {
		if r := ms.GetLastNetcheckReport(ctx); r != nil && r.PreferredDERP != 0 &&
			!h.GetDERPRegionReceivedTime(r.PreferredDERP).IsZero() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// waitPeers waits until from's LocalAPI status shows every peer online.
func waitPeers(ctx context.Context, from *node, peers ...*node) error {
	for {
		st, err := from.lc.Status(ctx)
		if err == nil {
			missing := ""
			for _, p := range peers {
				if ps := st.Peer[p.key]; ps == nil || !ps.Online {
					missing = p.name
					break
				}
			}
			if missing == "" {
				return nil
			}
			err = errors.New(missing + " not online yet")
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s does not see its peers: %w (last: %v)", from.name, ctx.Err(), err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (tn *inProcTailnet) onClose(f func()) {
	tn.mu.Lock()
	defer tn.mu.Unlock()
	tn.closers = append(tn.closers, f)
}

// close stops every node and server, newest first.
func (tn *inProcTailnet) close() {
	tn.mu.Lock()
	fs := tn.closers
	tn.closers = nil
	tn.mu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}
