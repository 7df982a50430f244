package mdns

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	hmdns "github.com/hashicorp/mdns"

	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/nixrb-discover/nixrb-discover/wire"
)

// Defaults of Source.
const (
	// DefaultMDNSQueryInterval is the mean time between browse queries.
	// Builders appear through their announcements (within milliseconds);
	// queries find builders that were up before the client and refresh
	// entries, so they can be rare: idle cost is one query per interface
	// per interval and one answer per builder.
	DefaultMDNSQueryInterval = 20 * time.Second
	// DefaultMDNSQueryTimeout is how long one query collects answers.
	DefaultMDNSQueryTimeout = time.Second
	// DefaultMDNSMaxEntries bounds the candidates the source holds.
	DefaultMDNSMaxEntries = 256
)

// Source finds builders on the local link by mDNS (DNS-SD service
// _nix-builder._tcp) on chosen interfaces. It combines periodic
// hashicorp/mdns queries (to find builders already up) with a passive
// listener on the mDNS group that receives announcements and goodbyes (so
// a new builder or a changed advert arrives in milliseconds, without fast
// polling). Entries expire by their TTL.
//
// An advert is trusted only when wire.Verify accepts its fleet-key
// signature (TrustKeys), or when its host key is pinned for the instance
// name (Pins). Trusted candidates are keyed by the host key's fingerprint,
// so a rogue reusing a builder's name can neither replace nor remove it.
// A goodbye is only a hint (Snapshot.Recheck); a builder leaves cleanly
// with a signed advert that says Draining, which is emitted as is.
//
// Set the fields before Run. Sockets are created on the goroutine that
// calls Run (so a test can run it inside a network namespace).
type Source struct {
	// Interfaces names the interfaces to browse on; required.
	Interfaces []string
	// TrustKeys are the fleet public keys whose signatures are trusted
	// (--trust-key).
	TrustKeys []wire.TrustKey
	// Pins are host keys trusted for a name (--pin, --pin-file); may be nil.
	Pins *Pins
	// MaxAge bounds how old a signed advert may be (wire.DefaultMaxAge
	// when zero).
	MaxAge time.Duration
	// QueryInterval is the mean time between queries, jittered by ±25%
	// (DefaultMDNSQueryInterval when zero).
	QueryInterval time.Duration
	// QueryTimeout is how long each query collects answers
	// (DefaultMDNSQueryTimeout when zero). Run may take this long to
	// return after its context ends: hashicorp/mdns's query only returns
	// at its timeout.
	QueryTimeout time.Duration
	// MaxEntries bounds the candidates held (DefaultMDNSMaxEntries when
	// zero); each interface may fill at most its share, and untrusted
	// entries give way to trusted ones.
	MaxEntries int
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
}

// Name returns "mdns".
func (s *Source) Name() string { return discover.SourceMDNS }

// mdnsEvent is what the loop receives: observations from one packet or
// query answer, or the end of the first query round.
type mdnsEvent struct {
	obs       []mdnsObs
	firstDone bool
}

// Run browses until ctx is done and returns nil then; it returns an error
// at once when the configuration is unusable (no interfaces, an interface
// that does not exist, no mDNS socket).
func (s *Source) Run(ctx context.Context, emit func(discover.Snapshot)) error {
	if len(s.Interfaces) == 0 {
		return errors.New("mdns source: no interfaces given (set Interfaces)")
	}
	logger := s.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "mdns", "source", "mdns")
	var ifis []*net.Interface
	for _, name := range s.Interfaces {
		ifi, err := net.InterfaceByName(name)
		if err != nil {
			return fmt.Errorf("mdns source: interface %q: %w", name, err)
		}
		ifis = append(ifis, ifi)
	}
	maxEntries := orDefault(s.MaxEntries, DefaultMDNSMaxEntries)
	maxAge := orDefault(s.MaxAge, wire.DefaultMaxAge)
	state := newMDNSState(s.TrustKeys, s.Pins, maxAge, wire.DefaultMDNSTTL,
		maxEntries, max(1, maxEntries/len(ifis)))

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := make(chan mdnsEvent, 64)
	var wg sync.WaitGroup
	lis, err := listenMDNS(ifis)
	if err != nil {
		return fmt.Errorf("mdns source: %w", err)
	}
	lis.start(ctx, &wg, events, logger)
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.loop(ctx, state, events, emit, logger)
	}()
	s.queryLoop(ctx, ifis, events, logger)
	cancel()
	lis.close() // ends the readers
	wg.Wait()
	return nil
}

// loop owns state: it applies events, expires entries at their time and
// emits snapshots. It is the only caller of emit.
func (s *Source) loop(ctx context.Context, state *mdnsState, events <-chan mdnsEvent, emit func(discover.Snapshot), logger *slog.Logger) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	force := false
	for {
		if next := state.nextExpiry(); !next.IsZero() {
			timer.Reset(time.Until(next) + 10*time.Millisecond)
		} else {
			timer.Reset(time.Hour)
		}
		select {
		case <-ctx.Done():
			return
		case ev := <-events:
			now := time.Now()
			s.apply(now, state, ev, &force)
			for more := true; more; { // coalesce what is already queued
				select {
				case ev := <-events:
					s.apply(now, state, ev, &force)
				default:
					more = false
				}
			}
			state.expire(now)
		case <-timer.C:
			state.expire(time.Now())
		}
		if snap, ok := state.snapshot(force); ok {
			logger.Debug("mdns candidates changed", "candidates", len(snap.Candidates), "recheck", len(snap.Recheck))
			emit(snap)
		}
	}
}

