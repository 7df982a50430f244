package slots

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
)

// DefaultStateDir is Nix's state directory (the daemon's, on a multi-user
// install), whose current-load subdirectory holds the slot locks.
const DefaultStateDir = "/nix/var/nix"

// ErrClosed is returned by a [Locker]'s methods after Close.
var ErrClosed = errors.New("slots: locker closed")

// State is what a [Locker] knows about one machine's slots.
type State struct {
	// StoreURI is the store URI the lock files are named after
	// ([StoreURI] of the machines-file URI).
	StoreURI string
	// MaxJobs is the machine's slot count (field 4 of its line).
	MaxJobs int
	// Want is how many slots the caller asked to hold, at most MaxJobs.
	Want int
	// Held is how many slots the Locker holds now. It is below Want
	// when the other slots are in use.
	Held int
	// OwnRunning is how many slots someone else held (the local Nix's
	// build hooks, one per build running on the machine) at the last
	// probe: the last Scan, or the last Set that had to take slots.
	// Slots the Locker holds never count.
	OwnRunning int
}

// Free returns the slots Nix would find free: neither held nor in use.
func (s State) Free() int { return max(0, s.MaxJobs-s.Held-s.OwnRunning) }

// Locker holds slot locks in one current-load directory. It is safe for
// concurrent use. Each held slot is one open file; Close (or the
// process's death) releases them all.
type Locker struct {
	dir     string
	dialect Dialect

	mu       sync.Mutex
	closed   bool
	machines map[string]*machine // by store URI
	keys     map[string]string   // machines-file URI → store URI
	changed  chan struct{}       // a waiter took a slot (buffered 1)
}

type machine struct {
	storeURI   string
	maxJobs    int
	want       int
	fds        []int    // per slot: the held lock's fd, or -1
	ids        []fileID // per slot: the held file's identity
	held       int
	ownRunning int
	waiting    []bool // per slot: a goroutine blocks in flock on it
}

// New returns a Locker over stateDir/current-load (stateDir "" means
// [DefaultStateDir]) that names lock files with dialect d. Like Nix, it
// creates current-load (0755 before the umask) if it is missing, but not
// stateDir: a missing state directory is an error (is Nix installed?).
func New(stateDir string, d Dialect) (*Locker, error) {
	if d != Legacy && d != Rendered {
		return nil, fmt.Errorf("slots: unknown %v", d)
	}
	if stateDir == "" {
		stateDir = DefaultStateDir
	}
	l := &Locker{dir: filepath.Join(stateDir, "current-load"), dialect: d, machines: map[string]*machine{}, keys: map[string]string{},
		changed: make(chan struct{}, 1)}
	if err := l.ensureDir(); err != nil {
		return nil, err
	}
	return l, nil
}

// Dir returns the current-load directory.
func (l *Locker) Dir() string { return l.dir }

// ensureDir creates the current-load directory as Nix's hook does
// (mkdir, not mkdir -p).
func (l *Locker) ensureDir() error {
	fi, err := os.Stat(l.dir)
	if err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("slots: %s is not a directory", l.dir)
		}
		return nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("slots: %w", err)
	}
	err = os.Mkdir(l.dir, 0o755)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("slots: Nix state directory %s is missing (is Nix installed?): %w", filepath.Dir(l.dir), err)
	}
	if err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("slots: create current-load: %w", err)
	}
	return nil
}

// Set makes the Locker hold want of the maxJobs slots of the machine whose
// machines-file URI is uri (want >= maxJobs: all of them, so Nix skips
// the machine). It never blocks: it takes only free slots, so it holds
// fewer than want while the local Nix uses the others (see State.Held and
// State.OwnRunning), and takes them on a later Set once they are free. It
// releases slots when want drops, and slots past maxJobs when maxJobs
// drops. With want >= maxJobs, each slot someone else holds is waited for
// in a goroutine of its own (a blocking flock), and taken the moment it is
// freed, before the local Nix's next build hook can take it; Changed
// reports it. When nothing changes (same maxJobs, want slots already held) it
// makes no system call at all, and State.OwnRunning is the last probe's. Lines whose URIs give
// the same store URI share their slots, as in Nix: pass the largest
// maxJobs. On error the returned State is what is held now.
func (l *Locker) Set(uri string, maxJobs, want int) (State, error) {
	if maxJobs < 0 || want < 0 {
		return State{}, fmt.Errorf("slots: %s: negative maxJobs %d or want %d", uri, maxJobs, want)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return State{}, ErrClosed
	}
	key, err := l.key(uri)
	if err != nil {
		return State{}, err
	}
	m := l.machines[key]
	if m == nil {
		m = &machine{storeURI: key}
		l.machines[key] = m
	}
	var errs []error
	if maxJobs != m.maxJobs {
		errs = append(errs, m.resize(maxJobs))
	}
	m.want = min(want, maxJobs)
	for s := len(m.fds) - 1; s >= 0 && m.held > m.want; s-- {
		if m.fds[s] >= 0 {
			errs = append(errs, m.release(s))
		}
	}
	if m.held < m.want {
		busy, err := l.probe(m, true)
		errs = append(errs, err)
		m.ownRunning = busy
	}
	if m.held == m.maxJobs {
		m.ownRunning = 0
	}
	if m.want == m.maxJobs && m.held < m.want {
		l.waitForBusy(m)
	}
	if err := errors.Join(errs...); err != nil {
		return m.state(), fmt.Errorf("slots: %s: %w", key, err)
	}
	return m.state(), nil
}

