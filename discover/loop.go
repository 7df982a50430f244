package discover

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nixrb-discover/nixrb-discover/health"
	"github.com/nixrb-discover/nixrb-discover/render"
)

// loop is the client's single goroutine of state: only it touches the
// membership.
type loop struct {
	c     *Client
	log   *slog.Logger
	mem   *Membership
	snaps chan Snapshot
	done  chan checkDone
	lost  chan checkDone // watched connections that died between checks

	watcher watcher // nil when the checker cannot watch connections
	sem     chan struct{}

	heard       map[string]bool // sources heard from
	dirty       bool            // membership changed since the last render
	firstChange time.Time       // start of the coalescing window
	lastChange  time.Time
	written     []byte // what we last wrote (or found) in the file
	writeErr    error
	lastWrite   time.Time
	lastRender  time.Time // last render, written or not
	retryAt     time.Time // when to retry a failed write
	renderProbs map[string]string
	lastFull    map[string]time.Time // last passed full check per builder
	lastProbe   map[string]time.Time // last passed fresh TCP probe per builder
	enrolled    map[string]bool      // builders that accepted our key
	ready       bool
	started     time.Time
	statusText  string
	lastSnap    time.Time
}

func newLoop(c *Client) *loop {
	log := c.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	maxChecks := c.MaxChecks
	if maxChecks <= 0 {
		maxChecks = 16
	}
	return &loop{
		c:           c,
		log:         log.With("component", "client"),
		mem:         NewMembership(c.Membership),
		snaps:       make(chan Snapshot, 64),
		done:        make(chan checkDone, maxChecks),
		lost:        make(chan checkDone, 16),
		sem:         make(chan struct{}, maxChecks),
		heard:       map[string]bool{},
		renderProbs: map[string]string{},
		lastFull:    map[string]time.Time{},
		lastProbe:   map[string]time.Time{},
		enrolled:    map[string]bool{},
	}
}

func (c *Client) waits() (time.Duration, time.Duration) {
	lo, hi := c.WaitMin, c.WaitMax
	if lo <= 0 {
		lo = DefaultWaitMin
	}
	if hi <= 0 {
		hi = DefaultWaitMax
	}
	return lo, max(lo, hi)
}

func (l *loop) run(ctx context.Context, fileEvents <-chan struct{}) error {
	l.started = time.Now()
	l.written = readFileIfExists(l.c.MachinesPath)
	firstRound := l.c.FirstRoundTimeout
	if firstRound <= 0 {
		firstRound = 10 * time.Second
	}
	tickEvery := l.c.Hooks.TickEvery
	if tickEvery <= 0 {
		tickEvery = time.Hour
	}
	tick := time.NewTicker(tickEvery)
	defer tick.Stop()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	inflight := 0
	for {
		now := time.Now()
		for _, key := range l.mem.Due(now) {
			inflight++
			l.startCheck(ctx, key)
		}
		if l.dueRender(now) {
			l.render(now)
		}
		if !l.ready && l.firstRoundDone(now, inflight, firstRound) {
			l.ready = true
			l.render(now)
			l.log.Info("first round complete", "builders", len(l.mem.InFile()), "took", time.Since(l.started).Round(time.Millisecond))
			if l.c.Hooks.Ready != nil {
				l.c.Hooks.Ready()
			}
			if l.c.Once {
				if l.writeErr != nil {
					return fmt.Errorf("%w: %w", ErrNotWritten, l.writeErr)
				}
				return nil
			}
		}
		if l.c.Hooks.Tick != nil {
			l.c.Hooks.Tick()
		}
		timer.Reset(l.nextWake(now, firstRound).Sub(now))
		select {
		case <-ctx.Done():
			return nil
		case s := <-l.snaps:
			l.onSnapshot(time.Now(), s)
		case d := <-l.done:
			inflight--
			<-l.sem
			l.onResult(time.Now(), d)
		case d := <-l.lost:
			if m := l.mem.Member(d.key); m != nil {
				lvl := slog.LevelInfo
				if d.r.ConnectionLost {
					lvl = slog.LevelWarn
				}
				l.log.Log(ctx, lvl, "connection to builder lost", "builder", m.Name, "detail", d.r.Detail)
			}
			// The recheck logs in afresh: only a new login proves the
			// builder still lets us in (it may have been reinstalled).
			delete(l.lastFull, d.key)
			l.changes(time.Now(), l.mem.Lost(time.Now(), d.key, d.r))
		case <-fileEvents:
			if b := readFileIfExists(l.c.MachinesPath); string(b) != string(l.written) {
				l.log.Warn("machines file changed outside nixrb-discover, restoring it", "path", l.c.MachinesPath)
				l.written = b
				l.markDirty(time.Now())
			}
		case reply := <-l.c.statusReq:
			reply <- l.status(time.Now())
		case <-tick.C:
		case <-timer.C:
		}
	}
}

