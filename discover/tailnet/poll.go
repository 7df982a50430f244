package tailnet

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/url"
	"reflect"
	"sync"
	"time"

	"github.com/nixrb-discover/nixrb-discover/wire"
)

// Long polls: once a builder's advert came with an ETag, the source keeps
// one GET /v1/advert?wait=<etag> outstanding for it, which the builder
// holds until its advert changes (or ~25 s pass). A change, such as a
// draining advert on a clean stop, reaches a snapshot at once, and an idle
// builder costs one held request per ~25 s. Polls are not counted in the
// fetch pool: they are idle, and must never crowd out a first fetch.
const (
	// tnMaxPolls bounds the long polls held at once; builders beyond it
	// are refreshed every Refresh instead.
	tnMaxPolls = 1024
	// tnMinPollHold: a poll that brings back the same advert sooner than
	// this was not held (a server that ignores ?wait, or stamps every
	// answer); the next one waits for Refresh. Servers hold for seconds.
	tnMinPollHold = 250 * time.Millisecond
	// tnMinPollGap is the least time between the starts of two polls to
	// one builder, so that even a builder whose advert changes on every
	// answer is asked at most 10 times a second.
	tnMinPollGap = 100 * time.Millisecond
	// tnMaxETag bounds the ETag the source sends back.
	tnMaxETag = 128
)

// newPollClient is the long-poll client: like the fetch client, but it
// waits for the answer as long as any server may hold it, and a little
// more. Connecting is still bounded by the fetch timeout.
func (s *Source) newPollClient(timeout time.Duration) *http.Client {
	hold := wire.MaxAdvertWait + timeout
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		return s.Dial(ctx, network, addr)
	}
	return &http.Client{
		Timeout: hold,
		Transport: &http.Transport{
			DialContext:            dial,
			Proxy:                  nil,
			DisableKeepAlives:      true,
			ResponseHeaderTimeout:  hold,
			MaxResponseHeaderBytes: 16 << 10,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return errors.New("advert long poll: redirects are not followed")
		},
	}
}

// pollNext says whether e's next request is a long poll (its server sent
// an ETag, its last fetch worked, and there is room) rather than a fetch.
func (l *tnLoop) pollNext(e *tnEntry) bool {
	return e.etag != "" && e.failures == 0 && l.polling < tnMaxPolls
}

// startPoll sends e's long poll; its result comes back on l.results.
func (l *tnLoop) startPoll(ctx context.Context, wg *sync.WaitGroup, e *tnEntry) {
	ctx, cancel := context.WithCancel(ctx)
	e.polling, e.cancelPoll = true, cancel
	l.polling++
	r := fetchResult{id: e.peer.nodeID, seq: e.seq, poll: true, sent: e.etag, start: time.Now()}
	u := l.advertURL(e) + "?wait=" + url.QueryEscape(e.etag)
	wg.Go(func() {
		defer cancel()
		r.advert, r.etag, r.err = l.fetch(ctx, l.pollc, u)
		l.results <- r // never blocks: cap(results) >= tnMaxFetches+tnMaxPolls
	})
}

// stopPoll cancels e's long poll, if any; its result will be dropped.
func (e *tnEntry) stopPoll() {
	if e.cancelPoll != nil {
		e.cancelPoll()
	}
	e.polling, e.cancelPoll = false, nil
}

// onPollResult records a finished long poll and schedules the next
// request: another poll at once (a held poll that ended, or a change),
// a fetch at once after a poll that broke (agent stopped or restarting;
// the fetch then applies the usual backoff and keeps the last good advert
// through a few failures), or the periodic Refresh when the server cannot
// hold polls.
func (l *tnLoop) onPollResult(r fetchResult, now time.Time) {
	l.polling--
	l.dirty = true
	e := l.entries[r.id]
	if e == nil || e.seq != r.seq || !e.polling {
		return // the peer left, was re-addressed or came back meanwhile
	}
	e.polling, e.cancelPoll = false, nil
	if r.err != nil {
		e.pollFails++
		e.etag = ""
		e.due = now.Add(l.pollRetry(e.pollFails))
		l.log.Debug("advert long poll ended", "builder", e.peer.name, "attempt", e.pollFails, "err", r.err)
		return
	}
	same := r.etag == r.sent || tnSameAdvert(e.advert, r.advert)
	e.advert, e.etag, e.pollFails = r.advert, r.etag, 0
	switch {
	case e.etag == "" || (same && now.Sub(r.start) < tnMinPollHold):
		e.due = now.Add(l.refresh)
	default:
		e.due = r.start.Add(tnMinPollGap)
	}
}

// pollRetry is the wait before the fetch that follows the n-th failed long
// poll in a row: none for the first (see at once why it broke), then 1 s
// doubling, capped at Refresh, so that a server whose polls always break
// is asked no more often than a periodic refresh would.
func (l *tnLoop) pollRetry(n int) time.Duration {
	if n <= 1 {
		return 0
	}
	return min(time.Second<<min(n-2, 6), l.refresh)
}

// tnETag returns a strong ETag as a server sent it ("..." of visible
// ASCII), or "" for none, a weak one or anything else: then the source
// does not long-poll that server.
func tnETag(h string) string {
	if len(h) < 2 || len(h) > tnMaxETag || h[0] != '"' || h[len(h)-1] != '"' {
		return ""
	}
	for i := 1; i < len(h)-1; i++ {
		if c := h[i]; c < 0x21 || c == '"' || c > 0x7e {
			return ""
		}
	}
	return h
}

// tnSameAdvert reports whether a and b are equal but for IssuedAt.
func tnSameAdvert(a, b *wire.Advert) bool {
	if a == nil || b == nil {
		return a == b
	}
	x, y := *a, *b
	x.IssuedAt, y.IssuedAt = time.Time{}, time.Time{}
	return reflect.DeepEqual(x, y)
}