// Changed reports, by a value on the channel, that the Locker took a slot
// by itself: a slot the local Nix's build held when Set asked for all of
// them, taken the moment that build let go of it. Call Set or States to
// see the new state.
func (l *Locker) Changed() <-chan struct{} { return l.changed }

// waitForBusy starts a goroutine for each slot of m that someone else
// holds and m does not wait for yet: it blocks in flock and keeps the
// slot if m still wants it all. Nix's next build hook tries the slot
// without blocking only after the last one died, so a waiter already
// queued in the kernel gets it first. l.mu is held.
func (l *Locker) waitForBusy(m *machine) {
	for s, fd := range m.fds {
		if fd >= 0 || m.waiting[s] {
			continue
		}
		m.waiting[s] = true
		go l.wait(m, s, l.path(m, s))
	}
}

// wait blocks until it locks slot s of m, then keeps it if m still wants
// all its slots, else lets go. A waiter whose slot is never freed blocks
// until the process ends; it holds one file descriptor.
func (l *Locker) wait(m *machine, s int, path string) {
	fd, err := openSlot(path)
	if err == nil {
		err = lock(fd)
		if err != nil {
			_ = closeFD(fd)
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if s < len(m.waiting) {
		m.waiting[s] = false
	}
	if err != nil {
		return
	}
	if l.closed || l.machines[m.storeURI] != m || s >= len(m.fds) || m.fds[s] >= 0 || m.want < m.maxJobs {
		_ = closeFD(fd)
		return
	}
	id, err := fdID(fd)
	if err != nil {
		_ = closeFD(fd)
		return
	}
	m.fds[s], m.ids[s] = fd, id
	m.held++
	if m.ownRunning > 0 {
		m.ownRunning--
	}
	select {
	case l.changed <- struct{}{}:
	default:
	}
}

// Scan probes the slots 0..maxJobs-1 of uri's machine that the Locker
// does not hold, to count those someone else holds (State.OwnRunning: the
// local Nix's builds there), without taking or releasing any slot of a
// machine it tracks. It also re-checks that each held lock is still on
// the file Nix would open, and drops holds whose file was removed or
// replaced, for the next Set to take again. A machine the Locker never
// saw is scanned but not remembered.
func (l *Locker) Scan(uri string, maxJobs int) (State, error) {
	if maxJobs < 0 {
		return State{}, fmt.Errorf("slots: %s: negative maxJobs %d", uri, maxJobs)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return State{}, ErrClosed
	}
	key, err := l.key(uri)
	if err != nil {
		return State{}, err
	}
	m := l.machines[key]
	if m == nil || m.maxJobs != maxJobs {
		// Probe a stand-in with the caller's slot count that borrows
		// the holds below it, then leave the tracked entry as it was.
		tmp := &machine{storeURI: key, maxJobs: maxJobs, fds: make([]int, maxJobs), ids: make([]fileID, maxJobs)}
		for s := range tmp.fds {
			tmp.fds[s] = -1
			if m != nil && s < len(m.fds) && m.fds[s] >= 0 {
				tmp.fds[s], tmp.ids[s] = m.fds[s], m.ids[s]
				tmp.held++
			}
		}
		busy, err := l.probe(tmp, false)
		st := tmp.state()
		st.OwnRunning = busy
		if m != nil {
			st.Want = m.want
		}
		if err != nil {
			return st, fmt.Errorf("slots: %s: %w", key, err)
		}
		return st, nil
	}
	errs := []error{l.verify(m)}
	busy, err := l.probe(m, false)
	m.ownRunning = busy
	if err := errors.Join(append(errs, err)...); err != nil {
		return m.state(), fmt.Errorf("slots: %s: %w", key, err)
	}
	return m.state(), nil
}

// Release releases every slot the Locker holds for uri's machine and
// forgets it. Releasing a machine it does not track does nothing.
func (l *Locker) Release(uri string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ErrClosed
	}
	key, err := l.key(uri)
	if err != nil {
		return err
	}
	m := l.machines[key]
	if m == nil {
		return nil
	}
	delete(l.machines, key)
	if err := m.resize(0); err != nil {
		return fmt.Errorf("slots: %s: %w", key, err)
	}
	return nil
}

// States returns what the Locker holds, by store URI, without any system
// call.
func (l *Locker) States() []State {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]State, 0, len(l.machines))
	for _, m := range l.machines {
		out = append(out, m.state())
	}
	slices.SortFunc(out, func(a, b State) int { return cmp.Compare(a.StoreURI, b.StoreURI) })
	return out
}

