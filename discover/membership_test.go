package discover

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/health"
	"github.com/nixrb-discover/nixrb-discover/render"
	"github.com/nixrb-discover/nixrb-discover/wire"
)

var t0 = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

func cand(key string, mutate ...func(*Candidate)) Candidate {
	c := Candidate{Key: key, Name: key, Address: key + ".ts.net", Trusted: true, TrustReason: "test",
		Advert: &wire.Advert{Hostname: key, SSHUser: "builder", SSHPort: 22, Protocol: "ssh-ng", HostKey: "ssh-ed25519 AAAA" + key,
			Systems: []string{"x86_64-linux"}, MaxJobs: 1, SpeedFactor: 1}}
	for _, f := range mutate {
		f(&c)
	}
	return c
}

var (
	ok      = health.Result{OK: true}
	refused = health.Result{Reason: health.ReasonUnreachable, Detail: "connection refused"}
)

// step is one event of a membership story.
type step struct {
	at      time.Duration
	snap    *Snapshot
	check   string // key whose check completes
	result  health.Result
	joined  []string // keys that must enter the file at this step
	left    []string // keys that must leave
	inFile  []string // keys in the file after the step (nil: not checked)
	dueKeys []string // keys Due must return after the step (nil: not checked)
}

func runStory(t *testing.T, cfg MembershipConfig, steps []step) {
	t.Helper()
	m := newMembership(cfg)
	for i, s := range steps {
		now := t0.Add(s.at)
		var ch []change
		if s.snap != nil {
			ch, _ = m.apply(now, *s.snap)
		}
		if s.check != "" {
			m.due(now) // a check can complete only after it was started
			ch = append(ch, m.result(now, s.check, checkOutcome{kind: checkFull, r: s.result})...)
		}
		var joined, left []string
		for _, c := range ch {
			if c.Joined {
				joined = append(joined, c.Key)
			} else {
				left = append(left, c.Key)
			}
		}
		if !reflect.DeepEqual(joined, s.joined) || !reflect.DeepEqual(left, s.left) {
			t.Fatalf("step %d: joined %v left %v; want joined %v left %v", i, joined, left, s.joined, s.left)
		}
		if s.inFile != nil {
			var in []string
			for _, mem := range m.inFile() {
				in = append(in, mem.Key)
			}
			if in == nil {
				in = []string{}
			}
			if !reflect.DeepEqual(in, s.inFile) {
				t.Fatalf("step %d: in file %v; want %v", i, in, s.inFile)
			}
		}
		if s.dueKeys != nil {
			due := dueKeys(m.due(now))
			if !reflect.DeepEqual(due, s.dueKeys) {
				t.Fatalf("step %d: due %v; want %v", i, due, s.dueKeys)
			}
			for _, k := range due {
				m.members[k].checking = false
			}
		}
	}
}

// dueKeys returns the keys of due checks, never nil.
func dueKeys(ds []dueCheck) []string {
	keys := []string{}
	for _, d := range ds {
		keys = append(keys, d.key)
	}
	return keys
}

func snap(src string, cs ...Candidate) *Snapshot { return &Snapshot{Source: src, Candidates: cs} }

