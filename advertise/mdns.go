package advertise

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/mdns"
	"github.com/miekg/dns"
	"github.com/nixrb-discover/nixrb-discover/wire"
)

// announceRepeat is the gap between an announcement and its repetition
// (RFC 6762 section 8.3: at least two, one second apart).
const announceRepeat = time.Second

// MDNSResponder answers DNS-SD queries for this builder on chosen
// interfaces and announces it: at start and on every TXT change it sends an
// unsolicited multicast response (repeated once a second later), and when
// Run's context ends it sends a goodbye (the same records with TTL 0).
//
// Queries are answered by hashicorp/mdns's server with a zone whose TXT can
// change; hashicorp/mdns itself never announces nor says goodbye, so those
// packets are built here with miekg/dns.
//
// Set the fields before Run; Update may be called at any time, from any
// goroutine. A clean leave is: Update with a signed advert whose Draining
// is true (clients drop a draining builder at once), then cancel Run's
// context (the goodbye is only a hint to clients).
type MDNSResponder struct {
	// Hostname is the instance name and the host name under .local;
	// os.Hostname() when empty.
	Hostname string
	// Port is the SSH port (SRV record); 22 when zero.
	Port int
	// Interfaces names the network interfaces to serve on. It is required:
	// the responder never picks interfaces by itself.
	Interfaces []string
	// TXT is the initial TXT record (see EncodeTXT); Update replaces it.
	TXT []string
	// TTL of the records; DefaultMDNSTTL when zero. Whole seconds.
	TTL time.Duration
	// Logger receives debug and warning logs; nil discards them.
	Logger *slog.Logger

	once    sync.Once
	changed chan struct{} // capacity 1: a TXT change is pending

	mu     sync.Mutex
	txt    []string
	hasTXT bool
}

func (r *MDNSResponder) init() {
	r.once.Do(func() { r.changed = make(chan struct{}, 1) })
}

// Update replaces the TXT record and, while Run runs, announces the change
// at once (and again a second later). It fails, changing nothing, when a
// string is longer than 255 bytes or the set exceeds MaxTXTBytes.
func (r *MDNSResponder) Update(txt []string) error {
	if err := checkTXT(txt); err != nil {
		return fmt.Errorf("mdns responder: %w", err)
	}
	r.init()
	r.mu.Lock()
	r.txt = append([]string(nil), txt...)
	r.hasTXT = true
	r.mu.Unlock()
	select {
	case r.changed <- struct{}{}:
	default:
	}
	return nil
}

// currentTXT returns the TXT strings to serve.
func (r *MDNSResponder) currentTXT() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.hasTXT {
		r.txt, r.hasTXT = append([]string(nil), r.TXT...), true
	}
	if len(r.txt) == 0 {
		return []string{""} // DNS-SD: an empty TXT is one empty string
	}
	return r.txt
}

func checkTXT(txt []string) error {
	total := 0
	for i, s := range txt {
		if len(s) > 255 {
			return fmt.Errorf("txt string %d is %d bytes, more than 255", i, len(s))
		}
		total += len(s) + 1
	}
	if total > wire.MaxTXTBytes {
		return fmt.Errorf("txt record is %d bytes, more than %d", total, wire.MaxTXTBytes)
	}
	return nil
}

