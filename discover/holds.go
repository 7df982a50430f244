package discover

import (
	"strings"
	"time"

	"github.com/nixrb-discover/nixrb-discover/discover/slots"
)

// SlotLocker holds Nix's build-hook slot locks (*slots.Locker is the real
// one): a builder whose slots are all held is skipped by Nix without a
// connection, and held slots count as its load.
type SlotLocker interface {
	// Set holds want of the maxJobs slots of the machine whose
	// machines-file URI is uri.
	Set(uri string, maxJobs, want int) (slots.State, error)
	// Scan counts the slots the local Nix holds, changing nothing.
	Scan(uri string, maxJobs int) (slots.State, error)
	// Release lets go of every slot of uri's machine.
	Release(uri string) error
	// Changed says the locker took a slot by itself (one the local Nix's
	// build held when all were wanted).
	Changed() <-chan struct{}
}

// Why the client holds a builder's slots (SlotsStatus.Reason).
const (
	HoldDown     = "down"     // it failed its checks: Nix must not connect
	HoldDraining = "draining" // its agent asked for no new builds
	HoldPending  = "pending"  // back from draining, not yet checked again
	HoldLoad     = "load"     // builds of other clients fill these slots
)

// loadScanEvery is how often the slots the local Nix holds are counted
// while some builder runs builds: the fleet's load is the builder's
// running builds minus the local Nix's own.
const loadScanEvery = time.Second

// syncSlots makes the held slots match the membership: all of them for a
// builder in the file that is down, draining or not yet re-checked, the
// load of other clients for a healthy one, none otherwise. Unchanged
// builders cost no system call.
func (l *loop) syncSlots(now time.Time) {
	if l.c.Slots == nil {
		return
	}
	scan := !now.Before(l.nextLoadScan)
	loaded := false
	keep := make(map[string]bool, len(l.slotURIs))
	for _, m := range l.mem.all() {
		uri, maxJobs, ok := l.slotTarget(m)
		if !ok {
			continue
		}
		keep[m.Key] = true
		if old := l.slotURIs[m.Key]; old != "" && old != uri {
			l.release(m.Key, old)
		}
		l.slotURIs[m.Key] = uri
		rec := m.slots
		rec.uri, rec.max = uri, maxJobs
		running := 0
		if m.Advert != nil {
			running = m.Advert.Capacity.RunningBuilds
		}
		if scan && running > 0 && (m.State == StateHealthy || m.State == StateFailing) {
			if st, err := l.c.Slots.Scan(uri, maxJobs); err == nil {
				rec.nixRunning = st.OwnRunning
			}
		}
		want, reason := wantSlots(m.State, maxJobs, running, rec.nixRunning)
		if reason == HoldLoad {
			loaded = true
		}
		st, err := l.c.Slots.Set(uri, maxJobs, want)
		if err != nil {
			if l.slotErr[m.Key] != err.Error() {
				l.log.Error("cannot hold the builder's Nix slots", "builder", m.Name, "err", err)
				l.slotErr[m.Key] = err.Error()
			}
			if want == maxJobs && reason != HoldLoad {
				l.changes(now, l.mem.unheld(now, m.Key, err.Error()))
			}
		} else {
			delete(l.slotErr, m.Key)
		}
		rec.held, rec.reason = st.Held, ""
		if st.Held > 0 {
			rec.reason = reason
		}
		if st.Held < want || rec.held == maxJobs {
			rec.nixRunning = st.OwnRunning
		}
		if rec != m.slots {
			if rec.held != m.slots.held || rec.reason != m.slots.reason {
				l.log.Info("builder's Nix slots", "builder", m.Name, "held", rec.held, "of", maxJobs, "reason", rec.reason, "nix_running", rec.nixRunning)
			}
			l.mem.setSlots(m.Key, rec)
		}
	}
	for key, uri := range l.slotURIs {
		if !keep[key] {
			l.release(key, uri)
		}
	}
	if scan {
		l.nextLoadScan = now.Add(loadScanEvery)
	}
	l.loadScans = loaded
}

// release lets go of a builder's slots (it left the file, was removed, or
// its URI changed).
func (l *loop) release(key, uri string) {
	if err := l.c.Slots.Release(uri); err != nil {
		l.log.Warn("cannot release the builder's Nix slots", "key", key, "err", err)
	}
	delete(l.slotURIs, key)
	delete(l.slotErr, key)
	l.mem.setSlots(key, slotRecord{})
}

// wantSlots is how many of a builder's maxJobs slots to hold, and why.
func wantSlots(st State, maxJobs, running, nixRunning int) (int, string) {
	switch st {
	case StateDown:
		return maxJobs, HoldDown
	case StateDraining:
		return maxJobs, HoldDraining
	case StatePending:
		return maxJobs, HoldPending
	case StateHealthy, StateFailing:
		return min(maxJobs, max(0, running-nixRunning)), HoldLoad
	}
	return 0, ""
}

// slotTarget is the machines-file URI and slot count of a builder whose
// slots the client manages: one in the file and health-gated.
func (l *loop) slotTarget(m member) (uri string, maxJobs int, ok bool) {
	if !m.InFile || m.State == StateStatic || m.renderProblem != "" {
		return "", 0, false
	}
	var line string
	var err error
	switch {
	case m.Advert != nil:
		mach, _, merr := l.machineFor(m)
		if merr != nil {
			return "", 0, false
		}
		line, err = mach.Line(l.c.NixVersion)
		maxJobs = int(mach.MaxJobs)
	case m.Machine != nil:
		line, err = m.Machine.Line(l.c.NixVersion)
		maxJobs = int(m.Machine.MaxJobs)
	default:
		return "", 0, false
	}
	f := strings.Fields(line)
	if err != nil || len(f) == 0 {
		return "", 0, false
	}
	if maxJobs == 0 {
		return "", 0, false // Nix never builds there: no slots
	}
	return f[0], maxJobs, true
}
