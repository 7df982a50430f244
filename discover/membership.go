package discover

import (
	"fmt"
	"sort"
	"time"

	"github.com/nixrb-discover/nixrb-discover/health"
)

// State is where a builder stands with the client.
type State string

// Builder states, as `list` shows them.
const (
	StateUntrusted State = "untrusted" // not authenticated: never checked, never in the file
	StateProblem   State = "problem"   // its advert is missing or invalid
	StatePending   State = "pending"   // trusted, waiting to pass its first checks
	StateHealthy   State = "healthy"   // in the machines file
	StateFailing   State = "failing"   // in the file, but its last check failed (fewer than Fall in a row)
	StateDown      State = "down"      // failed its checks: its slots held (its line kept up to the hold), or out of the file; retried
	StateDraining  State = "draining"  // the builder asked for no new builds: its slots held, or out of the file
	StateStatic    State = "static"    // from the static file, not health-gated
)

// MembershipConfig sets the hysteresis and timing of membership.
type MembershipConfig struct {
	// Rise is how many good checks in a row put a builder in the file.
	Rise int
	// Fall is how many failed checks in a row take it out.
	Fall int
	// Interval is how often a builder in the file (or waiting) is checked.
	Interval time.Duration
	// Retry is how soon a builder in the file is re-checked after a
	// failure, so that Fall failures take Retry, not Interval, each.
	Retry time.Duration
	// Backoff is when a builder that is out of the file is re-checked,
	// as a function of the number of failures in a row (1, 2, …).
	Backoff func(failures int) time.Duration
	// CheckStatic health-gates static entries too.
	CheckStatic bool
	// FullEvery is how often a builder in the file gets the full check
	// (SSH login + Nix handshake). Zero means DefaultFullEvery.
	FullEvery time.Duration
	// ProbeEvery is how often a discovered builder in the file gets a
	// probe (fresh TCP connection + banner); the checks between are pings
	// on the cached connection, and its agent reports a dead or hung sshd
	// in its advert. Static builders have no agent: every check between
	// full ones is a probe. Zero means DefaultProbeEvery.
	ProbeEvery time.Duration
	// HoldSlots says the client holds Nix's slot locks: a builder in the
	// file that fails its checks or drains keeps its line (Nix skips it,
	// seeing no free slot) up to Hold, instead of leaving the file at
	// once. Without it, such a builder leaves the file.
	HoldSlots bool
	// Hold is how long a failing builder keeps its line while its slots
	// are held; zero means DefaultHold.
	Hold time.Duration
	// Enroll says the client can enrol its key with tailnet builders
	// whose advert says enrolment is open: before their first check, and
	// again after a check fails with "auth refused".
	Enroll bool
}

// Defaults for the zero fields of a MembershipConfig.
const (
	DefaultRise       = 1
	DefaultFall       = 2
	DefaultInterval   = time.Second
	defaultRetry      = 100 * time.Millisecond
	DefaultFullEvery  = 60 * time.Second
	DefaultProbeEvery = 30 * time.Second
	// DefaultHold is how long a failing builder keeps its line. Long
	// enough to ride through a reboot or an sshd restart (builds wait, or
	// go elsewhere, and resume on it without a rewrite); short enough that
	// a builder that is really gone stops making --max-jobs 0 builds wait.
	DefaultHold = 10 * time.Minute
)

// recheckEvery is the shortest time between two checks of one builder
// that a source's Recheck (an mDNS goodbye, which anyone can forge) makes
// due early; a Recheck sooner than that moves the check to then.
const recheckEvery = time.Second

// heldRetry bounds the backoff of a builder whose slots are held: it is
// checked at least this often, so that it is released soon after it
// comes back.
const heldRetry = time.Second

// defaultBackoff doubles from 1 s to at most 30 s.
func defaultBackoff(failures int) time.Duration {
	d := time.Second
	for i := 1; i < failures && d < 30*time.Second; i++ {
		d *= 2
	}
	return min(d, 30*time.Second)
}