// Close releases every slot. Later calls return [ErrClosed]; Close itself
// may be called again.
func (l *Locker) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	var errs []error
	for _, m := range l.machines {
		errs = append(errs, m.resize(0))
	}
	l.machines, l.keys = nil, nil
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("slots: close: %w", err)
	}
	return nil
}

// key returns uri's store URI, remembered: an unchanged Set costs a map
// lookup, not a parse. l.mu is held.
func (l *Locker) key(uri string) (string, error) {
	if k, ok := l.keys[uri]; ok {
		return k, nil
	}
	k, err := StoreURI(uri, l.dialect)
	if err != nil {
		return "", fmt.Errorf("slots: %w", err)
	}
	if len(l.keys) >= maxKeys {
		clear(l.keys) // URIs churned a lot: start over rather than grow
	}
	l.keys[uri] = k
	return k, nil
}

// maxKeys bounds the URI cache.
const maxKeys = 4096

func (m *machine) state() State {
	return State{StoreURI: m.storeURI, MaxJobs: m.maxJobs, Want: m.want, Held: m.held, OwnRunning: m.ownRunning}
}

// resize changes the slot count, releasing held slots past n.
func (m *machine) resize(n int) error {
	var errs []error
	for s := n; s < len(m.fds); s++ {
		if m.fds[s] >= 0 {
			errs = append(errs, m.release(s))
		}
	}
	if n < len(m.fds) {
		m.fds, m.ids, m.waiting = m.fds[:n], m.ids[:n], m.waiting[:n]
	}
	for len(m.fds) < n {
		m.fds, m.ids, m.waiting = append(m.fds, -1), append(m.ids, fileID{}), append(m.waiting, false)
	}
	m.maxJobs = n
	return errors.Join(errs...)
}

func (m *machine) release(s int) error {
	fd := m.fds[s]
	m.fds[s], m.ids[s] = -1, fileID{}
	m.held--
	if err := closeFD(fd); err != nil {
		return fmt.Errorf("release slot %d: %w", s, err)
	}
	return nil
}

func (l *Locker) path(m *machine, s int) string {
	return filepath.Join(l.dir, LockName(m.storeURI, s))
}

// probe tries each slot m does not hold and returns how many someone else
// holds. With take, it keeps free slots until m holds m.want.
func (l *Locker) probe(m *machine, take bool) (busy int, err error) {
	var errs []error
	for s, fd := range m.fds {
		if fd >= 0 {
			continue
		}
		path := l.path(m, s)
		fd, err := openSlot(path)
		if errors.Is(err, fs.ErrNotExist) {
			// current-load vanished: recreate it as Nix would.
			if err = l.ensureDir(); err == nil {
				fd, err = openSlot(path)
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("open %s: %w", path, err))
			continue
		}
		ok, err := tryLock(fd)
		if err != nil {
			errs = append(errs, fmt.Errorf("lock %s: %w", path, err), closeFD(fd))
			continue
		}
		if !ok {
			busy++
			errs = append(errs, closeFD(fd))
			continue
		}
		if !take || m.held >= m.want {
			errs = append(errs, closeFD(fd))
			continue
		}
		id, err := fdID(fd)
		if err != nil {
			errs = append(errs, fmt.Errorf("stat %s: %w", path, err), closeFD(fd))
			continue
		}
		m.fds[s], m.ids[s] = fd, id
		m.held++
	}
	return busy, errors.Join(errs...)
}

// verify drops holds whose lock file is no longer the one at its path.
func (l *Locker) verify(m *machine) error {
	var errs []error
	for s, fd := range m.fds {
		if fd < 0 {
			continue
		}
		id, err := pathID(l.path(m, s))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("stat %s: %w", l.path(m, s), err))
			continue
		}
		if err != nil || id != m.ids[s] {
			errs = append(errs, m.release(s))
		}
	}
	return errors.Join(errs...)
}
