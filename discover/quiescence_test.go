package discover

import (
	"testing"
	"time"
)

// TestQuiescence: min after the last change, never later than max after
// the first, and a lone change after a quiet max fires at once.
func TestQuiescence(t *testing.T) {
	const lo, hi = 20 * time.Millisecond, 250 * time.Millisecond
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	t.Run("nothing-pending-is-never-due", func(t *testing.T) {
		q := quiescence{min: lo, max: hi}
		if q.due(at(time.Hour)) || !q.deadline().IsZero() {
			t.Fatalf("due with nothing pending (deadline %v)", q.deadline())
		}
	})
	t.Run("first-change-fires-at-once", func(t *testing.T) {
		q := quiescence{min: lo, max: hi}
		q.tick(at(0))
		if !q.due(at(0)) {
			t.Fatalf("a first change waits until %v", q.deadline())
		}
	})
	t.Run("change-soon-after-a-firing-waits-min", func(t *testing.T) {
		q := quiescence{min: lo, max: hi}
		q.tick(at(0))
		q.fired(at(0))
		q.tick(at(10 * time.Millisecond))
		if q.due(at(29 * time.Millisecond)) {
			t.Error("due before min after the change")
		}
		if !q.due(at(30 * time.Millisecond)) {
			t.Errorf("not due min after the change (deadline %v)", q.deadline().Sub(t0))
		}
	})
	t.Run("snooze-restarts-min", func(t *testing.T) {
		q := quiescence{min: lo, max: hi}
		q.fired(at(0))
		q.tick(at(10 * time.Millisecond))
		q.tick(at(25 * time.Millisecond))
		if q.due(at(40 * time.Millisecond)) {
			t.Error("a second change did not restart the min timer")
		}
		if !q.due(at(45 * time.Millisecond)) {
			t.Errorf("not due min after the second change (deadline %v)", q.deadline().Sub(t0))
		}
	})
	t.Run("never-later-than-max", func(t *testing.T) {
		q := quiescence{min: lo, max: hi}
		q.fired(at(0))
		for d := 10 * time.Millisecond; d < 400*time.Millisecond; d += 10 * time.Millisecond {
			q.tick(at(d)) // a change every 10 ms: min never passes quietly
			if q.due(at(d)) {
				if want := 10*time.Millisecond + hi; d != want {
					t.Fatalf("fired at %v, want max after the first change (%v)", d, want)
				}
				return
			}
		}
		t.Fatal("a steady stream of changes never fired")
	})
	t.Run("firing-clears-pending", func(t *testing.T) {
		q := quiescence{min: lo, max: hi}
		q.tick(at(0))
		q.fired(at(0))
		if q.due(at(time.Hour)) {
			t.Error("due after firing with no new change")
		}
	})
}