// member is one builder the client knows of: everything the client keeps
// about it lives here, owned by the membership.
type member struct {
	Candidate
	// Source is the source that reported it.
	Source string
	// State is where it stands.
	State State
	// Reason explains State in words (the last failure, "draining", …).
	Reason string
	// InFile says whether it is in the machines file.
	InFile bool
	// Good and Bad count checks in a row.
	Good, Bad int
	// Last is the last check's result (zero before the first).
	Last health.Result
	// Next is when it is due for a check (zero: never, e.g. untrusted).
	Next time.Time
	// Since is when it last entered or left the file.
	Since time.Time
	// checking is set while a check is running.
	checking bool
	// lastFull and lastProbe are when it last passed a full check and a
	// fresh TCP probe (a full check is one); zero after a failure.
	lastFull, lastProbe time.Time
	// enrolled says it accepted our key.
	enrolled bool
	// renderProblem says why it passes its checks but has no line.
	renderProblem string
	// downSince is when it started failing while in the file (zero while
	// it passes).
	downSince time.Time
	// slots is what the client holds of its Nix build slots.
	slots slotRecord
	// recheckAt is when the last check a source's Recheck asked for was
	// due (zero: none yet).
	recheckAt time.Time
}

// slotRecord is what the client holds of one builder's Nix build slots.
type slotRecord struct {
	// uri is the machines-file URI the lock files are named after.
	uri string
	// max is its max-jobs: how many slots Nix has for it.
	max int
	// held is how many slots the client holds, and reason why.
	held   int
	reason string
	// nixRunning is how many the local Nix's builds hold (last probe).
	nixRunning int
}

// change is a builder entering or leaving the machines file.
type change struct {
	Key    string
	Name   string
	Joined bool   // true: entered the file; false: left it
	Reason string // why, for the log
}

// membership is the client's state machine: which builders exist, which
// pass their checks, which are in the machines file, and which check each
// gets next and when. It is pure: its methods take the time and an event
// and return the changes; it has no goroutines, clock or I/O. Only the
// client loop uses it.
type membership struct {
	cfg     MembershipConfig
	members map[string]*member
	// bySource holds each source's last good set of keys, kept while the
	// source is down: a tailscaled restart is not "all builders gone".
	bySource map[string]map[string]bool
	// sourceErr is the current error of each source that is down.
	sourceErr map[string]error
}

