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
	mem   *membership
	snaps chan Snapshot
	done  chan checkDone
	lost  chan checkDone // watched connections that died between checks

	watcher watcher // nil when the checker cannot watch connections
	sem     chan struct{}

	heard map[string]bool // sources heard from
	good  map[string]bool // sources that delivered a good snapshot once
	// slotURIs are the Locker's entries by builder key (to release them
	// when a builder leaves), slotErr the last error per builder.
	slotURIs     map[string]string
	slotErr      map[string]string
	nextLoadScan time.Time  // when to count the local Nix's slots again
	loadScans    bool       // some builder's slots are held for load
	slotsDirty   bool       // membership changed since the last syncSlots
	quiet        quiescence // changes waiting for a render
	written      []byte     // what we last wrote (or found) in the file
	writeErr     error
	lastWrite    time.Time
	retryAt      time.Time // when to retry a failed write
	ready        bool
	started      time.Time
	statusText   string
	lastSnap     time.Time
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
	cfg := c.Membership
	cfg.Enroll = c.Enroll != nil
	cfg.HoldSlots = c.Slots != nil
	lo, hi := c.WaitMin, c.WaitMax
	if lo <= 0 {
		lo = DefaultWaitMin
	}
	if hi <= 0 {
		hi = DefaultWaitMax
	}
	return &loop{
		c:        c,
		log:      log.With("component", "client"),
		mem:      newMembership(cfg),
		snaps:    make(chan Snapshot, 64),
		done:     make(chan checkDone, maxChecks),
		lost:     make(chan checkDone, 16),
		sem:      make(chan struct{}, maxChecks),
		heard:    map[string]bool{},
		good:     map[string]bool{},
		slotURIs: map[string]string{},
		slotErr:  map[string]string{},
		quiet:    quiescence{min: lo, max: max(lo, hi)},
	}
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
	var slotsChanged <-chan struct{}
	if l.c.Slots != nil {
		slotsChanged = l.c.Slots.Changed()
	}
	for {
		now := time.Now()
		for _, d := range l.mem.due(now) {
			inflight++
			l.startCheck(ctx, d)
		}
		if t := l.mem.nextHoldExpiry(); !t.IsZero() && !now.Before(t) {
			l.slotsDirty = true
			l.changes(now, l.mem.expireHolds(now))
		}
		if l.slotsDirty || (l.loadScans && !now.Before(l.nextLoadScan)) {
			l.slotsDirty = false
			l.syncSlots(now)
		}
		if l.dueRender(now) {
			l.render(now)
		}
		if !l.ready && l.firstRoundDone(now, inflight, firstRound) {
			l.ready = true
			l.render(now)
			l.log.Info("first round complete", "builders", len(l.mem.inFile()), "took", time.Since(l.started).Round(time.Millisecond))
			if l.c.Hooks.Ready != nil {
				l.c.Hooks.Ready()
			}
			if l.c.Once {
				if l.writeErr != nil {
					return fmt.Errorf("%w: %w", ErrNotWritten, l.writeErr)
				}
				return l.sourcesUnread()
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
			if m := l.mem.get(d.key); m != nil {
				lvl := slog.LevelInfo
				if d.r.ConnectionLost {
					lvl = slog.LevelWarn
				}
				l.log.Log(ctx, lvl, "connection to builder lost", "builder", m.Name, "detail", d.r.Detail)
			}
			l.slotsDirty = true
			l.changes(time.Now(), l.mem.lost(time.Now(), d.key, d.r))
		case <-fileEvents:
			if b := readFileIfExists(l.c.MachinesPath); string(b) != string(l.written) {
				l.log.Warn("machines file changed outside nixrb-discover, restoring it", "path", l.c.MachinesPath)
				l.written = b
				l.quiet.tick(time.Now())
			}
		case reply := <-l.c.statusReq:
			reply <- l.status(time.Now())
		case <-slotsChanged:
			l.slotsDirty = true
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
	for _, m := range l.mem.all() {
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
	consider(l.mem.nextDue())
	consider(l.mem.nextHoldExpiry())
	if l.loadScans {
		consider(l.nextLoadScan)
	}
	if l.ready { // before the first round, nothing is rendered
		consider(l.quiet.deadline())
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

// startCheck runs the check the membership asked for in a goroutine of
// its own, and reports to l.done.
func (l *loop) startCheck(ctx context.Context, d dueCheck) {
	key := d.key
	m := l.mem.get(key)
	t, err := targetFor(*m)
	l.sem <- struct{}{}
	if err != nil {
		go func() {
			l.done <- checkDone{key: key, r: health.Result{Reason: health.ReasonInvalid, Detail: err.Error(), When: time.Now()}}
		}()
		return
	}
	cand := m.Candidate
	go func() {
		kind := d.kind
		if d.enrol {
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
		l.done <- checkDone{key: key, r: r, kind: kind, enrolled: d.enrol}
	}()
}

// onSnapshot takes a source's snapshot into the membership, and drops
// the cached connections of builders it no longer lists (in the file or
// still pending).
func (l *loop) onSnapshot(now time.Time, s Snapshot) {
	l.log.Debug("snapshot", "source", s.Source, "candidates", len(s.Candidates), "err", s.Err)
	if !s.Partial {
		l.heard[s.Source] = true
		if s.Err == nil {
			l.good[s.Source] = true
		}
	}
	l.lastSnap = now
	if s.Err != nil {
		l.log.Warn("source down, keeping its last builders", "source", s.Source, "err", s.Err)
		if l.c.Hooks.SourceError != nil {
			l.c.Hooks.SourceError(s.Source, s.Err)
		}
	}
	l.slotsDirty = true
	ch, removed := l.mem.apply(now, s)
	for _, key := range removed {
		l.c.Checker.Forget(key)
	}
	l.changes(now, ch)
}

// onResult takes a finished check into the membership.
func (l *loop) onResult(now time.Time, d checkDone) {
	m := l.mem.get(d.key)
	if d.enrolled {
		l.log.Info("enrolled with builder", "key", d.key)
	}
	if l.c.Hooks.Checked != nil {
		l.c.Hooks.Checked(d.key, d.r)
	}
	if m == nil {
		// Removed while being checked: the check may have cached a new
		// connection after the removal dropped the old one.
		l.c.Checker.Forget(d.key)
		return
	}
	lvl := slog.LevelDebug
	if d.r.Reason == health.ReasonHostKeyMismatch {
		lvl = slog.LevelWarn
	}
	l.log.Log(context.Background(), lvl, "checked", "builder", m.Name, "kind", d.kind.String(), "ok", d.r.OK,
		"reason", string(d.r.Reason), "detail", d.r.Detail, "rtt", d.r.RTT, "took", d.r.Took)
	l.slotsDirty = true
	watched := l.watcher != nil && l.watcher.Watched(d.key)
	l.changes(now, l.mem.result(now, d.key, checkOutcome{kind: d.kind, r: d.r, enrolled: d.enrolled, watched: watched}))
	if !d.r.OK && !l.ready && l.c.Slots != nil && l.inWrittenFile(*m) {
		l.changes(now, l.mem.carryOver(now, d.key))
	}
}

// inWrittenFile reports whether the machines file as the client found it
// (or last wrote it) holds exactly the line m would get now.
func (l *loop) inWrittenFile(m member) bool {
	if m.Advert == nil || len(l.written) == 0 {
		return false
	}
	mach, _, err := l.machineFor(m)
	if err != nil {
		return false
	}
	line, err := mach.Line(l.c.NixVersion)
	if err != nil || line == "" {
		return false
	}
	for _, have := range strings.Split(string(l.written), "\n") {
		if have == line {
			return true
		}
	}
	return false
}

// changes logs builders entering and leaving the file, drops the
// connections of those that left, and schedules a render.
func (l *loop) changes(now time.Time, ch []change) {
	for _, c := range ch {
		if c.Joined {
			l.log.Info("builder joins", "builder", c.Name, "key", c.Key, "reason", c.Reason)
		} else {
			l.log.Info("builder leaves", "builder", c.Name, "key", c.Key, "reason", c.Reason)
			l.c.Checker.Forget(c.Key)
		}
	}
	if len(ch) > 0 {
		l.quiet.tick(now)
	}
}

// dueRender says whether to render now: a failed write's retry is due,
// or coalesced changes are. Before the first round is complete nothing
// is written: a restart must not replace a good file with a
// half-discovered one.
func (l *loop) dueRender(now time.Time) bool {
	if l.writeErr != nil && !now.Before(l.retryAt) {
		return true
	}
	return l.ready && l.quiet.due(now)
}

// sourcesUnread is ErrSourceDown naming every source that is down or
// was never heard from, or nil.
func (l *loop) sourcesUnread() error {
	errs := l.mem.sourceErrors()
	var msgs []string
	for _, s := range l.c.Sources {
		switch err, down := errs[s.Name()]; {
		case down:
			msgs = append(msgs, err.Error())
		case !l.heard[s.Name()]:
			msgs = append(msgs, "source "+s.Name()+": nothing heard in the first round")
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrSourceDown, strings.Join(msgs, "; "))
}

// render writes the file from the current membership.
func (l *loop) render(now time.Time) {
	l.quiet.fired(now)
	l.slotsDirty = true // a line written or not changes whose slots are held
	// The static builders are always in the file: never write one
	// without them because their file has not been read once yet.
	if err, down := l.mem.sourceErrors()[SourceStatic]; down && !l.good[SourceStatic] {
		werr := fmt.Errorf("not written until the static file can be read (it holds builders that are always in the file): %w", err)
		if l.writeErr == nil || l.writeErr.Error() != werr.Error() {
			l.log.Error("cannot write the machines file, will retry", "path", l.c.MachinesPath, "err", werr)
		}
		l.writeErr, l.retryAt = werr, now.Add(5*time.Second)
		return
	}
	content, probs, aliases := l.content()
	for key, p := range l.mem.setRenderProblems(probs) {
		l.log.Warn("builder passes its checks but cannot be written to the machines file", "key", key, "err", p)
	}
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
		l.log.Info("machines file written", "path", res.Path, "builders", len(l.mem.inFile()))
	}
	text := fmt.Sprintf("%d builders healthy", len(l.mem.inFile()))
	if text != l.statusText {
		l.statusText = text
		if l.c.Hooks.Status != nil {
			l.c.Hooks.Status(text)
		}
	}
}
