package advertise

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/mdns"
	"github.com/miekg/dns"

	"github.com/nixrb-discover/nixrb-discover/internal/netnstest"
	"github.com/nixrb-discover/nixrb-discover/wire"
)

// startResponder runs r in h until the test ends; it returns a stop
// function that cancels Run and waits for it, returning how long Run took
// to return after the cancel.
func startResponder(t *testing.T, h *netnstest.Host, r *MDNSResponder) (stop func() time.Duration) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Do(func() error { return r.Run(ctx) }) }()
	var stopped bool
	var took time.Duration
	stop = func() time.Duration {
		if stopped {
			return took
		}
		stopped = true
		start := time.Now()
		cancel()
		select {
		case err := <-done:
			took = time.Since(start)
			if err != nil {
				t.Errorf("responder Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("responder Run did not return within 5s of cancel")
		}
		return took
	}
	t.Cleanup(func() { stop() })
	return stop
}

// packet is one mDNS packet a wire listener saw.
type packet struct {
	msg  *dns.Msg
	from net.IP
	at   time.Time
}

// listenWire joins the mDNS group on h's veth and reports every response
// until the test ends.
func listenWire(t *testing.T, h *netnstest.Host) <-chan packet {
	t.Helper()
	out := make(chan packet, 64)
	ready := make(chan *net.UDPConn, 1)
	errc := make(chan error, 1)
	go func() {
		errc <- h.Do(func() error {
			ifi, err := net.InterfaceByName(h.Iface)
			if err != nil {
				return err
			}
			c, err := net.ListenMulticastUDP("udp4", ifi, &net.UDPAddr{IP: net.IPv4(224, 0, 0, 251), Port: 5353})
			if err != nil {
				return err
			}
			ready <- c
			return nil
		})
	}()
	var c *net.UDPConn
	select {
	case c = <-ready:
	case err := <-errc:
		if err != nil {
			t.Fatalf("wire listener: %v", err)
		}
		c = <-ready // Do returned nil after handing over the conn
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 9000)
		for {
			n, from, err := c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			m := new(dns.Msg)
			if m.Unpack(buf[:n]) != nil || !m.Response {
				continue
			}
			select {
			case out <- packet{msg: m, from: from.IP, at: time.Now()}:
			default:
			}
		}
	}()
	return out
}

func nextPacket(t *testing.T, ch <-chan packet, within time.Duration, what string) packet {
	t.Helper()
	select {
	case p := <-ch:
		return p
	case <-time.After(within):
		t.Fatalf("no %s within %v", what, within)
		return packet{}
	}
}

func testTXT(n int) []string {
	txt := []string{"v=1", "h=b1", "u=builder", "p=ssh-ng"}
	for i := len(txt); i < n; i++ {
		txt = append(txt, fmt.Sprintf("x%02d=%s", i, strings.Repeat("y", 20)))
	}
	return txt
}

func TestMDNSResponderAnswersHashicorpQuery(t *testing.T) {
	netnstest.RequireRoot(t)
	topo := netnstest.New(t)
	b, q := topo.AddHost(t, "builder"), topo.AddHost(t, "querier")
	r := &MDNSResponder{Hostname: "b1", Port: 2222, Interfaces: []string{b.Iface}, TXT: testTXT(30)}
	startResponder(t, b, r)

	entries := make(chan *mdns.ServiceEntry, 16) // buffered: the library never blocks on it
	err := q.Do(func() error {
		ifi, err := net.InterfaceByName(q.Iface)
		if err != nil {
			return err
		}
		return mdns.Query(&mdns.QueryParam{
			Service: wire.MDNSService, Domain: "local", Timeout: 500 * time.Millisecond,
			Interface: ifi, Entries: entries, Logger: log.New(io.Discard, "", 0),
		})
	})
	if err != nil {
		t.Fatalf("query: %v", err)
	}
	close(entries)
	var found *mdns.ServiceEntry
	for e := range entries {
		if e.Name == "b1._nix-builder._tcp.local." {
			found = e
		}
	}
	if found == nil {
		t.Fatal("hashicorp/mdns query did not find b1")
	}
	if found.Port != 2222 || !found.AddrV4.Equal(b.IP.AsSlice()) || !slices.Equal(found.InfoFields, testTXT(30)) {
		t.Errorf("entry = port %d addr %v txt %q; want 2222 %v %q", found.Port, found.AddrV4, found.InfoFields, b.IP, testTXT(30))
	}
}