// newMembership returns an empty membership with cfg's zero fields set to
// the defaults.
func newMembership(cfg MembershipConfig) *membership {
	if cfg.Rise <= 0 {
		cfg.Rise = DefaultRise
	}
	if cfg.Fall <= 0 {
		cfg.Fall = DefaultFall
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Retry <= 0 {
		cfg.Retry = defaultRetry
	}
	if cfg.Backoff == nil {
		cfg.Backoff = defaultBackoff
	}
	if cfg.FullEvery <= 0 {
		cfg.FullEvery = DefaultFullEvery
	}
	if cfg.ProbeEvery <= 0 {
		cfg.ProbeEvery = DefaultProbeEvery
	}
	if cfg.Hold <= 0 {
		cfg.Hold = DefaultHold
	}
	return &membership{cfg: cfg, members: map[string]*member{}, bySource: map[string]map[string]bool{}, sourceErr: map[string]error{}}
}

// apply takes a source's snapshot. Builders it no longer lists leave at
// once (withdrawn, offline, expired) and are removed: their keys are
// returned in removed, and whatever is cached for them (an SSH connection)
// must be dropped, whether they were in the file or still pending. New
// ones wait for their checks; a draining advert takes a builder out at
// once. A snapshot with Err keeps the source's last set. Keys in Recheck
// are made due now.
func (m *membership) apply(now time.Time, s Snapshot) (changes []change, removed []string) {
	if s.Err != nil {
		m.sourceErr[s.Source] = s.Err
		return nil, nil
	}
	delete(m.sourceErr, s.Source)
	seen := make(map[string]bool, len(s.Candidates))
	for _, c := range s.Candidates {
		seen[c.Key] = true
		changes = append(changes, m.upsert(now, s.Source, c)...)
	}
	for key := range m.bySource[s.Source] {
		if seen[key] {
			continue
		}
		if mem := m.members[key]; mem != nil && mem.Source == s.Source {
			changes = append(changes, m.leave(now, mem, "withdrawn by "+s.Source)...)
			delete(m.members, key)
			removed = append(removed, key)
		}
	}
	m.bySource[s.Source] = seen
	for _, key := range s.Recheck {
		if mem := m.members[key]; mem != nil && !mem.Next.IsZero() {
			// At most one re-check per recheckEvery: a hint anyone on the
			// link can send (a forged mDNS goodbye) must not turn into a
			// flood of SSH logins.
			at := maxTime(now, mem.recheckAt.Add(recheckEvery))
			if at.Before(mem.Next) {
				mem.Next, mem.recheckAt = at, at
			}
		}
	}
	sort.Strings(removed)
	return changes, removed
}

// sourceErrors returns the sources that are down now, with their errors.
func (m *membership) sourceErrors() map[string]error {
	out := make(map[string]error, len(m.sourceErr))
	for k, v := range m.sourceErr {
		out[k] = v
	}
	return out
}

func (m *membership) upsert(now time.Time, source string, c Candidate) []change {
	mem := m.members[c.Key]
	if mem == nil {
		mem = &member{Source: source, Since: now}
		m.members[c.Key] = mem
	}
	old := mem.Candidate
	mem.Candidate, mem.Source = c, source
	switch {
	case !c.Trusted:
		mem.Next = time.Time{}
		return m.leaveAs(now, mem, StateUntrusted, c.TrustReason)
	case c.Problem != "" && c.Advert == nil:
		mem.Next = time.Time{}
		return m.leaveAs(now, mem, StateProblem, c.Problem)
	case c.Advert != nil && c.Advert.Draining:
		mem.Next = time.Time{}
		if m.cfg.HoldSlots && mem.InFile && !identityChanged(old, c) {
			// Its slots are held: Nix skips it, its line stays up to
			// the hold (expireHolds).
			if mem.State != StateDraining {
				mem.downSince = now
			}
			mem.State, mem.Reason, mem.Good, mem.Bad = StateDraining, "draining", 0, 0
			return nil
		}
		return m.leaveAs(now, mem, StateDraining, "draining")
	case c.Machine != nil && !m.cfg.CheckStatic:
		mem.Next = time.Time{}
		mem.State, mem.Reason = StateStatic, "static entry"
		if !mem.InFile {
			mem.InFile = true
			return []change{{Key: c.Key, Name: c.Name, Joined: true, Reason: "static entry"}}
		}
		return nil
	}
	if identityChanged(old, c) && mem.State != "" {
		// A new address, user or host key must pass a check before Nix
		// is sent there: out until then.
		ch := m.leave(now, mem, "address, user or host key changed")
		mem.State, mem.Good, mem.Bad, mem.Next = StatePending, 0, 0, now
		return ch
	}
	switch mem.State {
	case "", StateUntrusted, StateProblem, StateDraining, StateStatic:
		mem.State, mem.Reason, mem.Good, mem.Bad, mem.Next = StatePending, "waiting for the first check", 0, 0, now
	}
	return nil
}

// identityChanged reports whether what the check proves has changed.
func identityChanged(a, b Candidate) bool {
	if a.Key == "" {
		return false
	}
	if a.Address != b.Address {
		return true
	}
	if (a.Advert == nil) != (b.Advert == nil) || (a.Machine == nil) != (b.Machine == nil) {
		return true
	}
	if a.Machine != nil && a.Machine.String() != b.Machine.String() {
		return true
	}
	if a.Advert == nil {
		return false
	}
	x, y := a.Advert, b.Advert
	return x.HostKey != y.HostKey || x.SSHUser != y.SSHUser || x.SSHPort != y.SSHPort || x.Protocol != y.Protocol
}

// leaveAs sets a terminal state and takes the member out of the file.
func (m *membership) leaveAs(now time.Time, mem *member, st State, reason string) []change {
	ch := m.leave(now, mem, reason)
	mem.State, mem.Reason, mem.Good, mem.Bad = st, reason, 0, 0
	return ch
}

func (m *membership) leave(now time.Time, mem *member, reason string) []change {
	mem.downSince = time.Time{}
	if !mem.InFile {
		return nil
	}
	mem.InFile, mem.Since = false, now
	return []change{{Key: mem.Key, Name: mem.Name, Joined: false, Reason: reason}}
}

// dueCheck is a check the membership wants run now.
type dueCheck struct {
	key  string
	kind checkKind
	// enrol: send the client's key to the builder before the check.
	enrol bool
}

// due returns the checks due at now, cheapest kind that still proves
// what must be proved, and marks their builders as being checked; each
// must be answered with result.
func (m *membership) due(now time.Time) []dueCheck {
	var out []dueCheck
	for k, mem := range m.members {
		if !mem.checking && !mem.Next.IsZero() && !mem.Next.After(now) {
			mem.checking = true
			out = append(out, dueCheck{key: k, kind: m.kindFor(mem, now), enrol: m.enrolFirst(mem)})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].key < out[j].key })
	return out
}

