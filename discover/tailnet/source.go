package tailnet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/nixrb-discover/nixrb-discover/discover"
	"tailscale.com/client/local"
	"tailscale.com/ipn"
)

// Address modes of Source: what goes into Candidate.Address.
const (
	AddressMagicDNS = "magicdns" // the peer's MagicDNS FQDN (default)
	AddressIP       = "ip"       // the peer's tailnet IP (IPv4 when it has one)
)

// DefaultBuilderTag is the tag that marks a tailnet peer as a builder.
const DefaultBuilderTag = "tag:nix-builder"

// Defaults of Source.
const (
	DefaultTailnetFetchTimeout = 2 * time.Second
	DefaultTailnetRefresh      = 5 * time.Second
)

// tnBusMask asks for the initial peer list (InitialStatus, with the
// backend state) and then every peer change: whole nodes in PeersChanged,
// removals in PeersRemoved and, as production tailscaled sends
// online/offline, narrow PeerChangedPatch entries.
const tnBusMask = ipn.NotifyInitialState | ipn.NotifyInitialStatus |
	ipn.NotifyPeerChanges | ipn.NotifyPeerPatches

// LocalAPI is the part of the tailscaled LocalAPI the tailnet source
// uses. *local.Client satisfies it, against the system tailscaled or as a
// tsnet node's LocalClient.
type LocalAPI interface {
	WatchIPNBus(ctx context.Context, mask ipn.NotifyWatchOpt) (*local.IPNBusWatcher, error)
}

var _ LocalAPI = (*local.Client)(nil)

// Source finds builders among the peers of the local tailscaled:
// online peers that carry one of Tags or are named in Builders. Peer
// changes arrive on the IPN bus (no polling). For each candidate it fetches
// GET /v1/advert from the peer's tailnet IP through Dial, so the advert is
// authenticated by the WireGuard identity of the peer it came from; the
// address written for Nix always comes from the netmap, never from the
// advert.
//
// Fetches run concurrently in a bounded pool with a short timeout; each
// advert is emitted as soon as it arrives. A peer that refuses the
// connection (up, its agent not listening yet) is asked again every
// 250–500 ms for a minute after it came online or its agent went away, so
// that an agent starting late is seen within half a second; peers that
// time out are retried with capped backoff in a smaller share of the
// pool, so that a tailnet full of dead builders cannot delay a live one
// (see retry.go). An unchanged set is not re-emitted.
//
// A builder whose advert came with an ETag is then long-polled (GET
// /v1/advert?wait=<etag>, one held request per builder, outside the pool):
// its advert changes, such as the draining advert of a clean stop, are
// emitted as soon as it publishes them. A poll that breaks (agent stopped
// or restarting) is followed at once by a fetch, under the usual backoff;
// the last good advert is kept through a few failed fetches. Builders
// that send no ETag are re-fetched every Refresh. When tailscaled goes away, Run emits a Snapshot with
// Err and re-subscribes with capped backoff.
//
// Set the fields, then call Run once.
type Source struct {
	// LocalAPI is the tailscaled LocalAPI (&local.Client{} in production).
	LocalAPI LocalAPI
	// Dial connects to a tailnet address. In production a net.Dialer's
	// DialContext (the kernel routes tailnet IPs through tailscale0); in
	// tests tsnet.Server.Dial.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Tags mark builders; nil means [DefaultBuilderTag].
	Tags []string
	// Builders are MagicDNS names, short ("b1") or full, of peers that are
	// builders whatever their tags.
	Builders []string
	// Address is AddressMagicDNS (default) or AddressIP.
	Address string
	// AdvertPort is the builders' advert port; 0 means
	// wire.DefaultAdvertPort.
	AdvertPort int
	// FetchTimeout bounds one advert fetch; 0 means 2 s.
	FetchTimeout time.Duration
	// Refresh is how often the adverts of answering candidates that
	// cannot be long-polled are re-fetched, to see draining and capacity
	// changes; 0 means 5 s.
	Refresh time.Duration
	// Logger receives source up/down and fetch failures; nil discards.
	Logger *slog.Logger
}

// Name returns "tailnet".
func (s *Source) Name() string { return discover.SourceTailnet }

// busEvent is one thing the IPN bus watcher tells the loop: a notification,
// or that the bus is down (err).
type busEvent struct {
	n   *ipn.Notify
	err error
}