func (s *Source) apply(now time.Time, state *mdnsState, ev mdnsEvent, force *bool) {
	if ev.firstDone {
		*force = true
	}
	for _, o := range ev.obs {
		state.observe(now, o)
	}
}

// queryLoop sends hashicorp/mdns queries on every interface: at once, a
// second later (RFC 6762 section 5.2), then every QueryInterval ±25%.
func (s *Source) queryLoop(ctx context.Context, ifis []*net.Interface, events chan<- mdnsEvent, logger *slog.Logger) {
	interval := orDefault(s.QueryInterval, DefaultMDNSQueryInterval)
	timeout := orDefault(s.QueryTimeout, DefaultMDNSQueryTimeout)
	qlog := log.New(debugLog{logger}, "", 0)
	for round := 0; ; round++ {
		for _, ifi := range ifis {
			s.query(ctx, ifi, timeout, events, qlog, logger)
		}
		if round == 0 {
			select {
			case events <- mdnsEvent{firstDone: true}:
			case <-ctx.Done():
			}
		}
		wait := time.Second
		if round > 0 {
			wait = time.Duration(float64(interval) * (0.75 + 0.5*rand.Float64()))
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// query runs one hashicorp/mdns query on ifi and forwards its answers.
// The library's querier sends answers without blocking (so the channel is
// buffered), keeps writing to an entry after sending it (so entries are
// read only once the query has returned), does not filter by service type
// (done here) and carries no TTLs (the state keeps the last TTL it saw on
// the wire, or DefaultMDNSTTL). Its multicast socket also hears other
// interfaces, so answers whose addresses are not on ifi are dropped.
func (s *Source) query(ctx context.Context, ifi *net.Interface, timeout time.Duration, events chan<- mdnsEvent, qlog *log.Logger, logger *slog.Logger) {
	if ctx.Err() != nil {
		return
	}
	onLink := interfacePrefixes(ifi)
	entries := make(chan *hmdns.ServiceEntry, 64)
	err := hmdns.QueryContext(ctx, &hmdns.QueryParam{
		Service:   wire.MDNSService,
		Domain:    "local",
		Timeout:   timeout,
		Interface: ifi,
		Entries:   entries,
		Logger:    qlog,
	})
	close(entries) // the query has returned: the library sends no more
	if err != nil && ctx.Err() == nil {
		logger.Warn("mdns query failed", "iface", ifi.Name, "err", err)
	}
	var obs []mdnsObs
	for e := range entries {
		if o, ok := entryObs(e, ifi.Name, onLink); ok {
			obs = append(obs, o)
		}
	}
	if len(obs) > 0 {
		select {
		case events <- mdnsEvent{obs: obs}:
		case <-ctx.Done():
		}
	}
}

// interfacePrefixes lists the IP prefixes on ifi.
func interfacePrefixes(ifi *net.Interface) []netip.Prefix {
	addrs, err := ifi.Addrs()
	if err != nil {
		return nil
	}
	var out []netip.Prefix
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if p, err := netip.ParsePrefix(n.String()); err == nil {
				out = append(out, p.Masked())
			}
		}
	}
	return out
}

// entryObs turns a hashicorp/mdns answer into an observation, if it is an
// instance of our service.
func entryObs(e *hmdns.ServiceEntry, iface string, onLink []netip.Prefix) (mdnsObs, bool) {
	inst, ok := instanceLabel(e.Name, mdnsServiceName())
	if !ok || e.Port <= 0 || e.Port > 65535 || len(e.InfoFields) > wire.MaxTXTStrings {
		return mdnsObs{}, false
	}
	o := mdnsObs{instance: inst, iface: iface, hasSRV: true, port: uint16(e.Port), hasTXT: true, txt: e.InfoFields}
	linked := func(a netip.Addr) bool {
		if a.IsLinkLocalUnicast() {
			return true
		}
		for _, p := range onLink {
			if p.Contains(a) {
				return true
			}
		}
		return false
	}
	if a, ok := netip.AddrFromSlice(e.AddrV4.To4()); ok && e.AddrV4 != nil && linked(a) {
		o.addrs = append(o.addrs, a)
	}
	if e.AddrV6IPAddr != nil {
		if a, ok := netip.AddrFromSlice(e.AddrV6IPAddr.IP.To16()); ok && linked(a) {
			if a.IsLinkLocalUnicast() {
				a = a.WithZone(iface)
			}
			o.addrs = append(o.addrs, a)
		}
	}
	if len(o.addrs) == 0 {
		return mdnsObs{}, false
	}
	o.src = o.addrs[0] // hashicorp/mdns does not tell the packet's source
	return o, true
}

// debugLog turns hashicorp/mdns's log lines into slog debug records.
type debugLog struct{ l *slog.Logger }

func (w debugLog) Write(p []byte) (int, error) {
	w.l.Debug("hashicorp/mdns", "detail", strings.TrimSpace(string(p)))
	return len(p), nil
}

func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}
