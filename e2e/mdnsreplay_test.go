//go:build linux

package e2e

import (
	"bytes"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/nixrb-discover/nixrb-discover/internal/mdnsnet"
	"github.com/nixrb-discover/nixrb-discover/internal/netnstest"
)

// mdnsGroup is the IPv4 mDNS group and port.
var mdnsGroup = &net.UDPAddr{IP: net.IPv4(224, 0, 0, 251), Port: 5353}

// recorder is an attacker on the link: it hears every mDNS packet on its
// host's interface, keeps them, and can send any of them again (a replay).
type recorder struct {
	conn *net.UDPConn
	pc   *ipv4.PacketConn

	mu      sync.Mutex
	packets [][]byte
}

// startRecorder joins the mDNS group on h's interface and records packets
// until the test ends.
func startRecorder(t *testing.T, h *host) *recorder {
	t.Helper()
	r := &recorder{}
	err := h.Do(func() error {
		c, err := mdnsnet.BindGroup(unix.AF_INET, &unix.SockaddrInet4{Port: 5353, Addr: [4]byte{224, 0, 0, 251}})
		if err != nil {
			return err
		}
		ifi, err := net.InterfaceByName(netnstest.HostIface)
		if err != nil {
			c.Close()
			return err
		}
		pc := ipv4.NewPacketConn(c)
		if err := pc.JoinGroup(ifi, mdnsGroup); err != nil {
			c.Close()
			return err
		}
		if err := pc.SetMulticastInterface(ifi); err != nil {
			c.Close()
			return err
		}
		pc.SetMulticastLoopback(false)
		r.conn, r.pc = c, pc
		return nil
	})
	if err != nil {
		t.Fatalf("recorder on %s: %v", h.Name, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 9000)
		for {
			n, _, err := r.conn.ReadFromUDP(buf)
			if err != nil {
				return
			}
			r.mu.Lock()
			if len(r.packets) < 10000 {
				r.packets = append(r.packets, bytes.Clone(buf[:n]))
			}
			r.mu.Unlock()
		}
	}()
	t.Cleanup(func() { r.conn.Close(); <-done })
	return r
}

// keyBlob is the base64 key blob of an "ssh-ed25519 AAAA…" line, as the
// advert's TXT "hk" carries it.
func keyBlob(line string) string {
	f := strings.Fields(line)
	if len(f) < 2 {
		return line
	}
	return f[1]
}

// last returns the last recorded packet whose TXT records hold a string
// containing blob (a signed advert naming that host key) and that is a
// whole announcement (SRV and A records too), so that it can stand alone
// when replayed from elsewhere.
func (r *recorder) last(t *testing.T, blob string) []byte {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.packets) - 1; i >= 0; i-- {
		var m dns.Msg
		if m.Unpack(r.packets[i]) != nil {
			continue
		}
		var txt, srv, a bool
		for _, rr := range append(append(m.Answer, m.Extra...), m.Ns...) {
			switch v := rr.(type) {
			case *dns.TXT:
				txt = txt || strings.Contains(strings.Join(v.Txt, " "), blob)
			case *dns.SRV:
				srv = true
			case *dns.A:
				a = true
			}
		}
		if txt && srv && a {
			return r.packets[i]
		}
	}
	t.Fatalf("recorder: no whole announcement (TXT naming %.20s…, SRV, A) among %d packets recorded", blob, len(r.packets))
	return nil
}

// rewriteA points every A record of an mDNS packet at addr and drops its
// AAAA records: what an attacker does to a captured advert (the records
// that give the address are not signed).
func rewriteA(t *testing.T, packet []byte, addr netip.Addr) []byte {
	t.Helper()
	var m dns.Msg
	if err := m.Unpack(packet); err != nil {
		t.Fatalf("rewriteA: %v", err)
	}
	fix := func(rrs []dns.RR) []dns.RR {
		var out []dns.RR
		for _, rr := range rrs {
			switch v := rr.(type) {
			case *dns.A:
				v.A = net.IP(addr.AsSlice())
			case *dns.AAAA:
				continue
			}
			out = append(out, rr)
		}
		return out
	}
	m.Answer, m.Extra, m.Ns = fix(m.Answer), fix(m.Extra), fix(m.Ns)
	out, err := m.Pack()
	if err != nil {
		t.Fatalf("rewriteA: %v", err)
	}
	if bytes.Equal(out, packet) {
		t.Fatalf("rewriteA: the packet has no address records to rewrite")
	}
	return out
}

// replay sends packet to the mDNS group every period until the returned
// stop is called (idempotent; also called at cleanup).
func (r *recorder) replay(t *testing.T, packet []byte, period time.Duration) (stop func()) {
	t.Helper()
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(period)
		defer tick.Stop()
		for {
			if _, err := r.conn.WriteToUDP(packet, mdnsGroup); err != nil {
				t.Logf("replay: %v", err)
			}
			select {
			case <-quit:
				return
			case <-tick.C:
			}
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { close(quit); <-done }) }
	t.Cleanup(stop)
	return stop
}
