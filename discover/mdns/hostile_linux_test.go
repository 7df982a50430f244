package mdns

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/crypto/ssh"

	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/nixrb-discover/nixrb-discover/health"
	"github.com/nixrb-discover/nixrb-discover/internal/netnstest"
	"github.com/nixrb-discover/nixrb-discover/internal/sshdtest"
	"github.com/nixrb-discover/nixrb-discover/render"
	"github.com/nixrb-discover/nixrb-discover/wire"
)

// The attacks of the security review (issue 17), by real multicast between
// network namespaces: a rogue host sends crafted mDNS packets from port
// 5353, as any machine on the link can.

// mdnsRogue is a socket on a host's address and port 5353 that sends
// crafted packets to the IPv4 mDNS group.
type mdnsRogue struct{ c *net.UDPConn }

func newMDNSRogue(t *testing.T, h *netnstest.Host) *mdnsRogue {
	t.Helper()
	var c *net.UDPConn
	err := h.Do(func() error {
		var err error
		c, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IP(h.IP.AsSlice()), Port: 5353})
		return err
	})
	if err != nil {
		t.Fatalf("rogue socket in %s: %v", h.Name, err)
	}
	t.Cleanup(func() { c.Close() })
	return &mdnsRogue{c: c}
}

func (r *mdnsRogue) send(t *testing.T, m *dns.Msg) {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatalf("pack: %v", err)
	}
	if _, err := r.c.WriteToUDP(b, &net.UDPAddr{IP: net.IPv4(224, 0, 0, 251), Port: 5353}); err != nil {
		t.Fatalf("send: %v", err)
	}
}

// dnsLabel escapes raw bytes as one DNS label in presentation form, so
// that any byte (ESC, newline, '.') reaches the wire as it is.
func dnsLabel(raw string) string {
	var b strings.Builder
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "\\%03d", c)
		}
	}
	return b.String()
}

// mdnsAnnouncement is a whole announcement of instance (raw bytes) with
// txt, port and the A record addr, every record with ttl.
func mdnsAnnouncement(instance string, txt []string, port uint16, addr netip.Addr, ttl uint32) *dns.Msg {
	svc := mdnsServiceName()
	inst := dnsLabel(instance) + "." + svc
	h := func(name string, typ uint16) dns.RR_Header {
		return dns.RR_Header{Name: name, Rrtype: typ, Class: dns.ClassINET, Ttl: ttl}
	}
	rrs := []dns.RR{
		&dns.PTR{Hdr: h(svc, dns.TypePTR), Ptr: inst},
		&dns.SRV{Hdr: h(inst, dns.TypeSRV), Port: port, Target: "target.local."},
		&dns.TXT{Hdr: h(inst, dns.TypeTXT), Txt: txt},
	}
	if addr.IsValid() {
		rrs = append(rrs, &dns.A{Hdr: h("target.local.", dns.TypeA), A: net.IP(addr.AsSlice())})
	}
	return &dns.Msg{MsgHdr: dns.MsgHdr{Response: true, Authoritative: true}, Answer: rrs}
}

// nsSource runs a Source inside a host's namespace, for a discover.Client
// whose checks run outside it; it counts snapshots that ask for a re-check.
type nsSource struct {
	h        *netnstest.Host
	s        *Source
	rechecks *atomic.Int64
}

func (n nsSource) Name() string { return n.s.Name() }

func (n nsSource) Run(ctx context.Context, emit func(discover.Snapshot)) error {
	return n.h.Do(func() error {
		return n.s.Run(ctx, func(s discover.Snapshot) {
			if len(s.Recheck) > 0 && n.rechecks != nil {
				n.rechecks.Add(1)
			}
			emit(s)
		})
	})
}

// syncBuf is a bytes.Buffer safe for a logger and the test at once.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startClient runs a discover.Client with src until the test ends.
func startClient(t *testing.T, c *discover.Client) {
	t.Helper()
	c.MachinesPath = filepath.Join(t.TempDir(), "machines")
	c.NixVersion = render.NixVersion{Major: 2, Minor: 8}
	c.Init()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("client Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("client Run did not return within 10s of cancel")
		}
	})
}