func TestMDNSResponderAnnouncesUpdatesAndSaysGoodbye(t *testing.T) {
	netnstest.RequireRoot(t)
	topo := netnstest.New(t)
	b, q := topo.AddHost(t, "builder"), topo.AddHost(t, "querier")
	wire := listenWire(t, q)
	r := &MDNSResponder{Hostname: "b1", Port: 22, Interfaces: []string{b.Iface}, TXT: testTXT(5), TTL: 7 * time.Second}
	stop := startResponder(t, b, r)

	first := nextPacket(t, wire, 2*time.Second, "announcement")
	checkAnnouncement(t, first.msg, 7, testTXT(5), b.IP.String())
	if !first.from.Equal(b.IP.AsSlice()) {
		t.Errorf("announcement from %v, want %v", first.from, b.IP)
	}
	second := nextPacket(t, wire, 2*time.Second, "repeated announcement")
	checkAnnouncement(t, second.msg, 7, testTXT(5), b.IP.String())
	if gap := second.at.Sub(first.at); gap < 800*time.Millisecond || gap > 1500*time.Millisecond {
		t.Errorf("announcement repeated after %v, want ~1s", gap)
	}

	newTXT := append(testTXT(5), "load=3")
	updated := time.Now()
	if err := r.Update(newTXT); err != nil {
		t.Fatal(err)
	}
	p := nextPacket(t, wire, time.Second, "announcement of the TXT change")
	checkAnnouncement(t, p.msg, 7, newTXT, b.IP.String())
	t.Logf("TXT change on the wire %v after Update", p.at.Sub(updated))
	p = nextPacket(t, wire, 2*time.Second, "repeat of the TXT change")
	checkAnnouncement(t, p.msg, 7, newTXT, b.IP.String())

	cancelled := time.Now()
	took := stop()
	bye := nextPacket(t, wire, time.Second, "goodbye")
	checkAnnouncement(t, bye.msg, 0, newTXT, b.IP.String())
	t.Logf("goodbye on the wire %v after cancel; Run returned %v after cancel", bye.at.Sub(cancelled), took)
	if took > 100*time.Millisecond {
		t.Errorf("Run took %v to return after cancel, want < 100ms", took)
	}
	select {
	case p := <-wire:
		t.Errorf("packet after the goodbye: %v", p.msg)
	case <-time.After(300 * time.Millisecond):
	}
}

// checkAnnouncement checks an unsolicited response: PTR (shared), SRV,
// TXT and A (unique, cache-flush), all with TTL ttl.
func checkAnnouncement(t *testing.T, m *dns.Msg, ttl uint32, txt []string, ip string) {
	t.Helper()
	seen := map[uint16]bool{}
	for _, rr := range m.Answer {
		h := rr.Header()
		seen[h.Rrtype] = true
		if h.Ttl != ttl {
			t.Errorf("%s TTL %d, want %d", dns.TypeToString[h.Rrtype], h.Ttl, ttl)
		}
		flush := h.Class&cacheFlush != 0
		if want := h.Rrtype != dns.TypePTR; flush != want {
			t.Errorf("%s cache-flush %v, want %v", dns.TypeToString[h.Rrtype], flush, want)
		}
		switch rr := rr.(type) {
		case *dns.PTR:
			if rr.Hdr.Name != "_nix-builder._tcp.local." || rr.Ptr != "b1._nix-builder._tcp.local." {
				t.Errorf("PTR %v", rr)
			}
		case *dns.SRV:
			if rr.Target != "b1.local." {
				t.Errorf("SRV %v", rr)
			}
		case *dns.TXT:
			if !slices.Equal(rr.Txt, txt) {
				t.Errorf("TXT %q, want %q", rr.Txt, txt)
			}
		case *dns.A:
			if rr.A.String() != ip {
				t.Errorf("A %v, want %s", rr.A, ip)
			}
		}
	}
	for _, typ := range []uint16{dns.TypePTR, dns.TypeSRV, dns.TypeTXT, dns.TypeA} {
		if !seen[typ] {
			t.Errorf("announcement lacks %s: %v", dns.TypeToString[typ], m)
		}
	}
}

