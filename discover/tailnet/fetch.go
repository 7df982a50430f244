package tailnet

import (
	"context"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"tailscale.com/tailcfg"

	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/nixrb-discover/nixrb-discover/wire"
)

// Fetch pool limits: at most tnMaxFetches adverts in flight, of which at
// most tnMaxRetryFetches for peers whose last fetch failed slowly (timed
// out), so that dead builders can never hold the slots a new builder
// needs; quick retries (connection refused) return in milliseconds.
const (
	tnMaxFetches      = 128
	tnMaxRetryFetches = 16
	// tnStaleAfter is how many refresh failures in a row a candidate with a
	// good advert rides out before it gets a Problem (one lost fetch is
	// not a dead builder; the SSH health check is the judge of that).
	tnStaleAfter = 3
)

// tnRetryBackoff is the wait before re-fetching a peer after its n-th slow
// failure in a row (see retry.go): 1 s doubling, capped at 60 s.
func tnRetryBackoff(n int) time.Duration {
	return min(time.Second<<min(max(n-1, 0), 6), time.Minute)
}

// tnEntry is one candidate peer and its advert state.
type tnEntry struct {
	seq      uint64 // identifies this entry's fetch results
	peer     *tnPeer
	reason   string
	advert   *wire.Advert
	lastErr  string // Problem text of the last failed fetch
	fetched  bool   // a first fetch has finished (success or not)
	failures int    // failed fetches in a row
	due      time.Time
	inflight bool

	// Retry state (see retry.go).
	quick        bool      // the last failure was quick (refused, reset)
	slowFails    int       // failures in a row that backed off
	fastUntil    time.Time // quick failures are retried fast until then
	failingSince time.Time // when the failures in a row began
	stale        bool      // a good advert, but failing for a while: Problem

	// Long poll state (see tailnet_poll.go).
	etag       string             // ETag of advert; "" means fetch, not poll
	polling    bool               // a long poll is outstanding
	cancelPoll context.CancelFunc // cancels it
	pollFails  int                // failed long polls in a row
}

// fetchResult is what a fetch or long-poll goroutine hands back to the loop.
type fetchResult struct {
	id     tailcfg.NodeID
	seq    uint64
	retry  bool      // counted in tnLoop.retrying (a slow retry)
	poll   bool      // a long poll, counted in tnLoop.polling
	sent   string    // the ETag a long poll waited on
	start  time.Time // when a long poll was sent
	advert *wire.Advert
	etag   string
	err    error
}

// tnLoop is the source's state, owned by one goroutine (no locks).
type tnLoop struct {
	s        *Source
	emit     func(discover.Snapshot)
	log      *slog.Logger
	client   *http.Client
	pollc    *http.Client
	tags     []string
	port     string
	refresh  time.Duration
	peers    tnPeers
	suffix   string // this tailnet's MagicDNS suffix, from InitialStatus
	entries  map[tailcfg.NodeID]*tnEntry
	seq      uint64
	inflight int
	retrying int // in-flight slow retries (see slowRetry)
	polling  int // outstanding long polls (outside the fetch pool)
	results  chan fetchResult
	started  bool               // the bus has said something (up or down)
	dirty    bool               // something a snapshot shows may have changed
	settle   time.Duration      // how long snapshots may be Partial after the start
	settleBy time.Time          // then: first fetches still running no longer count
	down     error              // non-nil while the IPN bus is down
	last     *discover.Snapshot // last emitted
}

// tnSettle bounds how long, after the source starts, its snapshots stay
// Partial while first advert fetches run: a live builder answers in a few
// milliseconds, so this only waits for stragglers, and a tailnet full of
// dead builders delays the client's first write by no more than this.
const tnSettle = time.Second

func (s *Source) newLoop(emit func(discover.Snapshot)) *tnLoop {
	log := s.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	timeout := s.FetchTimeout
	if timeout <= 0 {
		timeout = DefaultTailnetFetchTimeout
	}
	l := &tnLoop{
		s:       s,
		emit:    emit,
		log:     log.With("source", s.Name()),
		client:  s.newHTTPClient(timeout),
		pollc:   s.newPollClient(timeout),
		tags:    s.Tags,
		port:    strconv.Itoa(wire.DefaultAdvertPort),
		refresh: s.Refresh,
		settle:  min(timeout, tnSettle),
		peers:   tnPeers{},
		entries: map[tailcfg.NodeID]*tnEntry{},
		results: make(chan fetchResult, tnMaxFetches+tnMaxPolls),
	}
	if l.tags == nil {
		l.tags = []string{DefaultBuilderTag}
	}
	if s.AdvertPort > 0 {
		l.port = strconv.Itoa(s.AdvertPort)
	}
	if l.refresh <= 0 {
		l.refresh = DefaultTailnetRefresh
	}
	return l
}