func TestMembershipStories(t *testing.T) {
	b1, b2 := cand("b1"), cand("b2")
	tests := []struct {
		name  string
		cfg   MembershipConfig
		steps []step
	}{
		{"new builder is checked at once and joins after one good check", MembershipConfig{}, []step{
			{snap: snap("tailnet", b1), dueKeys: []string{"b1"}, inFile: []string{}},
			{at: 50 * time.Millisecond, check: "b1", result: ok, joined: []string{"b1"}, inFile: []string{"b1"}},
		}},
		{"fails twice in a row, then out; one failure is tolerated", MembershipConfig{}, []step{
			{snap: snap("tailnet", b1)},
			{check: "b1", result: ok, joined: []string{"b1"}},
			{at: time.Second, check: "b1", result: refused, inFile: []string{"b1"}},
			{at: 1100 * time.Millisecond, check: "b1", result: ok, inFile: []string{"b1"}},
			{at: 2100 * time.Millisecond, check: "b1", result: refused},
			{at: 2200 * time.Millisecond, check: "b1", result: refused, left: []string{"b1"}, inFile: []string{}},
		}},
		{"a failure is re-checked after Retry, not Interval", MembershipConfig{Retry: 100 * time.Millisecond, Interval: 10 * time.Second}, []step{
			{snap: snap("tailnet", b1)},
			{check: "b1", result: ok, joined: []string{"b1"}},
			{at: time.Second, check: "b1", result: refused, dueKeys: []string{}},
			{at: 1100 * time.Millisecond, dueKeys: []string{"b1"}},
		}},
		{"rise 2 needs two good checks", MembershipConfig{Rise: 2}, []step{
			{snap: snap("tailnet", b1)},
			{check: "b1", result: ok, inFile: []string{}},
			{at: time.Second, check: "b1", result: ok, joined: []string{"b1"}},
		}},
		{"host key mismatch is out at once despite fall 3", MembershipConfig{Fall: 3}, []step{
			{snap: snap("tailnet", b1)},
			{check: "b1", result: ok, joined: []string{"b1"}},
			{at: time.Second, check: "b1", result: health.Result{Reason: health.ReasonHostKeyMismatch}, left: []string{"b1"}},
		}},
		{"draining advert leaves at once and is not checked", MembershipConfig{}, []step{
			{snap: snap("tailnet", b1, b2)},
			{check: "b1", result: ok, joined: []string{"b1"}},
			{check: "b2", result: ok, joined: []string{"b2"}},
			{at: time.Second, snap: snap("tailnet", cand("b1", func(c *Candidate) { c.Advert.Draining = true }), b2),
				left: []string{"b1"}, inFile: []string{"b2"}, dueKeys: []string{"b2"}},
		}},
		{"withdrawn builder (offline peer, goodbye-free expiry) leaves at once", MembershipConfig{}, []step{
			{snap: snap("tailnet", b1, b2)},
			{check: "b1", result: ok, joined: []string{"b1"}},
			{check: "b2", result: ok, joined: []string{"b2"}},
			{at: time.Second, snap: snap("tailnet", b2), left: []string{"b1"}, inFile: []string{"b2"}},
		}},
		{"source outage keeps the last set", MembershipConfig{}, []step{
			{snap: snap("tailnet", b1)},
			{check: "b1", result: ok, joined: []string{"b1"}},
			{at: time.Second, snap: &Snapshot{Source: "tailnet", Err: errors.New("tailscaled restarting")}, inFile: []string{"b1"}, dueKeys: []string{"b1"}},
			{at: 2 * time.Second, snap: snap("tailnet", b1), inFile: []string{"b1"}},
		}},
		{"another source's snapshot does not remove builders", MembershipConfig{}, []step{
			{snap: snap("tailnet", b1)},
			{check: "b1", result: ok, joined: []string{"b1"}},
			{snap: snap("mdns"), inFile: []string{"b1"}},
		}},
		{"untrusted candidate is never checked and never in the file", MembershipConfig{}, []step{
			{snap: snap("mdns", cand("rogue", func(c *Candidate) { c.Trusted = false })), dueKeys: []string{}, inFile: []string{}},
		}},
		{"new host key must pass a check before it is used again", MembershipConfig{}, []step{
			{snap: snap("tailnet", b1)},
			{check: "b1", result: ok, joined: []string{"b1"}},
			{at: time.Second, snap: snap("tailnet", cand("b1", func(c *Candidate) { c.Advert.HostKey = "ssh-ed25519 AAAAnew" })),
				left: []string{"b1"}, dueKeys: []string{"b1"}},
			{at: time.Second, check: "b1", result: ok, joined: []string{"b1"}},
		}},
		{"an unchanged snapshot changes nothing", MembershipConfig{}, []step{
			{snap: snap("tailnet", b1)},
			{check: "b1", result: ok, joined: []string{"b1"}},
			{at: 500 * time.Millisecond, snap: snap("tailnet", b1), inFile: []string{"b1"}, dueKeys: []string{}},
		}},
		{"goodbye hint re-checks at once", MembershipConfig{Interval: 10 * time.Second}, []step{
			{snap: snap("mdns", b1)},
			{check: "b1", result: ok, joined: []string{"b1"}},
			{at: time.Second, snap: &Snapshot{Source: "mdns", Candidates: []Candidate{b1}, Recheck: []string{"b1"}}, dueKeys: []string{"b1"}, inFile: []string{"b1"}},
		}},
		{"static entry is in the file without checks", MembershipConfig{}, []step{
			{snap: snap("static", Candidate{Key: "static:b9", Name: "b9", Trusted: true, Machine: &render.Machine{}}),
				joined: []string{"static:b9"}, dueKeys: []string{}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { runStory(t, tt.cfg, tt.steps) })
	}
}

func TestMembershipLostConnection(t *testing.T) {
	m := newMembership(MembershipConfig{Interval: time.Second})
	m.apply(t0, *snap("tailnet", cand("b1"), cand("b2")))
	m.due(t0)
	m.result(t0, "b1", checkOutcome{kind: checkFull, r: ok})
	m.result(t0, "b2", checkOutcome{kind: checkFull, r: ok})
	// Keepalive unanswered: packets dropped, out at once.
	ch := m.lost(t0.Add(time.Second), "b1", health.Result{Reason: health.ReasonTimeout, ConnectionLost: true, Detail: "no answer"})
	if len(ch) != 1 || ch[0].Joined || ch[0].Key != "b1" {
		t.Fatalf("lost connection: changes %v, want b1 to leave", ch)
	}
	// Ended otherwise (closed by the server): only re-checked at once.
	m.postpone("b2", t0.Add(time.Minute))
	if ch := m.lost(t0.Add(time.Second), "b2", health.Result{Reason: health.ReasonUnreachable}); len(ch) != 0 {
		t.Fatalf("closed connection: changes %v, want none", ch)
	}
	if due := m.due(t0.Add(time.Second)); len(due) != 2 {
		t.Errorf("due after losses = %v, want both re-checked at once", due)
	}
}

func TestMembershipPostpone(t *testing.T) {
	m := newMembership(MembershipConfig{Interval: time.Second})
	m.apply(t0, *snap("tailnet", cand("b1")))
	m.due(t0)
	m.result(t0, "b1", checkOutcome{kind: checkFull, r: ok})
	m.postpone("b1", t0.Add(15*time.Second))
	if due := m.due(t0.Add(5 * time.Second)); len(due) != 0 {
		t.Errorf("postponed builder checked at 5s: %v", due)
	}
	if due := m.due(t0.Add(15 * time.Second)); len(due) != 1 {
		t.Errorf("postponed builder not checked at 15s: %v", due)
	}
}

func TestBackoffIsCapped(t *testing.T) {
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second}
	for i, w := range want {
		if got := defaultBackoff(i + 1); got != w {
			t.Errorf("defaultBackoff(%d) = %v, want %v", i+1, got, w)
		}
	}
}

// TestMembershipHoldsDrainingUpToTheHold: with slots held, a draining
// builder keeps its line (no change) until it has drained for longer than
// the hold; a failing one likewise until its first failed check past it.
func TestMembershipHoldsDrainingUpToTheHold(t *testing.T) {
	m := newMembership(MembershipConfig{HoldSlots: true, Hold: time.Minute, Fall: 1})
	b1 := cand("b1")
	m.apply(t0, *snap("tailnet", b1, cand("b2")))
	m.due(t0)
	m.result(t0, "b1", checkOutcome{kind: checkFull, r: ok})
	m.result(t0, "b2", checkOutcome{kind: checkFull, r: ok})
	drain := cand("b1", func(c *Candidate) { c.Advert.Draining = true })
	if ch, _ := m.apply(t0.Add(time.Second), *snap("tailnet", drain, cand("b2"))); len(ch) != 0 {
		t.Fatalf("draining with slots held: changes %v, want none (line kept)", ch)
	}
	if got := m.nextHoldExpiry(); !got.Equal(t0.Add(time.Second + time.Minute)) {
		t.Errorf("hold expires at %v, want a minute after draining began", got.Sub(t0))
	}
	if ch := m.expireHolds(t0.Add(30 * time.Second)); len(ch) != 0 {
		t.Errorf("left the file %v before the hold", ch)
	}
	if ch := m.expireHolds(t0.Add(61 * time.Second)); len(ch) != 1 || ch[0].Key != "b1" || ch[0].Joined {
		t.Errorf("after the hold: changes %v, want b1 to leave", ch)
	}
	// b2 fails: held (no change) until a failed check past the hold.
	m.due(t0.Add(2 * time.Second))
	if ch := m.result(t0.Add(2*time.Second), "b2", checkOutcome{kind: checkFull, r: refused}); len(ch) != 0 {
		t.Fatalf("first failure with slots held: changes %v, want none", ch)
	}
	m.due(t0.Add(63 * time.Second))
	if ch := m.result(t0.Add(63*time.Second), "b2", checkOutcome{kind: checkFull, r: refused}); len(ch) != 1 || ch[0].Key != "b2" {
		t.Fatalf("failing past the hold: changes %v, want b2 to leave", ch)
	}
}
