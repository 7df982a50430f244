package tailnet

import (
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/nixrb-discover/nixrb-discover/discover"
)

// snapshot is the current set: every candidate whose first fetch
// finished. While some first fetch is still running, within tnSettle (or
// the fetch timeout, if shorter) of the start, the snapshot is Partial, so that a restarted
// client does not write a file with only the builders that answered
// first (a live builder answers well within that; a dead one no longer
// holds the first write back after it).
func (l *tnLoop) snapshot() discover.Snapshot {
	snap := discover.Snapshot{Source: l.s.Name()}
	if l.down != nil {
		snap.Err = l.down
		return snap
	}
	for _, e := range l.entries {
		if !e.fetched {
			snap.Partial = time.Now().Before(l.settleBy)
			continue
		}
		snap.Candidates = append(snap.Candidates, l.candidate(e))
	}
	slices.SortFunc(snap.Candidates, func(a, b discover.Candidate) int { return strings.Compare(a.Key, b.Key) })
	return snap
}

func (l *tnLoop) candidate(e *tnEntry) discover.Candidate {
	p := e.peer
	ip, _ := p.fetchAddr()
	c := discover.Candidate{
		Key:         "tailnet:" + string(p.stableID),
		Name:        p.name,
		Address:     p.name,
		Advert:      e.advert,
		Trusted:     true,
		TrustReason: e.reason,
	}
	if c.Name == "" {
		c.Name = ip.String()
	}
	if l.s.Address == AddressIP || c.Address == "" {
		c.Address = ip.String()
	}
	switch {
	case e.advert == nil:
		c.Problem = e.lastErr
	case e.stale:
		c.Problem = e.lastErr + " (showing the advert of the last fetch that worked)"
	}
	return c
}

// maybeEmit emits the current snapshot unless nothing it shows changed
// or it equals the last one.
func (l *tnLoop) maybeEmit() {
	if l.last != nil && l.last.Partial && !time.Now().Before(l.settleBy) {
		l.dirty = true // settled: the same set, no longer partial
	}
	if !l.started || !l.dirty {
		return
	}
	l.dirty = false
	snap := l.snapshot()
	if l.last != nil && tnSameSnapshot(*l.last, snap) {
		return
	}
	l.last = &snap
	l.emit(snap)
}

// tnSameSnapshot compares two snapshots, ignoring errors' identity (their
// text counts) and adverts' IssuedAt (a builder that stamps every response
// would otherwise make every refresh a change).
func tnSameSnapshot(a, b discover.Snapshot) bool {
	if (a.Err == nil) != (b.Err == nil) || (a.Err != nil && a.Err.Error() != b.Err.Error()) || a.Partial != b.Partial {
		return false
	}
	if len(a.Candidates) != len(b.Candidates) {
		return false
	}
	for i := range a.Candidates {
		ca, cb := a.Candidates[i], b.Candidates[i]
		if (ca.Advert == nil) != (cb.Advert == nil) {
			return false
		}
		if ca.Advert != nil {
			aa, ab := *ca.Advert, *cb.Advert
			aa.IssuedAt, ab.IssuedAt = time.Time{}, time.Time{}
			if !reflect.DeepEqual(aa, ab) {
				return false
			}
		}
		ca.Advert, cb.Advert = nil, nil
		if !reflect.DeepEqual(ca, cb) {
			return false
		}
	}
	return true
}