// run is the source's loop; fetch goroutines are counted in wg.
func (l *tnLoop) run(ctx context.Context, wg *sync.WaitGroup, bus <-chan busEvent) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		now := time.Now()
		l.dispatch(ctx, wg, now)
		l.maybeEmit()
		next, ok := l.nextDue()
		if l.last != nil && l.last.Partial && (!ok || l.settleBy.Before(next)) {
			next, ok = l.settleBy, true // emit the settled snapshot then
		}
		if ok {
			timer.Reset(max(next.Sub(now), 0))
		} else {
			timer.Stop()
		}
		select {
		case <-ctx.Done():
			return
		case ev := <-bus:
			l.onBus(ev)
		case r := <-l.results:
			if r.poll {
				l.onPollResult(r, time.Now())
			} else {
				l.onResult(r, time.Now())
			}
		case <-timer.C:
		}
	}
}

func (l *tnLoop) onBus(ev busEvent) {
	l.dirty = true
	if !l.started {
		l.settleBy = time.Now().Add(l.settle)
	}
	l.started = true
	if ev.err != nil {
		if l.down == nil || l.down.Error() != ev.err.Error() {
			l.log.Warn("tailnet source down", "err", ev.err)
		}
		l.down = ev.err
		return
	}
	back := false
	if ev.n.InitialStatus != nil {
		if l.down != nil {
			l.log.Info("tailnet source up again", "peers", len(ev.n.InitialStatus.Peer))
			back = true
		}
		l.down = nil
	}
	now := time.Now()
	resuffixed := false
	if st := ev.n.InitialStatus; st != nil {
		if sfx := tnMagicDNSSuffix(st); sfx != l.suffix {
			l.suffix, resuffixed = sfx, true
		}
	}
	if l.peers.apply(ev.n) || resuffixed {
		l.reconcile(now)
	}
	if back {
		// The local tailscaled is back (restarted, or the laptop resumed):
		// what failed while it was away failed here, not on the builder.
		// Ask every builder that answered before, or refused quickly, at
		// once; dead peers stay on their backoff.
		for _, e := range l.entries {
			if e.failures > 0 && (e.advert != nil || e.quick) {
				e.openFastWindow(now)
			}
		}
	}
}

// reconcile makes the entries follow the peer table: an entry for each
// online peer that qualifies, with its peer data refreshed.
func (l *tnLoop) reconcile(now time.Time) {
	for id, e := range l.entries {
		p := l.peers[id]
		reason, ok := l.qualifies(p)
		if !ok {
			e.stopPoll()
			delete(l.entries, id)
			continue
		}
		old, _ := e.peer.fetchAddr()
		cur, _ := p.fetchAddr()
		restarted := !e.peer.disco.IsZero() && !p.disco.IsZero() && e.peer.disco != p.disco
		if old != cur || restarted {
			// Re-addressed, or its node restarted (a new disco key: its
			// tailscaled, and so maybe its agent, started again; a held
			// long poll is dead): drop any fetch in flight and fetch again
			// now, retrying fast while its agent comes up.
			e.stopPoll()
			l.seq++
			e.seq, e.inflight, e.etag = l.seq, false, ""
			e.openFastWindow(now)
		}
		e.peer, e.reason = p, reason
	}
	for id, p := range l.peers {
		if _, ok := l.entries[id]; ok {
			continue
		}
		if reason, ok := l.qualifies(p); ok {
			l.seq++
			// A peer that just came online: its agent may not be up yet.
			l.entries[id] = &tnEntry{seq: l.seq, peer: p, reason: reason, due: now, fastUntil: now.Add(tnFastWindow)}
		}
	}
}

// qualifies says whether p is a candidate and why: online, with a tailnet
// address, and tagged with one of the tags or named in Builders.
func (l *tnLoop) qualifies(p *tnPeer) (string, bool) {
	if p == nil || !p.online || len(p.addrs) == 0 {
		return "", false
	}
	for _, t := range p.tags {
		if slices.Contains(l.tags, t) {
			return "tailnet peer with " + t, true
		}
	}
	for _, b := range l.s.Builders {
		if tnNameMatches(b, p.name, l.suffix) {
			return "named by --builder", true
		}
	}
	return "", false
}

// slowRetry says whether e's next fetch is a slow retry (its last failure
// was not quick): those run in the pool's smaller share, after the rest.
func (e *tnEntry) slowRetry() bool { return e.failures > 0 && !e.quick }

