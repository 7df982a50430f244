package advertise

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nixrb-discover/nixrb-discover/wire"
	"tailscale.com/client/local"
	"tailscale.com/client/tailscale/apitype"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/tailcfg"
)

// Long polls: GET /v1/advert?wait=<etag> is held while <etag> is the
// current advert's ETag, until the advert changes or the bound passes.
const (
	// DefaultAdvertWait is how long TailnetServer holds a long poll.
	DefaultAdvertWait = 25 * time.Second
	// DefaultMaxWaiters bounds the long polls held at once.
	DefaultMaxWaiters = 1024
	// stopFlush bounds how long Run, on its way out, waits for the last
	// answers to reach the waiters before it closes every connection.
	stopFlush = 50 * time.Millisecond
)

// defaultRebindInterval is how often TailnetServer re-reads the node's
// tailnet addresses (one LocalAPI Status call without peers).
const defaultRebindInterval = 5 * time.Second

// LocalAPI is the part of the tailscaled LocalAPI that TailnetServer uses.
// *local.Client (tailscale.com/client/local) satisfies it, both against the
// system tailscaled and as a tsnet node's LocalClient.
type LocalAPI interface {
	StatusWithoutPeers(ctx context.Context) (*ipnstate.Status, error)
	WhoIs(ctx context.Context, remoteAddr string) (*apitype.WhoIsResponse, error)
}

var _ LocalAPI = (*local.Client)(nil)

// TailnetServer serves this builder's advert over the tailnet: GET
// /v1/advert on Port, bound only to this node's tailnet addresses (and
// rebound when they change). Every request is identified with the LocalAPI
// WhoIs: a caller that is not a tailnet peer, or lacks AllowTags/AllowCaps
// when those are set, gets 403. Handlers see the caller with
// [CallerFromContext].
//
// Every answer carries a strong ETag of the advert. GET
// /v1/advert?wait=<etag> is a long poll: it answers at once when <etag> is
// not the current one, and otherwise holds until [TailnetServer.Publish]
// says the advert changed or Wait passes, then answers with the current
// advert. When Run stops, held polls get the current advert (the agent's
// draining one) before the connections close.
//
// Set the fields, call Handle for extra endpoints, then call Run once.
type TailnetServer struct {
	// LocalAPI identifies callers and lists this node's addresses.
	LocalAPI LocalAPI
	// Listen opens a listener: net.Listen in production (the kernel binds
	// tailnet addresses through tailscale0), tsnet.Server.Listen in tests.
	Listen func(network, addr string) (net.Listener, error)
	// Advert returns the current advert as JSON (EncodeJSON output).
	Advert func() ([]byte, error)
	// Port is the TCP port; 0 means DefaultAdvertPort.
	Port int
	// ListenAddr, when set, is the only address listened on ("host:port")
	// instead of the tailnet addresses; callers are still checked by WhoIs.
	ListenAddr string
	// AllowTags, when set with AllowCaps or alone, admits only callers
	// that carry one of these tags (or one of AllowCaps).
	AllowTags []string
	// AllowCaps, when set, admits callers granted one of these peer
	// capabilities (or carrying one of AllowTags).
	AllowCaps []tailcfg.PeerCapability
	// RebindInterval is how often the tailnet addresses are re-read;
	// 0 means 5 s.
	RebindInterval time.Duration
	// Wait is how long a long poll is held while its ETag is current;
	// 0 means DefaultAdvertWait, and more than MaxAdvertWait is capped.
	Wait time.Duration
	// MaxWaiters bounds the long polls held at once; more get 503.
	// 0 means DefaultMaxWaiters.
	MaxWaiters int
	// Logger receives refusals and bind changes; nil discards.
	Logger *slog.Logger

	mu      sync.Mutex
	mux     *http.ServeMux
	changed chan struct{} // closed by Publish; nil while nobody waits
	waiters atomic.Int64  // long polls held now
}

// Publish wakes the long polls after the value Advert returns changed:
// each re-reads Advert and answers if its ETag moved. It is cheap and safe
// from any goroutine, before and during Run.
func (s *TailnetServer) Publish() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.changed != nil {
		close(s.changed)
		s.changed = nil
	}
}

// changedChan returns the channel the next Publish closes.
func (s *TailnetServer) changedChan() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.changed == nil {
		s.changed = make(chan struct{})
	}
	return s.changed
}

// Handle registers h for pattern (http.ServeMux syntax, e.g. "POST
// /v1/enroll") behind the same WhoIs check. Call it before Run.
func (s *TailnetServer) Handle(pattern string, h http.Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mux == nil {
		s.mux = http.NewServeMux()
	}
	s.mux.Handle(pattern, h)
}

