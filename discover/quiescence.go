package discover

import "time"

// quiescence coalesces changes to the machines file before one render, as
// consul-template's does: fire min after the last change, but never later
// than max after the first. A change that comes max or more after the
// last firing fires at once (the leading edge): it has nothing to be
// coalesced with yet, and a builder that joins or leaves should not wait
// min for company. Changes that follow within max are coalesced, so the
// file is written at most about twice per max.
type quiescence struct {
	min, max    time.Duration
	pending     bool
	first, last time.Time // first and last change since the last firing
	lastFire    time.Time
}

// tick records a change at now.
func (q *quiescence) tick(now time.Time) {
	if !q.pending {
		q.pending, q.first = true, now
	}
	q.last = now
}

// deadline is when the pending changes are due; zero when none are.
func (q *quiescence) deadline() time.Time {
	if !q.pending {
		return time.Time{}
	}
	if q.first.Equal(q.last) && q.first.Sub(q.lastFire) >= q.max {
		return q.first
	}
	return minTime(q.last.Add(q.min), q.first.Add(q.max))
}

// due says whether the pending changes are due at now.
func (q *quiescence) due(now time.Time) bool {
	return q.pending && !now.Before(q.deadline())
}

// fired records a render at now: nothing is pending after it.
func (q *quiescence) fired(now time.Time) {
	q.pending, q.lastFire = false, now
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