func TestMDNSResponderSeenByAvahiBrowse(t *testing.T) {
	netnstest.RequireRoot(t)
	for _, bin := range []string{"avahi-daemon", "avahi-browse", "dbus-daemon", "unshare"} {
		if _, err := os.Stat("/usr/bin/" + bin); err != nil {
			if _, err := os.Stat("/usr/sbin/" + bin); err != nil {
				t.Skipf("%s not installed: apt-get install avahi-daemon avahi-utils dbus util-linux", bin)
			}
		}
	}
	topo := netnstest.New(t)
	b, q := topo.AddHost(t, "builder"), topo.AddHost(t, "avahi")
	txt := testTXT(30)
	startResponder(t, b, &MDNSResponder{Hostname: "b1", Port: 2222, Interfaces: []string{b.Iface}, TXT: txt})

	tmpl, err := os.ReadFile("testdata/mdns/avahi-daemon.conf")
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(t.TempDir(), "avahi-daemon.conf")
	if err := os.WriteFile(conf, []byte(strings.ReplaceAll(string(tmpl), "@IFACE@", q.Iface)), 0o644); err != nil {
		t.Fatal(err)
	}
	script, _ := filepath.Abs("testdata/mdns/avahi-browse.sh")
	cmd := q.Command("unshare", "-m", "--propagation", "private", "sh", script, conf, "_nix-builder._tcp")
	var out, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := q.Start(t, cmd); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	select {
	case err := <-waited:
		if err != nil {
			t.Fatalf("avahi-browse: %v\nstdout:\n%s\nstderr:\n%s", err, out.String(), stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("avahi-browse did not finish within 30s\nstderr:\n%s", stderr.String())
	}
	var quoted []string
	for _, s := range txt {
		quoted = append(quoted, `"`+s+`"`)
	}
	var resolved string
	for _, line := range strings.Split(out.String(), "\n") {
		// =;iface;IPv4;b1;_nix-builder._tcp;local;b1.local;ADDR;PORT;"k=v" ...
		f := strings.SplitN(line, ";", 10)
		if len(f) == 10 && f[0] == "=" && f[2] == "IPv4" && f[3] == "b1" {
			resolved = line
			if f[6] != "b1.local" || f[7] != b.IP.String() || f[8] != "2222" {
				t.Errorf("avahi resolved %q", line)
			}
			got := strings.Fields(f[9])
			slices.Sort(got)
			want := slices.Clone(quoted)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("avahi TXT = %s\nwant (any order) %s", f[9], strings.Join(quoted, " "))
			}
		}
	}
	if resolved == "" {
		t.Fatalf("avahi-browse did not resolve b1 over IPv4:\n%s\nstderr:\n%s", out.String(), stderr.String())
	}
}

func TestMDNSResponderRefusesBadConfig(t *testing.T) {
	for name, r := range map[string]*MDNSResponder{
		"no-interfaces": {Hostname: "b1"},
		"bad-port":      {Hostname: "b1", Port: 70000, Interfaces: []string{"nrbd-none0"}},
		"short-ttl":     {Hostname: "b1", TTL: time.Millisecond, Interfaces: []string{"nrbd-none0"}},
		"txt-too-long":  {Hostname: "b1", Interfaces: []string{"nrbd-none0"}, TXT: []string{strings.Repeat("x", 256)}},
	} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			if err := r.Run(ctx); err == nil {
				t.Fatal("Run accepted the config")
			}
		})
	}
	r := &MDNSResponder{}
	if err := r.Update(testTXT(80)); err == nil {
		t.Error("Update accepted a TXT set over MaxTXTBytes")
	}
	if err := r.Update([]string{strings.Repeat("x", 256)}); err == nil {
		t.Error("Update accepted a 256-byte TXT string")
	}
}