// Run serves until ctx is done. Then it answers every held long poll with
// the current advert, gives those answers at most 50 ms to leave, closes
// every listener and connection and returns nil. It returns an error only
// for a bad configuration or when ListenAddr cannot be bound.
func (s *TailnetServer) Run(ctx context.Context) error {
	if s.LocalAPI == nil || s.Listen == nil || s.Advert == nil {
		return errors.New("tailnet server: LocalAPI, Listen and Advert must be set")
	}
	log := s.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "tailnet-server")
	port := s.Port
	if port == 0 {
		port = wire.DefaultAdvertPort
	}
	wait := min(s.Wait, wire.MaxAdvertWait)
	if wait <= 0 {
		wait = DefaultAdvertWait
	}
	maxWaiters := s.MaxWaiters
	if maxWaiters <= 0 {
		maxWaiters = DefaultMaxWaiters
	}
	stopping := make(chan struct{})
	s.Handle("GET "+wire.AdvertPath, s.serveAdvert(log, wait, int64(maxWaiters), stopping))
	s.mu.Lock()
	mux := s.mux
	s.mu.Unlock()

	// Read and write deadlines cover a whole request, so both must
	// outlast a held long poll; headers must still come fast.
	srv := &http.Server{
		Handler:           s.identify(log, mux),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       wait + 10*time.Second,
		WriteTimeout:      wait + 10*time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		// Requests outlive ctx by the stop's flush, so that held long
		// polls can still answer.
		BaseContext: func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	b := &binder{srv: srv, listen: s.Listen, log: log, lns: map[string]net.Listener{}}
	defer b.closeAll()
	stop := func() {
		close(stopping) // held long polls answer with the current advert
		fctx, cancel := context.WithTimeout(context.Background(), stopFlush)
		defer cancel()
		srv.Shutdown(fctx) // closes the listeners, waits for those answers
		srv.Close()
	}

	if s.ListenAddr != "" {
		if err := b.bind(s.ListenAddr); err != nil {
			srv.Close()
			return fmt.Errorf("tailnet server: %w", err)
		}
		<-ctx.Done()
		stop()
		return nil
	}

	every := s.RebindInterval
	if every <= 0 {
		every = defaultRebindInterval
	}
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			stop()
			return nil
		case <-t.C:
		}
		addrs, err := s.tailnetAddrs(ctx, port)
		if err != nil {
			if ctx.Err() == nil {
				log.Warn("cannot read tailnet addresses", "err", err)
			}
		} else {
			b.sync(addrs)
		}
		t.Reset(every)
	}
}

// tailnetAddrs returns "ip:port" for each of this node's tailnet addresses.
func (s *TailnetServer) tailnetAddrs(ctx context.Context, port int) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := s.LocalAPI.StatusWithoutPeers(ctx)
	if err != nil {
		return nil, fmt.Errorf("local api status: %w", err)
	}
	ips := st.TailscaleIPs
	if len(ips) == 0 && st.Self != nil {
		ips = st.Self.TailscaleIPs
	}
	var out []string
	for _, ip := range ips {
		out = append(out, net.JoinHostPort(ip.String(), strconv.Itoa(port)))
	}
	return out, nil
}

// binder keeps one listener per wanted address, all served by srv.
type binder struct {
	srv    *http.Server
	listen func(network, addr string) (net.Listener, error)
	log    *slog.Logger
	lns    map[string]net.Listener
}

func (b *binder) bind(addr string) error {
	ln, err := b.listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	b.lns[addr] = ln
	b.log.Info("serving advert", "addr", addr)
	go func() {
		err := b.srv.Serve(ln)
		if err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			b.log.Warn("serve stopped", "addr", addr, "err", err)
		}
	}()
	return nil
}

// sync binds new addresses and closes listeners on addresses that went away.
func (b *binder) sync(want []string) {
	for addr, ln := range b.lns {
		if !slices.Contains(want, addr) {
			ln.Close()
			delete(b.lns, addr)
			b.log.Info("stopped serving advert", "addr", addr)
		}
	}
	for _, addr := range want {
		if _, ok := b.lns[addr]; ok {
			continue
		}
		if err := b.bind(addr); err != nil {
			b.log.Warn("cannot bind tailnet address", "err", err)
		}
	}
}

func (b *binder) closeAll() {
	for addr, ln := range b.lns {
		ln.Close()
		delete(b.lns, addr)
	}
}