// kindFor picks the cheapest check that still proves what must be proved:
// a full one to enter the file and every FullEvery, a probe every
// ProbeEvery (every time for static builders, which have no agent to
// report a dead sshd), and pings between.
func (m *membership) kindFor(mem *member, now time.Time) checkKind {
	switch {
	case !mem.InFile || mem.State != StateHealthy || now.Sub(mem.lastFull) >= m.cfg.FullEvery:
		return checkFull
	case mem.Advert == nil || now.Sub(mem.lastProbe) >= m.cfg.ProbeEvery:
		return checkProbe
	default:
		return checkPing
	}
}

// enrolFirst says whether to enrol with a tailnet builder before checking
// it: its advert offers enrolment and it has not accepted our key yet, or
// its last check was refused.
func (m *membership) enrolFirst(mem *member) bool {
	return m.cfg.Enroll && mem.Source == SourceTailnet && mem.Advert != nil && mem.Advert.Enroll &&
		(!mem.enrolled || mem.Last.Reason == health.ReasonAuthRefused)
}

// get returns the member with key, or nil.
func (m *membership) get(key string) *member { return m.members[key] }

// nextDue returns the earliest time a check is due (zero if none is).
func (m *membership) nextDue() time.Time {
	var next time.Time
	for _, mem := range m.members {
		if mem.checking || mem.Next.IsZero() {
			continue
		}
		if next.IsZero() || mem.Next.Before(next) {
			next = mem.Next
		}
	}
	return next
}

// checkOutcome is what a check started by due found.
type checkOutcome struct {
	// kind is the check that ran (a ping without a cached connection
	// runs as a probe, an enrolment makes it a full check).
	kind checkKind
	r    health.Result
	// enrolled: the builder accepted our key just before the check.
	enrolled bool
	// watched: the checker watches the builder's connection between
	// checks (kernel TCP keepalive).
	watched bool
}