// Run watches the tailnet until ctx is done; see [Source].
func (s *Source) Run(ctx context.Context, emit func(discover.Snapshot)) error {
	if s.LocalAPI == nil || s.Dial == nil {
		return errors.New("tailnet source: LocalAPI and Dial must be set")
	}
	switch s.Address {
	case "", AddressMagicDNS, AddressIP:
	default:
		return fmt.Errorf("tailnet source: address mode %q is not %q or %q", s.Address, AddressMagicDNS, AddressIP)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	l := s.newLoop(emit)
	bus := make(chan busEvent)
	var wg sync.WaitGroup
	wg.Go(func() { s.watch(ctx, l.log, bus) })
	l.run(ctx, &wg, bus)
	cancel()
	wg.Wait() // the watcher and every fetch have returned
	l.client.CloseIdleConnections()
	l.pollc.CloseIdleConnections()
	return nil
}

// watch subscribes to the IPN bus and forwards what it says to bus until
// ctx is done, re-subscribing with capped backoff when tailscaled goes away
// and at once when its backend returns to Running.
func (s *Source) watch(ctx context.Context, log *slog.Logger, bus chan<- busEvent) {
	send := func(ev busEvent) bool {
		select {
		case bus <- ev:
			return true
		case <-ctx.Done():
			return false
		}
	}
	failures := 0
	for ctx.Err() == nil {
		if failures > 0 {
			select {
			case <-time.After(tnBusBackoff(failures)):
			case <-ctx.Done():
				return
			}
		}
		w, err := s.LocalAPI.WatchIPNBus(ctx, tnBusMask)
		if err != nil {
			failures++
			if !send(busEvent{err: fmt.Errorf("tailscaled local api: watch ipn bus: %w", err)}) {
				return
			}
			continue
		}
		ok, resubscribe, delivered := s.follow(w, send)
		w.Close()
		if !ok {
			return
		}
		switch {
		case resubscribe:
			failures = 0 // backend Running again: fresh InitialStatus at once
		case delivered:
			failures = 1 // the bus worked, then broke: retry soon
		default:
			failures++
		}
		log.Debug("re-subscribing to ipn bus", "attempt", failures)
	}
}

// follow reads one bus subscription until it breaks. It reports whether
// the loop is still listening (ok), whether to re-subscribe at once
// because the backend became Running again (fresh InitialStatus), and
// whether the subscription delivered anything.
func (s *Source) follow(w *local.IPNBusWatcher, send func(busEvent) bool) (ok, resubscribe, delivered bool) {
	notRunning := false
	for {
		n, err := w.Next()
		if err != nil {
			return send(busEvent{err: fmt.Errorf("tailscaled local api: ipn bus: %w", err)}), false, delivered
		}
		if n.ErrMessage != nil {
			return send(busEvent{err: fmt.Errorf("tailscaled: %s", *n.ErrMessage)}), false, delivered
		}
		state := ""
		if n.State != nil {
			state = n.State.String()
		}
		if n.InitialStatus != nil && n.InitialStatus.BackendState != "" {
			state = n.InitialStatus.BackendState
		}
		switch {
		case state == "":
		case state != ipn.Running.String():
			notRunning = true
			if !send(busEvent{err: fmt.Errorf("tailscaled is %s, not Running", state)}) {
				return false, false, delivered
			}
			continue
		case notRunning:
			return true, true, delivered
		}
		if n.InitialStatus == nil && len(n.PeersChanged) == 0 && len(n.PeerChangedPatch) == 0 && len(n.PeersRemoved) == 0 {
			continue
		}
		if !send(busEvent{n: &n}) {
			return false, false, delivered
		}
		delivered = true
	}
}

// tnBusBackoff is the wait before the attempt-th re-subscription:
// 100 ms doubling, capped at 1 s. A refused connection to the local
// socket costs no packets, and a restarted tailscaled is followed within
// a second of its socket coming back.
func tnBusBackoff(attempt int) time.Duration {
	if attempt <= 0 {
		return 0
	}
	d := 100 * time.Millisecond << min(attempt-1, 6)
	return min(d, time.Second)
}

// newHTTPClient is the advert fetcher: every connection through Dial, no
// proxy, no keep-alive (a fetch every few seconds does not need one, and a
// connection never outlives the peer it was made to).
func (s *Source) newHTTPClient(timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DialContext:            s.Dial,
			Proxy:                  nil,
			DisableKeepAlives:      true,
			ResponseHeaderTimeout:  timeout,
			MaxResponseHeaderBytes: 16 << 10,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return errors.New("advert fetch: redirects are not followed")
		},
	}
}