// firstRoundDone: every source heard from, no snapshot for a moment, and
// every checkable candidate checked once (or the bound passed).
func (l *loop) firstRoundDone(now time.Time, inflight int, bound time.Duration) bool {
	if now.Sub(l.started) >= bound {
		return true
	}
	if len(l.heard) < len(l.c.Sources) || inflight > 0 || now.Sub(l.lastSnap) < 100*time.Millisecond {
		return false
	}
	for _, m := range l.mem.Members() {
		if !m.Next.IsZero() && m.Last.When.IsZero() {
			return false
		}
	}
	return true
}

func (l *loop) nextWake(now time.Time, firstRound time.Duration) time.Time {
	next := now.Add(time.Hour)
	consider := func(t time.Time) {
		if !t.IsZero() && t.Before(next) {
			next = t
		}
	}
	consider(l.mem.NextDue())
	if l.dirty && l.ready { // before the first round, nothing is rendered
		lo, hi := l.c.waits()
		consider(minTime(l.lastChange.Add(lo), l.firstChange.Add(hi)))
	}
	if l.writeErr != nil {
		consider(l.retryAt)
	}
	if !l.ready {
		consider(now.Add(50 * time.Millisecond))
		consider(l.started.Add(firstRound))
	}
	if next.Before(now) {
		return now
	}
	return next
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func (l *loop) startCheck(ctx context.Context, key string) {
	m := l.mem.Member(key)
	t, err := targetFor(*m)
	if err != nil {
		go func() {
			l.done <- checkDone{key: key, r: health.Result{Reason: health.ReasonInvalid, Detail: err.Error(), When: time.Now()}}
		}()
		l.sem <- struct{}{}
		return
	}
	l.sem <- struct{}{}
	kind := l.kindFor(m)
	enrol := l.c.Enroll != nil && m.Advert != nil && m.Advert.Enroll && strings.HasPrefix(m.Key, "tailnet:") &&
		(!l.enrolled[key] || m.Last.Reason == health.ReasonAuthRefused)
	cand := m.Candidate
	go func() {
		if enrol {
			start := time.Now()
			if err := l.c.Enroll(ctx, cand); err != nil {
				l.done <- checkDone{key: key, kind: checkFull, r: health.Result{Reason: health.ReasonEnrollRefused, Detail: err.Error(), When: start, Took: time.Since(start)}}
				return
			}
			kind = checkFull
		}
		var r health.Result
		switch kind {
		case checkFull:
			r = l.c.Checker.Check(ctx, t)
		case checkPing:
			var ok bool
			if r, ok = l.c.Checker.Ping(ctx, t); !ok {
				kind, r = checkProbe, l.c.Checker.Probe(ctx, t)
			}
		default:
			r = l.c.Checker.Probe(ctx, t)
		}
		if r.When.IsZero() {
			r.When = time.Now()
		}
		l.done <- checkDone{key: key, r: r, kind: kind, enrolled: enrol}
	}()
}

// kindFor picks the cheapest check that still proves what must be proved:
// a full one to enter the file and every FullEvery, a probe every
// ProbeEvery (every time for static builders, which have no agent to
// report a dead sshd), and pings between.
func (l *loop) kindFor(m *Member) checkKind {
	fullEvery, probeEvery := l.c.FullEvery, l.c.ProbeEvery
	if fullEvery <= 0 {
		fullEvery = DefaultFullEvery
	}
	if probeEvery <= 0 {
		probeEvery = DefaultProbeEvery
	}
	switch {
	case !m.InFile || m.State != StateHealthy || time.Since(l.lastFull[m.Key]) >= fullEvery:
		return checkFull
	case m.Advert == nil || time.Since(l.lastProbe[m.Key]) >= probeEvery:
		return checkProbe
	default:
		return checkPing
	}
}

func (l *loop) onSnapshot(now time.Time, s Snapshot) {
	l.log.Debug("snapshot", "source", s.Source, "candidates", len(s.Candidates), "err", s.Err)
	if !s.Partial {
		l.heard[s.Source] = true
	}
	l.lastSnap = now
	if s.Err != nil {
		l.log.Warn("source down, keeping its last builders", "source", s.Source, "err", s.Err)
		if l.c.Hooks.SourceError != nil {
			l.c.Hooks.SourceError(s.Source, s.Err)
		}
	}
	l.changes(now, l.mem.Apply(now, s))
	// Builders that left are no longer checked: drop their connections.
	for key := range l.renderProbs {
		if l.mem.Member(key) == nil {
			delete(l.renderProbs, key)
		}
	}
}

func (l *loop) onResult(now time.Time, d checkDone) {
	m := l.mem.Member(d.key)
	if d.enrolled {
		l.enrolled[d.key] = true
		l.log.Info("enrolled with builder", "key", d.key)
	}
	if d.r.Reason == health.ReasonNotTrusted && l.c.NixVersion.AtLeast(2, 26) {
		// Nix 2.26 (tested; maybe earlier) sees from the handshake that it
		// is not trusted and sends the .drv by path, which an untrusted
		// user may build: the builder works. Older Nix gets "not
		// privileged to build input-addressed derivations". Trusted stays
		// TrustedNo, so list still says so.
		d.r.OK, d.r.Reason, d.r.Detail = true, health.ReasonOK, ""
	}
	switch {
	case !d.r.OK:
		delete(l.lastFull, d.key)
		delete(l.lastProbe, d.key)
	case d.kind == checkFull:
		l.lastFull[d.key], l.lastProbe[d.key] = now, now
	default:
		if d.kind == checkProbe {
			l.lastProbe[d.key] = now
		}
		if m != nil { // keep what only a full check learns
			d.r.NixVersion, d.r.ProtocolVersion, d.r.Trusted = m.Last.NixVersion, m.Last.ProtocolVersion, m.Last.Trusted
		}
	}
	if l.c.Hooks.Checked != nil {
		l.c.Hooks.Checked(d.key, d.r)
	}
	if m != nil {
		lvl := slog.LevelDebug
		if d.r.Reason == health.ReasonHostKeyMismatch {
			lvl = slog.LevelWarn
		}
		l.log.Log(context.Background(), lvl, "checked", "builder", m.Name, "kind", d.kind.String(), "ok", d.r.OK,
			"reason", string(d.r.Reason), "detail", d.r.Detail, "rtt", d.r.RTT, "took", d.r.Took)
	} else {
		l.c.Checker.Forget(d.key)
	}
	l.changes(now, l.mem.Result(now, d.key, d.r))
	// A builder whose agent reports its sshd and whose connection the
	// kernel watches needs only the periodic probe and full check.
	if m := l.mem.Member(d.key); m != nil && d.r.OK && m.InFile && m.Advert != nil && l.watcher != nil && l.watcher.Watched(d.key) {
		fullEvery, probeEvery := l.c.FullEvery, l.c.ProbeEvery
		if fullEvery <= 0 {
			fullEvery = DefaultFullEvery
		}
		if probeEvery <= 0 {
			probeEvery = DefaultProbeEvery
		}
		l.mem.Postpone(d.key, minTime(l.lastProbe[d.key].Add(probeEvery), l.lastFull[d.key].Add(fullEvery)))
	}
}

func (l *loop) changes(now time.Time, ch []Change) {
	for _, c := range ch {
		if c.Joined {
			l.log.Info("builder joins", "builder", c.Name, "key", c.Key, "reason", c.Reason)
		} else {
			l.log.Info("builder leaves", "builder", c.Name, "key", c.Key, "reason", c.Reason)
			l.c.Checker.Forget(c.Key)
		}
	}
	if len(ch) > 0 {
		l.markDirty(now)
	}
}

func (l *loop) markDirty(now time.Time) {
	if !l.dirty {
		l.firstChange = now
	}
	l.dirty = true
	l.lastChange = now
}

func (l *loop) dueRender(now time.Time) bool {
	if l.writeErr != nil && !now.Before(l.retryAt) {
		return true
	}
	// Before the first round is complete nothing is written: a restart
	// must not replace a good file with a half-discovered one.
	if !l.dirty || !l.ready {
		return false
	}
	lo, hi := l.c.waits()
	// Leading edge: the first change after WaitMax without a render has
	// nothing to be coalesced with yet, and a builder that joins or leaves
	// should not wait WaitMin for company. Changes that follow within
	// WaitMax of that render are coalesced as before, so the file is
	// still written at most about twice per WaitMax.
	if l.firstChange.Equal(l.lastChange) && l.firstChange.Sub(l.lastRender) >= hi {
		return true
	}
	return !now.Before(l.lastChange.Add(lo)) || !now.Before(l.firstChange.Add(hi))
}

// render writes the file from the current membership.
func (l *loop) render(now time.Time) {
	l.dirty = false
	l.lastRender = now
	content, probs, aliases := l.content()
	for key, p := range probs {
		if l.renderProbs[key] != p {
			l.log.Warn("builder passes its checks but cannot be written to the machines file", "key", key, "err", p)
		}
	}
	l.renderProbs = probs
	if l.c.SSHConfigPath != "" {
		if _, err := render.WriteAtomic(l.c.SSHConfigPath, aliases); err != nil {
			l.log.Error("cannot write the ssh_config aliases", "path", l.c.SSHConfigPath, "err", err)
		}
	}
	res, err := render.WriteAtomic(l.c.MachinesPath, content)
	if l.c.Hooks.Rendered != nil {
		l.c.Hooks.Rendered(res.Changed, err)
	}
	if err != nil {
		if l.writeErr == nil || l.writeErr.Error() != err.Error() {
			args := []any{"path", l.c.MachinesPath, "err", err}
			if errors.Is(err, render.ErrStoreSymlink) {
				args = append(args, "hint", render.StoreSymlinkHint)
			}
			l.log.Error("cannot write the machines file, will retry", args...)
		}
		l.writeErr = err
		l.retryAt = now.Add(5 * time.Second)
		return
	}
	if l.writeErr != nil {
		l.log.Info("machines file writable again", "path", l.c.MachinesPath)
	}
	l.writeErr = nil
	l.written = content
	if res.Changed {
		l.lastWrite = now
		l.log.Info("machines file written", "path", res.Path, "builders", len(l.mem.InFile()))
	}
	text := fmt.Sprintf("%d builders healthy", len(l.mem.InFile()))
	if text != l.statusText {
		l.statusText = text
		if l.c.Hooks.Status != nil {
			l.c.Hooks.Status(text)
		}
	}
}
