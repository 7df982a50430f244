package discover

import (
	"testing"
	"time"
)

// TestDueRenderLeadingEdge: a change after a quiet WaitMax is written at
// once; changes that follow within WaitMax are coalesced (MIN after the
// last, never later than MAX after the first).
func TestDueRenderLeadingEdge(t *testing.T) {
	const lo, hi = 20 * time.Millisecond, 250 * time.Millisecond
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l := newLoop(&Client{WaitMin: lo, WaitMax: hi})
	l.ready = true
	l.quiet.fired(t0)

	// A lone change 10 s after the last render: nothing to wait for.
	c1 := t0.Add(10 * time.Second)
	l.quiet.tick(c1)
	if !l.dueRender(c1) {
		t.Fatal("a lone change after a quiet period waits for WaitMin")
	}
	l.quiet.fired(c1) // what render does

	// The next change comes 5 ms later: coalesced, due WaitMin after it.
	c2 := c1.Add(5 * time.Millisecond)
	l.quiet.tick(c2)
	if l.dueRender(c2) || l.dueRender(c2.Add(lo-time.Millisecond)) {
		t.Error("a change right after a render is written before WaitMin")
	}
	if !l.dueRender(c2.Add(lo)) {
		t.Error("a coalesced change is not due WaitMin after it")
	}

	// A storm: a change every 10 ms never waits past WaitMax after the first.
	l.quiet.fired(c2.Add(lo))
	first := c2.Add(lo + time.Millisecond)
	for at := first; at.Before(first.Add(hi)); at = at.Add(10 * time.Millisecond) {
		l.quiet.tick(at)
		if l.dueRender(at) {
			t.Fatalf("storm written %v after its first change, before WaitMax", at.Sub(first))
		}
	}
	if !l.dueRender(first.Add(hi)) {
		t.Error("a storm is not written WaitMax after its first change")
	}

	// Before the first round nothing is written, leading edge or not.
	l2 := newLoop(&Client{WaitMin: lo, WaitMax: hi})
	l2.quiet.tick(c1)
	if l2.dueRender(c1.Add(time.Hour)) {
		t.Error("rendered before the first round was complete")
	}
}