// Run serves and announces until ctx is done, then stops answering, sends
// the goodbye on every interface and returns nil. All sockets are created
// on the calling goroutine (so a test may run it inside a network
// namespace it entered with LockOSThread + Setns).
func (r *MDNSResponder) Run(ctx context.Context) error {
	r.init()
	names, err := r.names()
	if err != nil {
		return err
	}
	if err := checkTXT(r.currentTXT()); err != nil {
		return fmt.Errorf("mdns responder: %w", err)
	}
	logger := r.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "mdns-responder")

	var links []*mdnsLink
	defer func() {
		for _, l := range links {
			l.close()
		}
	}()
	for _, name := range r.Interfaces {
		ifi, err := net.InterfaceByName(name)
		if err != nil {
			return fmt.Errorf("mdns responder: interface %q: %w", name, err)
		}
		l := &mdnsLink{ifi: ifi, zone: &mdnsZone{names: names, txt: r.currentTXT}}
		links = append(links, l)
		l.zone.setAddrs(interfaceAddrs(ifi))
		l.server, err = mdns.NewServer(&mdns.Config{
			Zone:   l.zone,
			Iface:  ifi,
			Logger: log.New(debugWriter{logger}, "", 0),
		})
		if err != nil {
			return fmt.Errorf("mdns responder: serve on %s: %w", name, err)
		}
		if l.ann4, l.ann6, err = openAnnouncers(ifi); err != nil {
			return fmt.Errorf("mdns responder: announce on %s: %w", name, err)
		}
	}
	logger.Info("mdns responder started", "instance", names.instance, "interfaces", r.Interfaces)

	announce := func(ttl uint32) {
		for _, l := range links {
			if ttl > 0 {
				l.zone.setAddrs(interfaceAddrs(l.ifi))
			}
			l.send(logger, l.zone.announcement(ttl))
		}
	}
	announce(names.ttl)
	repeat := time.NewTimer(announceRepeat)
	defer repeat.Stop()
	for {
		select {
		case <-ctx.Done():
			// Stop answering first, so that no answer follows the goodbye.
			for _, l := range links {
				_ = l.server.Shutdown()
			}
			announce(0)
			logger.Info("mdns responder stopped, goodbye sent", "instance", names.instance)
			return nil
		case <-r.changed:
			announce(names.ttl)
			repeat.Reset(announceRepeat)
		case <-repeat.C:
			announce(names.ttl)
		}
	}
}

// mdnsNames are the DNS names one responder serves.
type mdnsNames struct {
	instance string // instance label, unescaped
	service  string // _nix-builder._tcp.local.
	inst     string // <instance>._nix-builder._tcp.local. (escaped)
	host     string // <label>.local.
	port     uint16
	ttl      uint32
}

func (r *MDNSResponder) names() (mdnsNames, error) {
	if len(r.Interfaces) == 0 {
		return mdnsNames{}, errors.New("mdns responder: no interfaces given (set Interfaces; the responder never picks all interfaces)")
	}
	host := r.Hostname
	if host == "" {
		h, err := os.Hostname()
		if err != nil {
			return mdnsNames{}, fmt.Errorf("mdns responder: hostname: %w", err)
		}
		host = h
	}
	if len(host) > 63 || strings.ContainsAny(host, "\x00") {
		return mdnsNames{}, fmt.Errorf("mdns responder: hostname %q is not a valid DNS label", host)
	}
	port := r.Port
	if port == 0 {
		port = 22
	}
	if port < 1 || port > 65535 {
		return mdnsNames{}, fmt.Errorf("mdns responder: port %d out of range", r.Port)
	}
	ttl := r.TTL
	if ttl == 0 {
		ttl = wire.DefaultMDNSTTL
	}
	if ttl < time.Second {
		return mdnsNames{}, fmt.Errorf("mdns responder: ttl %v is under one second", ttl)
	}
	label, _, _ := strings.Cut(host, ".")
	service := wire.MDNSService + "." + wire.MDNSDomain
	n := mdnsNames{
		instance: host,
		service:  service,
		inst:     escapeLabel(host) + "." + service,
		host:     escapeLabel(label) + "." + wire.MDNSDomain,
		port:     uint16(port),
		ttl:      uint32(ttl / time.Second),
	}
	if _, ok := dns.IsDomainName(n.inst); !ok {
		return mdnsNames{}, fmt.Errorf("mdns responder: hostname %q makes an invalid instance name", host)
	}
	return n, nil
}

// escapeLabel escapes a label's dots and backslashes in presentation form.
func escapeLabel(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.' || c == '\\' || c == '"' || c == '(' || c == ')' || c == ';' || c == ' ' || c == '@' || c == '$':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < ' ' || c > '~':
			fmt.Fprintf(&b, "\\%03d", c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// interfaceAddrs lists ifi's unicast IPv4 and IPv6 addresses.
func interfaceAddrs(ifi *net.Interface) []net.IP {
	addrs, err := ifi.Addrs()
	if err != nil {
		return nil
	}
	var ips []net.IP
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && !n.IP.IsMulticast() {
			ips = append(ips, n.IP)
		}
	}
	return ips
}

// debugWriter turns hashicorp/mdns's log.Logger lines into slog debug logs.
type debugWriter struct{ l *slog.Logger }

func (w debugWriter) Write(p []byte) (int, error) {
	w.l.Debug("hashicorp/mdns", "detail", strings.TrimSpace(string(p)))
	return len(p), nil
}
