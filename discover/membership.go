package discover

import (
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
	StateDown      State = "down"      // out of the file after failed checks; retried with backoff
	StateDraining  State = "draining"  // the builder asked for no new builds
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
}

// Defaults for the zero fields of a MembershipConfig.
const (
	DefaultRise     = 1
	DefaultFall     = 2
	DefaultInterval = time.Second
	DefaultRetry    = 100 * time.Millisecond
)

// DefaultBackoff doubles from 1 s to at most 30 s.
func DefaultBackoff(failures int) time.Duration {
	d := time.Second
	for i := 1; i < failures && d < 30*time.Second; i++ {
		d *= 2
	}
	return min(d, 30*time.Second)
}

// Member is one builder the client knows of.
type Member struct {
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
}

// Change is a builder entering or leaving the machines file.
type Change struct {
	Key    string
	Name   string
	Joined bool   // true: entered the file; false: left it
	Reason string // why, for the log
}

// Membership is the client's state machine: which builders exist, which
// pass their checks, and which are in the machines file. It is pure: its
// methods take the time and an event and return the changes; it has no
// goroutines, clock or I/O. Only the client loop uses it.
type Membership struct {
	cfg     MembershipConfig
	members map[string]*Member
	// bySource holds each source's last good set of keys, kept while the
	// source is down: a tailscaled restart is not "all builders gone".
	bySource map[string]map[string]bool
	// sourceErr is the current error of each source that is down.
	sourceErr map[string]error
}

// NewMembership returns an empty membership with cfg's zero fields set to
// the defaults.
func NewMembership(cfg MembershipConfig) *Membership {
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
		cfg.Retry = DefaultRetry
	}
	if cfg.Backoff == nil {
		cfg.Backoff = DefaultBackoff
	}
	return &Membership{cfg: cfg, members: map[string]*Member{}, bySource: map[string]map[string]bool{}, sourceErr: map[string]error{}}
}

// Apply takes a source's snapshot. Builders it no longer lists leave at
// once (withdrawn, offline, expired); new ones wait for their checks; a
// draining advert takes a builder out at once. A snapshot with Err keeps
// the source's last set. Keys in Recheck are made due now.
func (m *Membership) Apply(now time.Time, s Snapshot) []Change {
	if s.Err != nil {
		m.sourceErr[s.Source] = s.Err
		return nil
	}
	delete(m.sourceErr, s.Source)
	var changes []Change
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
		}
	}
	m.bySource[s.Source] = seen
	for _, key := range s.Recheck {
		if mem := m.members[key]; mem != nil && !mem.Next.IsZero() {
			mem.Next = now
		}
	}
	return changes
}

// SourceErrors returns the sources that are down now, with their errors.
func (m *Membership) SourceErrors() map[string]error {
	out := make(map[string]error, len(m.sourceErr))
	for k, v := range m.sourceErr {
		out[k] = v
	}
	return out
}

func (m *Membership) upsert(now time.Time, source string, c Candidate) []Change {
	mem := m.members[c.Key]
	if mem == nil {
		mem = &Member{Source: source, Since: now}
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
		return m.leaveAs(now, mem, StateDraining, "draining")
	case c.Machine != nil && !m.cfg.CheckStatic:
		mem.Next = time.Time{}
		mem.State, mem.Reason = StateStatic, "static entry"
		if !mem.InFile {
			mem.InFile = true
			return []Change{{Key: c.Key, Name: c.Name, Joined: true, Reason: "static entry"}}
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
func (m *Membership) leaveAs(now time.Time, mem *Member, st State, reason string) []Change {
	ch := m.leave(now, mem, reason)
	mem.State, mem.Reason, mem.Good, mem.Bad = st, reason, 0, 0
	return ch
}

func (m *Membership) leave(now time.Time, mem *Member, reason string) []Change {
	if !mem.InFile {
		return nil
	}
	mem.InFile, mem.Since = false, now
	return []Change{{Key: mem.Key, Name: mem.Name, Joined: false, Reason: reason}}
}

// Due returns the keys whose check is due at now and marks them as being
// checked; each must be answered with Result.
func (m *Membership) Due(now time.Time) []string {
	var keys []string
	for k, mem := range m.members {
		if !mem.checking && !mem.Next.IsZero() && !mem.Next.After(now) {
			mem.checking = true
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys
}

// Member returns the member with key, or nil.
func (m *Membership) Member(key string) *Member { return m.members[key] }

// NextDue returns the earliest time a check is due (zero if none is).
func (m *Membership) NextDue() time.Time {
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

// Result takes the outcome of a check of key started by Due.
func (m *Membership) Result(now time.Time, key string, r health.Result) []Change {
	mem := m.members[key]
	if mem == nil {
		return nil // left while being checked
	}
	mem.checking = false
	if mem.Next.IsZero() {
		return nil // became untrusted or draining meanwhile
	}
	mem.Last = r
	if r.OK {
		mem.Good++
		mem.Bad = 0
		mem.Next = now.Add(m.cfg.Interval)
		mem.Reason = ""
		if mem.InFile {
			mem.State = StateHealthy
			return nil
		}
		if mem.Good >= m.cfg.Rise {
			mem.State, mem.InFile, mem.Since = StateHealthy, true, now
			return []Change{{Key: key, Name: mem.Name, Joined: true, Reason: "passed its check"}}
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

// Lost takes news that a builder's connection died between checks. With
// r.ConnectionLost (its TCP keepalive went unanswered: packets dropped,
// host down) a builder in the file leaves at once; otherwise it is
// re-checked at once.
func (m *Membership) Lost(now time.Time, key string, r health.Result) []Change {
	mem := m.members[key]
	if mem == nil || mem.Next.IsZero() {
		return nil
	}
	if !mem.checking {
		mem.Next = now
	}
	if !r.ConnectionLost || !mem.InFile {
		return nil
	}
	mem.Last, mem.Good, mem.Bad = r, 0, max(mem.Bad, 1)
	mem.State, mem.Reason = StateDown, string(r.Reason)+": "+r.Detail
	return m.leave(now, mem, mem.Reason)
}

// Postpone moves key's next check to t if it is not being checked (a
// builder watched by other means needs fewer checks).
func (m *Membership) Postpone(key string, t time.Time) {
	if mem := m.members[key]; mem != nil && !mem.checking && !mem.Next.IsZero() && t.After(mem.Next) {
		mem.Next = t
	}
}

// Members returns copies of every member, sorted by name then key.
func (m *Membership) Members() []Member {
	out := make([]Member, 0, len(m.members))
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

// InFile returns copies of the members in the machines file, sorted.
func (m *Membership) InFile() []Member {
	var out []Member
	for _, mem := range m.Members() {
		if mem.InFile {
			out = append(out, mem)
		}
	}
	return out
}