// result takes the outcome of a check of key started by due.
func (m *membership) result(now time.Time, key string, o checkOutcome) []change {
	mem := m.members[key]
	if mem == nil {
		return nil // left while being checked
	}
	mem.checking = false
	if o.enrolled {
		mem.enrolled = true
	}
	if mem.Next.IsZero() {
		return nil // became untrusted or draining meanwhile
	}
	r := o.r
	switch {
	case !r.OK:
		mem.lastFull, mem.lastProbe = time.Time{}, time.Time{}
	case o.kind == checkFull:
		mem.lastFull, mem.lastProbe = now, now
	default:
		if o.kind == checkProbe {
			mem.lastProbe = now
		}
		// Keep what only a full check learns.
		r.NixVersion, r.ProtocolVersion, r.Trusted = mem.Last.NixVersion, mem.Last.ProtocolVersion, mem.Last.Trusted
	}
	ch := m.record(now, mem, r)
	// A builder whose agent reports its sshd and whose connection the
	// checker watches needs only the periodic probe and full check.
	if r.OK && mem.InFile && mem.Advert != nil && o.watched {
		m.postpone(key, minTime(mem.lastProbe.Add(m.cfg.ProbeEvery), mem.lastFull.Add(m.cfg.FullEvery)))
	}
	return ch
}

// record applies a check result r to mem: hysteresis in, hysteresis out.
func (m *membership) record(now time.Time, mem *member, r health.Result) []change {
	key := mem.Key
	mem.Last = r
	if r.OK {
		mem.Good++
		mem.Bad = 0
		mem.downSince = time.Time{}
		mem.Next = now.Add(m.cfg.Interval)
		mem.Reason = ""
		if mem.InFile {
			mem.State = StateHealthy
			return nil
		}
		if mem.Good >= m.cfg.Rise {
			mem.State, mem.InFile, mem.Since = StateHealthy, true, now
			return []change{{Key: key, Name: mem.Name, Joined: true, Reason: "passed its check"}}
		}
		mem.State = StatePending
		return nil
	}
	mem.Good = 0
	mem.Bad++
	mem.Reason = string(r.Reason)
	if r.Detail != "" {
		mem.Reason += ": " + r.Detail
	}
	// A host key mismatch is a security event, not flakiness: out at once.
	if mem.InFile && (mem.Bad >= m.cfg.Fall || r.Reason == health.ReasonHostKeyMismatch) {
		mem.State = StateDown
		if m.cfg.HoldSlots && r.Reason != health.ReasonHostKeyMismatch {
			return m.holdDown(now, mem)
		}
		mem.Next = now.Add(m.cfg.Backoff(mem.Bad))
		return m.leave(now, mem, mem.Reason)
	}
	if mem.InFile {
		mem.State = StateFailing
		mem.Next = now.Add(m.cfg.Retry)
		return nil
	}
	mem.State = StateDown
	mem.Next = now.Add(m.cfg.Backoff(mem.Bad))
	return nil
}

// lost takes news that a builder's connection died between checks. With
// r.ConnectionLost (its TCP keepalive went unanswered: packets dropped,
// host down) a builder in the file leaves at once; otherwise it is
// re-checked at once. Either way the next check logs in afresh: only a
// new login proves the builder still lets us in (it may have been
// reinstalled).
func (m *membership) lost(now time.Time, key string, r health.Result) []change {
	mem := m.members[key]
	if mem == nil || mem.Next.IsZero() {
		return nil
	}
	mem.lastFull = time.Time{}
	if !mem.checking {
		mem.Next = now
	}
	if !r.ConnectionLost || !mem.InFile {
		return nil
	}
	mem.Last, mem.Good, mem.Bad = r, 0, max(mem.Bad, 1)
	mem.State, mem.Reason = StateDown, string(r.Reason)+": "+r.Detail
	if m.cfg.HoldSlots {
		ch := m.holdDown(now, mem)
		if !mem.checking {
			mem.Next = now
		}
		return ch
	}
	return m.leave(now, mem, mem.Reason)
}

// holdDown keeps a failing builder's line while its slots are held, and
// takes it out once it has failed for longer than the hold.
func (m *membership) holdDown(now time.Time, mem *member) []change {
	if mem.downSince.IsZero() {
		mem.downSince = now
	}
	mem.Next = now.Add(min(m.cfg.Backoff(mem.Bad), heldRetry))
	if failing := now.Sub(mem.downSince); failing >= m.cfg.Hold {
		mem.Next = now.Add(m.cfg.Backoff(mem.Bad))
		return m.leave(now, mem, fmt.Sprintf("%s (failing for %s, longer than the hold %s)", mem.Reason, failing.Round(time.Second), m.cfg.Hold))
	}
	return nil
}