// dispatch starts the long polls and fetches that are due: polls outside
// the pool, then first fetches and quick retries, then slow retries,
// within the pool limits.
func (l *tnLoop) dispatch(ctx context.Context, wg *sync.WaitGroup, now time.Time) {
	var due []*tnEntry
	for _, e := range l.entries {
		if e.inflight || e.polling || e.due.After(now) {
			continue
		}
		if l.pollNext(e) {
			l.startPoll(ctx, wg, e)
			continue
		}
		due = append(due, e)
	}
	slices.SortFunc(due, func(a, b *tnEntry) int {
		if a.slowRetry() != b.slowRetry() {
			if !a.slowRetry() {
				return -1
			}
			return 1
		}
		return a.due.Compare(b.due)
	})
	for _, e := range due {
		if l.inflight >= tnMaxFetches {
			return
		}
		slow := e.slowRetry()
		if slow {
			if l.retrying >= tnMaxRetryFetches {
				continue
			}
			l.retrying++
		}
		l.inflight++
		e.inflight = true
		r := fetchResult{id: e.peer.nodeID, seq: e.seq, retry: slow}
		url := l.advertURL(e)
		wg.Go(func() {
			r.advert, r.etag, r.err = l.fetch(ctx, l.client, url)
			l.results <- r // never blocks: cap(results) >= tnMaxFetches+tnMaxPolls
		})
	}
}

// onResult records a finished fetch and schedules the next one.
func (l *tnLoop) onResult(r fetchResult, now time.Time) {
	l.inflight--
	if r.retry {
		l.retrying--
	}
	e := l.entries[r.id]
	if e == nil || e.seq != r.seq {
		return // the peer left or came back as a new entry meanwhile
	}
	e.inflight = false
	wasFetched, prevErr := e.fetched, e.lastErr
	e.fetched = true
	if r.err == nil {
		l.dirty = true
		e.advert, e.failures, e.lastErr, e.etag = r.advert, 0, "", r.etag
		e.quick, e.slowFails, e.stale = false, 0, false
		e.due = now.Add(l.refresh) // no ETag: the server cannot long-poll
		if e.etag != "" && l.polling < tnMaxPolls {
			e.due = now // hold a long poll from now on
		}
		return
	}
	if e.failures == 0 {
		e.failingSince = now
		if e.advert != nil {
			// It answered before: its agent went away (stopped,
			// crashed, restarting). Watch for it to come back.
			e.fastUntil = now.Add(tnFastWindow)
		}
	}
	e.failures++
	e.lastErr = r.err.Error()
	e.quick = tnQuickFailure(r.err)
	if e.quick && now.Before(e.fastUntil) {
		e.due = now.Add(tnFastRetry())
	} else {
		e.slowFails++
		wait := tnRetryBackoff(e.slowFails)
		if e.advert != nil {
			// A builder that answered before (its long poll broke with
			// the laptop's network, say) is asked at least every Refresh,
			// so that it is long-polled again soon after it is back;
			// within a minute of its last answer (the fast window opened
			// when it failed), every second: the laptop's network coming
			// back from a suspend, or the builder's from a reboot, is
			// seen within about a second, at one attempt a second for
			// builders that were just answering, never for dead peers.
			wait = min(wait, l.refresh)
			if now.Before(e.fastUntil) {
				wait = min(wait, tnRetryBackoff(1))
			}
		}
		e.due = now.Add(wait)
	}
	wasStale := e.stale
	e.stale = e.advert != nil && e.failures >= tnStaleAfter && now.Sub(e.failingSince) >= tnStaleFor
	// A dead builder failing again the same way changes nothing a
	// snapshot shows: no snapshot is built (on a tailnet of dead builders
	// that was most of the idle client's allocation).
	if !wasFetched || e.lastErr != prevErr || e.stale != wasStale {
		l.dirty = true
	}
	l.log.Debug("advert fetch failed", "builder", e.peer.name, "attempt", e.failures, "quick", e.quick, "err", r.err)
}

// nextDue is when the next poll or fetch that the limits allow is due.
func (l *tnLoop) nextDue() (time.Time, bool) {
	var next time.Time
	found := false
	for _, e := range l.entries {
		if e.inflight || e.polling {
			continue
		}
		if !l.pollNext(e) && (l.inflight >= tnMaxFetches ||
			(e.slowRetry() && l.retrying >= tnMaxRetryFetches)) {
			continue // a result wakes the loop
		}
		if !found || e.due.Before(next) {
			next, found = e.due, true
		}
	}
	return next, found
}
