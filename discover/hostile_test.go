package discover

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/health"
)

// TestMembershipGoodbyeFloodIsRateLimited: 5,000 forged mDNS goodbyes in
// 5 s for a builder that fails its checks (each Recheck would be a full
// SSH login) run at most one check per recheckEvery, not one per packet.
func TestMembershipGoodbyeFloodIsRateLimited(t *testing.T) {
	m := newMembership(MembershipConfig{})
	b1 := cand("b1")
	m.apply(t0, Snapshot{Source: SourceMDNS, Candidates: []Candidate{b1}})
	auth := health.Result{Reason: health.ReasonAuthRefused, Detail: "permission denied"}
	checks := 0
	run := func(now time.Time) {
		for _, d := range m.due(now) {
			checks++
			m.result(now, d.key, checkOutcome{kind: d.kind, r: auth})
		}
	}
	run(t0)
	base := checks
	const packets, span = 5000, 5 * time.Second
	for i := range packets {
		now := t0.Add(time.Second + time.Duration(i)*span/packets)
		m.apply(now, Snapshot{Source: SourceMDNS, Candidates: []Candidate{b1}, Recheck: []string{"b1"}})
		run(now)
	}
	got := checks - base
	// One per second of the flood (and one at its start), plus the
	// builder's own backoff schedule.
	if max := int(span/recheckEvery) + 3; got > max || got == 0 {
		t.Fatalf("%d forged goodbyes over %v ran %d checks, want 1 to %d", packets, span, got, max)
	}
	t.Logf("%d goodbyes over %v: %d checks", packets, span, got)

	// A single goodbye for a quiet builder is still honoured at once.
	now := t0.Add(time.Minute)
	m.apply(now, Snapshot{Source: SourceMDNS, Candidates: []Candidate{b1}, Recheck: []string{"b1"}})
	if due := m.due(now); len(due) != 1 {
		t.Fatalf("a lone goodbye a minute later made %d checks due, want 1", len(due))
	}
}

// TestTableEscapesOutsideStrings: names, reasons and hints from adverts are
// shown escaped, never as raw control characters, so a hostile mDNS
// instance name cannot redraw `list`'s table.
func TestTableEscapesOutsideStrings(t *testing.T) {
	evil := "b1\x1b[2K\x1b[1A\x1b[32mok $(touch X)\nhealthy\tfake\u202e"
	st := &Status{
		Builders:     []BuilderStatus{{Name: evil, State: StateUntrusted, Source: SourceMDNS, Trust: "unsigned advert " + evil, TrustHint: evil}},
		Sources:      []SourceStatus{{Name: SourceMDNS, Error: "down\x1b]0;title\x07", State: "down"}},
		MachinesFile: "/tmp/m", WriteError: "bad\rline",
	}
	var b bytes.Buffer
	st.WriteTable(&b, true)
	out := b.String()
	for _, r := range out {
		if r != '\n' && (r < 0x20 || r == 0x7f || r == '\u202e') {
			t.Fatalf("raw control character %U in the table:\n%s", r, out)
		}
	}
	if lines := strings.Count(out, "\n"); lines != 5 {
		t.Errorf("table has %d lines, want 5 (header, the row, source down, write error, file): a newline got through\n%s", lines, out)
	}
	if !strings.Contains(out, fmt.Sprintf("%q", evil)[:20]) {
		t.Errorf("the name is not shown quoted and escaped:\n%s", out)
	}
	if got := TerminalSafe("b1.tail1234.ts.net"); got != "b1.tail1234.ts.net" {
		t.Errorf("a plain name changed: %q", got)
	}
	if got := TerminalSafe("bäcker"); got != "bäcker" {
		t.Errorf("printable Unicode changed: %q", got)
	}
	if got := TerminalSafe("b\xff"); got != `"b\xff"` {
		t.Errorf("invalid UTF-8 not escaped: %q", got)
	}
}