// TestMDNSHostileInstanceNameListedEscaped: an unsigned advert whose
// instance name holds escape sequences, a newline and shell syntax
// ("b1\e[2K\e[1A\e[32mok $(touch X)\n"), then `list --all`'s table: the
// name is shown escaped on one row, nothing raw reaches the terminal
// (table or client log), and no --pin hint is offered to paste.
func TestMDNSHostileInstanceNameListedEscaped(t *testing.T) {
	netnstest.RequireRoot(t)
	topo := netnstest.New(t)
	rogueHost, q := topo.AddHost(t, "rogue"), topo.AddHost(t, "client")
	const evil = "b1\x1b[2K\x1b[1A\x1b[32mok $(touch X)\n"
	var logs syncBuf
	c := &discover.Client{
		Sources: []discover.Source{nsSource{h: q, s: &Source{Interfaces: []string{q.Iface}, QueryInterval: 30 * time.Second, QueryTimeout: 200 * time.Millisecond}}},
		Checker: &health.Checker{Signer: sshdtest.NewSigner(t)},
		Logger:  slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	startClient(t, c)
	rogue := newMDNSRogue(t, rogueHost)
	txt := mdnsTXT(t, mdnsAdvert(t, "b1", mdnsHostKey(t), nil, time.Now()))

	var st *discover.Status
	deadline := time.Now().Add(10 * time.Second)
	for st == nil {
		if time.Now().After(deadline) {
			t.Fatal("the client never listed the hostile advert within 10 s")
		}
		rogue.send(t, mdnsAnnouncement(evil, txt, 22, rogueHost.IP, 120))
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		s, err := c.Status(ctx)
		cancel()
		if err == nil {
			for _, b := range s.Builders {
				if b.Name == evil {
					st = s
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	var table bytes.Buffer
	st.WriteTable(&table, true)
	out := table.String()
	t.Logf("list --all:\n%s", out)
	for _, r := range out {
		if r != '\n' && (r < 0x20 || r == 0x7f) {
			t.Fatalf("raw control character %U reaches the terminal:\n%q", r, out)
		}
	}
	var row string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "untrusted") {
			if row != "" {
				t.Fatalf("two untrusted rows from one advert: the newline split it:\n%s", out)
			}
			row = l
		}
	}
	if !strings.HasPrefix(row, strconv.Quote(evil)) {
		t.Errorf("row %q does not start with the escaped name %s", row, strconv.Quote(evil))
	}
	if strings.Contains(out, "--pin") {
		t.Errorf("a --pin hint is offered for the hostile name:\n%s", out)
	}
	if strings.ContainsAny(logs.String(), "\x1b\r") {
		t.Errorf("raw escape in the client's log:\n%q", logs.String())
	}
}

// TestMDNSSourcePinnedBuilderBeatsFirstRogue: with b1 pinned, a rogue sends
// first one unsigned advert for b1 with b1's public host key, draining,
// TTL 2^32-1 and the A record of the real builder; the real builder then
// announces: the real one must win, and the rogue sending again must not
// take it back.
func TestMDNSSourcePinnedBuilderBeatsFirstRogue(t *testing.T) {
	netnstest.RequireRoot(t)
	topo := netnstest.New(t)
	b, rogueHost, q := topo.AddHost(t, "builder"), topo.AddHost(t, "rogue"), topo.AddHost(t, "client")
	hk := mdnsHostKey(t)
	pins := &Pins{}
	if err := pins.AddFlag("b1=" + hk); err != nil {
		t.Fatal(err)
	}
	key := "mdns:" + mdnsFingerprint(t, hk)
	rec := mdnsStartSource(t, q, &Source{Pins: pins, QueryInterval: 30 * time.Second, QueryTimeout: 200 * time.Millisecond})
	rec.waitFor(t, 0, 3*time.Second, "the first (empty) snapshot", func(discover.Snapshot) bool { return true })

	drain := mdnsAdvert(t, "b1", hk, nil, time.Now())
	drain.Draining = true
	attack := mdnsAnnouncement("b1", mdnsTXT(t, drain), 22, b.IP, ^uint32(0))
	rogue := newMDNSRogue(t, rogueHost)
	rogue.send(t, attack)
	_, i, _ := rec.waitFor(t, 0, 2*time.Second, "the rogue's draining b1", func(s discover.Snapshot) bool {
		c, ok := mdnsCandidateIn(s, key)
		return ok && c.Advert.Draining && c.Address == b.IP.String()
	})

	mdnsStartBuilder(t, b, "b1", mdnsTXT(t, mdnsAdvert(t, "b1", hk, nil, time.Now())), 0)
	_, i, _ = rec.waitFor(t, i+1, 3*time.Second, "the real b1, not draining", func(s discover.Snapshot) bool {
		c, ok := mdnsCandidateIn(s, key)
		return ok && c.Trusted && !c.Advert.Draining && c.Address == b.IP.String()
	})
	rogue.send(t, attack)
	time.Sleep(500 * time.Millisecond)
	rec.mu.Lock()
	last := rec.snaps[len(rec.snaps)-1]
	n := len(rec.snaps)
	rec.mu.Unlock()
	if c, ok := mdnsCandidateIn(last, key); !ok || c.Advert.Draining {
		t.Fatalf("after the rogue sent again (%d snapshots, %d since the real one): present=%v %+v", n, n-i, ok, c)
	}
}

// TestMDNSGoodbyeFloodRunsFewChecks: 5,000 forged goodbyes in ~5 s for a
// pinned builder whose checks fail (a real sshd that refuses the client's
// key: each check is a full SSH login) run about one check per second,
// not one per goodbye.
func TestMDNSGoodbyeFloodRunsFewChecks(t *testing.T) {
	netnstest.RequireRoot(t)
	sshdtest.Require(t)
	other := sshdtest.NewSigner(t)
	sshd := sshdtest.Start(t, sshdtest.Options{Authorized: []ssh.PublicKey{other.PublicKey()}})
	_, portStr, _ := net.SplitHostPort(sshd.Addr)
	port, _ := strconv.Atoi(portStr)
	hk := wire.CanonicalHostKey(sshd.HostKey)
	pins := &Pins{}
	if err := pins.AddFlag("b1=" + hk); err != nil {
		t.Fatal(err)
	}
	topo := netnstest.New(t)
	rogueHost, q := topo.AddHost(t, "rogue"), topo.AddHost(t, "client")

	var checks atomic.Int64
	var lastReason atomic.Value
	var rechecks atomic.Int64
	c := &discover.Client{
		Sources: []discover.Source{nsSource{h: q, rechecks: &rechecks,
			s: &Source{Interfaces: []string{q.Iface}, Pins: pins, QueryInterval: 30 * time.Second, QueryTimeout: 200 * time.Millisecond}}},
		Checker: &health.Checker{Signer: sshdtest.NewSigner(t)},
		Hooks: discover.Hooks{Checked: func(_ string, r health.Result) {
			checks.Add(1)
			lastReason.Store(string(r.Reason))
		}},
	}
	startClient(t, c)
	// b1 as the client's checks reach it: the real sshd on the root
	// namespace's loopback (the client's checks run there).
	adv := mdnsAdvert(t, "b1", hk, nil, time.Now())
	adv.SSHUser, adv.SSHPort = "root", port
	rogue := newMDNSRogue(t, rogueHost)
	deadline := time.Now().Add(10 * time.Second)
	for checks.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("b1 was never checked within 10 s")
		}
		rogue.send(t, mdnsAnnouncement("b1", mdnsTXT(t, adv), uint16(port), netip.MustParseAddr("127.0.0.1"), 120))
		time.Sleep(200 * time.Millisecond)
	}
	if r, _ := lastReason.Load().(string); r != string(health.ReasonAuthRefused) {
		t.Fatalf("b1's check: %q, want %q from the real sshd", r, health.ReasonAuthRefused)
	}

	goodbye := mdnsAnnouncement("b1", mdnsTXT(t, adv), uint16(port), netip.Addr{}, 0)
	base, start := checks.Load(), time.Now()
	const packets = 5000
	for i := range packets {
		rogue.send(t, goodbye)
		if i%10 == 9 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	time.Sleep(500 * time.Millisecond) // let the last hints be acted on
	elapsed := time.Since(start)
	got := checks.Load() - base
	t.Logf("%d goodbyes in %v: %d snapshots asked for a re-check, %d checks ran", packets, elapsed.Round(time.Millisecond), rechecks.Load(), got)
	if rechecks.Load() < 50 {
		t.Fatalf("only %d snapshots asked for a re-check: the flood did not reach the client, the test proves nothing", rechecks.Load())
	}
	// At most one re-check per second, plus the builder's own backoff
	// schedule (1 s, 2 s, 4 s …).
	if limit := int64(elapsed/time.Second) + 4; got > limit {
		t.Fatalf("%d forged goodbyes in %v ran %d checks (full SSH logins), want at most %d", packets, elapsed, got, limit)
	}
}