// serveAdvert answers GET /v1/advert, holding it while ?wait= names the
// current ETag (a long poll) until Publish, the wait bound or stopping.
func (s *TailnetServer) serveAdvert(log *slog.Logger, wait time.Duration, maxWaiters int64, stopping <-chan struct{}) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		old, poll := r.URL.Query()["wait"]
		var bound <-chan time.Time
		for {
			changed := s.changedChan() // before Advert: no Publish is missed
			body, err := s.Advert()
			if err != nil {
				log.Error("cannot make advert", "err", err)
				http.Error(w, "advert unavailable", http.StatusInternalServerError)
				return
			}
			etag := advertETag(body)
			if !poll || strings.Trim(old[0], `"`) != strings.Trim(etag, `"`) {
				writeAdvert(w, body, etag)
				return
			}
			if bound == nil {
				if s.waiters.Add(1) > maxWaiters {
					s.waiters.Add(-1)
					log.Warn("refused long poll", "remote", r.RemoteAddr, "reason", "too many waiters", "max", maxWaiters)
					w.Header().Set("Retry-After", "5")
					http.Error(w, "too many long polls", http.StatusServiceUnavailable)
					return
				}
				defer s.waiters.Add(-1)
				t := time.NewTimer(wait)
				defer t.Stop()
				bound = t.C
			}
			select {
			case <-changed:
			case <-bound:
				poll = false // answer with the advert as it is now
			case <-stopping:
				poll = false // the agent has published its leaving advert
			case <-r.Context().Done():
				return
			}
		}
	}
}

func writeAdvert(w http.ResponseWriter, body []byte, etag string) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("ETag", etag)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.Write(body)
}

// advertETag is the strong ETag of an advert's JSON: the quoted hex of
// the first 128 bits of its SHA-256.
func advertETag(body []byte) string {
	sum := sha256.Sum256(body)
	return `"` + hex.EncodeToString(sum[:16]) + `"`
}

// Caller is the tailnet peer behind a request, as the LocalAPI WhoIs told.
type Caller struct {
	// Name is the peer's MagicDNS name without the trailing dot.
	Name string
	// NodeID is the peer's stable node ID.
	NodeID tailcfg.StableNodeID
	// Addr is the peer's address and port the request came from.
	Addr netip.AddrPort
	// Tags are the peer's ACL tags; nil when untagged.
	Tags []string
	// Caps are the peer capabilities granted to the peer for this node.
	Caps tailcfg.PeerCapMap
}

type callerKey struct{}

// CallerFromContext returns the caller TailnetServer identified for the
// request whose context is ctx.
func CallerFromContext(ctx context.Context) (*Caller, bool) {
	c, ok := ctx.Value(callerKey{}).(*Caller)
	return c, ok
}

// identify admits only tailnet peers that pass the tag/cap policy and puts
// their Caller in the request context. Everything else is refused with a
// logged reason: 403 for a non-peer or a peer the policy refuses, 503 when
// the LocalAPI cannot answer (deny by default).
func (s *TailnetServer) identify(log *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		who, err := s.LocalAPI.WhoIs(ctx, r.RemoteAddr)
		cancel()
		switch {
		case errors.Is(err, local.ErrPeerNotFound):
			log.Warn("refused request", "remote", r.RemoteAddr, "path", r.URL.Path, "reason", "not a tailnet peer")
			http.Error(w, "forbidden: not a tailnet peer", http.StatusForbidden)
			return
		case err != nil:
			log.Warn("refused request", "remote", r.RemoteAddr, "path", r.URL.Path, "reason", "whois failed", "err", err)
			http.Error(w, "cannot identify caller", http.StatusServiceUnavailable)
			return
		case who == nil || who.Node == nil:
			log.Warn("refused request", "remote", r.RemoteAddr, "path", r.URL.Path, "reason", "whois returned no node")
			http.Error(w, "forbidden: not a tailnet peer", http.StatusForbidden)
			return
		}
		c := &Caller{
			Name:   strings.TrimSuffix(who.Node.Name, "."),
			NodeID: who.Node.StableID,
			Tags:   slices.Clone(who.Node.Tags),
			Caps:   who.CapMap,
		}
		c.Addr, _ = netip.ParseAddrPort(r.RemoteAddr)
		if !s.admits(c) {
			log.Warn("refused request", "remote", r.RemoteAddr, "caller", c.Name, "tags", c.Tags,
				"path", r.URL.Path, "reason", "caller lacks an allowed tag or capability")
			http.Error(w, "forbidden: caller lacks an allowed tag or capability", http.StatusForbidden)
			return
		}
		log.Debug("request", "caller", c.Name, "path", r.URL.Path)
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), callerKey{}, c)))
	})
}

// admits reports whether c passes AllowTags/AllowCaps: with neither set,
// every tailnet peer passes; otherwise c needs any listed tag or cap.
func (s *TailnetServer) admits(c *Caller) bool {
	if len(s.AllowTags) == 0 && len(s.AllowCaps) == 0 {
		return true
	}
	for _, t := range c.Tags {
		if slices.Contains(s.AllowTags, t) {
			return true
		}
	}
	for _, cp := range s.AllowCaps {
		if c.Caps.HasCapability(cp) {
			return true
		}
	}
	return false
}