// carryOver keeps the line of a builder the client found in the file it
// wrote before it (re)started, when the builder's first check fails:
// instead of a rewrite without it (and another when it passes), it is in
// the file, down, with its slots held, as if it had failed while the
// client ran; it leaves after the hold like any failing builder. Only
// with HoldSlots, and never after a host key mismatch.
func (m *membership) carryOver(now time.Time, key string) []change {
	mem := m.members[key]
	if !m.cfg.HoldSlots || mem == nil || mem.InFile || mem.Next.IsZero() || mem.Last.OK ||
		mem.Last.When.IsZero() || mem.Last.Reason == health.ReasonHostKeyMismatch {
		return nil
	}
	mem.InFile, mem.Since, mem.State = true, now, StateDown
	ch := []change{{Key: key, Name: mem.Name, Joined: true, Reason: "kept from the file found at start, its slots held: " + mem.Reason}}
	return append(ch, m.holdDown(now, mem)...)
}

// expireHolds takes out of the file the draining builders whose slots
// have been held for longer than the hold (failing ones leave on their
// next failed check, see holdDown).
func (m *membership) expireHolds(now time.Time) []change {
	var ch []change
	for _, mem := range m.members {
		if mem.State == StateDraining && mem.InFile && !mem.downSince.IsZero() {
			if d := now.Sub(mem.downSince); d >= m.cfg.Hold {
				ch = append(ch, m.leave(now, mem, fmt.Sprintf("draining for %s, longer than the hold %s", d.Round(time.Second), m.cfg.Hold))...)
			}
		}
	}
	return ch
}

// nextHoldExpiry is when expireHolds next has work (zero: never).
func (m *membership) nextHoldExpiry() time.Time {
	var next time.Time
	for _, mem := range m.members {
		if mem.State == StateDraining && mem.InFile && !mem.downSince.IsZero() {
			if t := mem.downSince.Add(m.cfg.Hold); next.IsZero() || t.Before(next) {
				next = t
			}
		}
	}
	return next
}

// unheld takes a builder out of the file whose slots should be held but
// cannot be: with its line and free slots, Nix would connect to a builder
// known to be down.
func (m *membership) unheld(now time.Time, key string, why string) []change {
	mem := m.members[key]
	if mem == nil || !mem.InFile {
		return nil
	}
	return m.leave(now, mem, "its slots cannot be held: "+why)
}

// setSlots records what the client holds of key's slots.
func (m *membership) setSlots(key string, s slotRecord) {
	if mem := m.members[key]; mem != nil {
		mem.slots = s
	}
}

// postpone moves key's next check to t if it is not being checked (a
// builder watched by other means needs fewer checks).
func (m *membership) postpone(key string, t time.Time) {
	if mem := m.members[key]; mem != nil && !mem.checking && !mem.Next.IsZero() && t.After(mem.Next) {
		mem.Next = t
	}
}

// setRenderProblems records why builders that pass their checks have no
// line (keyed by member), and returns those whose problem is new.
func (m *membership) setRenderProblems(probs map[string]string) (news map[string]string) {
	for key, mem := range m.members {
		p := probs[key]
		if p != "" && p != mem.renderProblem {
			if news == nil {
				news = map[string]string{}
			}
			news[key] = p
		}
		mem.renderProblem = p
	}
	return news
}

// all returns copies of every member, sorted by name then key.
func (m *membership) all() []member {
	out := make([]member, 0, len(m.members))
	for _, mem := range m.members {
		out = append(out, *mem)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].Key < out[j].Key
	})
	return out
}

// inFile returns copies of the members in the machines file, sorted.
func (m *membership) inFile() []member {
	var out []member
	for _, mem := range m.all() {
		if mem.InFile {
			out = append(out, mem)
		}
	}
	return out
}
