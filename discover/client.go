package discover

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/nixrb-discover/nixrb-discover/health"
	"github.com/nixrb-discover/nixrb-discover/render"
)

// HealthChecker checks one builder; *Checker is the real one.
type HealthChecker interface {
	// Check runs the full check: SSH login and the Nix handshake.
	Check(ctx context.Context, t health.Target) health.Result
	// Probe runs the cheap one: a fresh TCP connection and the banner.
	Probe(ctx context.Context, t health.Target) health.Result
	// Ping runs the cheapest: a keepalive on the cached connection; ok
	// is false when there is none.
	Ping(ctx context.Context, t health.Target) (r health.Result, ok bool)
	// Forget drops what is cached for a builder that left.
	Forget(key string)
}

// watcher is a HealthChecker that watches cached connections between
// checks (*Checker does, with kernel TCP keepalive).
type watcher interface {
	SetOnLost(func(key string, r health.Result))
	Watched(key string) bool
}

// Hooks let the caller follow the client's life (systemd notify, metrics).
// Every hook is optional and is called from the client loop: keep it fast.
type Hooks struct {
	// Ready is called once, after the first round (every source heard
	// from, every candidate checked once, the file written).
	Ready func()
	// Status is called with a one-line status when it changes.
	Status func(text string)
	// Tick is called on every loop iteration and at least every
	// TickEvery; a stuck loop stops calling it (watchdog).
	Tick      func()
	TickEvery time.Duration
	// Checked is called after each health check.
	Checked func(key string, r health.Result)
	// Rendered is called after each render: written, unchanged or failed.
	Rendered func(changed bool, err error)
	// SourceError is called when a source reports an error.
	SourceError func(source string, err error)
}

// Client keeps the Nix machines file holding exactly the builders that
// pass their health checks. Set the fields, then call Run once.
type Client struct {
	// Sources find builders. Required.
	Sources []Source
	// Checker health-checks them. Required.
	Checker HealthChecker
	// Membership sets hysteresis, check kinds and check timing.
	Membership MembershipConfig
	// MachinesPath is the machines file to keep (e.g. /etc/nix/machines).
	MachinesPath string
	// SSHKeyPath is the identity Nix uses, written into field 3.
	SSHKeyPath string
	// ClientKeyFingerprint is shown by list (the SSHKeyPath key's SHA256).
	ClientKeyFingerprint string
	// NixVersion is the local Nix; the file is formatted for it.
	NixVersion render.NixVersion
	// SSHConfigPath, when set, receives ssh_config Host aliases for
	// builders on a port other than 22 when the local Nix is older than
	// 2.31 (which cannot read a port in the URI). Root's ssh must Include it.
	SSHConfigPath string
	// WaitMin and WaitMax coalesce changes before a render: render
	// WaitMin after the last change, but never later than WaitMax after
	// the first. A change that comes WaitMax or more after the last
	// render is written at once (it has nothing to be coalesced with);
	// those that follow it are coalesced. Zero means
	// DefaultWaitMin/DefaultWaitMax.
	WaitMin, WaitMax time.Duration
	// Slots, when set, holds Nix's slot locks: a builder that fails its
	// checks or drains keeps its line with all its slots held (Nix skips
	// it without connecting; --max-jobs 0 builds wait for it instead of
	// failing) until Membership.Hold, and a healthy builder's slots that
	// other clients' builds fill are held too. Nil: such a builder
	// leaves the file. The caller closes it (locks die with the process).
	Slots SlotLocker
	// Enroll, when set, is called before the first check of a tailnet
	// builder whose advert says enrolment is open, and again after a
	// check fails with "auth refused"; its error is shown as the reason.
	Enroll func(ctx context.Context, c Candidate) error
	// MaxChecks bounds concurrent health checks; zero means 16.
	MaxChecks int
	// Once makes Run return after the first round.
	Once bool
	// FirstRoundTimeout bounds the first round; zero means 10 s.
	FirstRoundTimeout time.Duration
	// Logger gets one line per membership change and per write; nil discards.
	Logger *slog.Logger
	// Hooks are optional callbacks.
	Hooks Hooks

	statusReq chan chan *Status
}

// Defaults for the coalescing window.
const (
	DefaultWaitMin = 20 * time.Millisecond
	DefaultWaitMax = 250 * time.Millisecond
)

// ErrNotWritten is returned by Run with Once when the file could not be written.
var ErrNotWritten = errors.New("machines file not written")

// ErrSourceDown is returned by Run with Once when the file was written but
// a source could not be read (or sent nothing) in the first round: the
// file may lack its builders.
var ErrSourceDown = errors.New("a source of builders could not be read")

// checkKind is what a check does, cheapest last.
type checkKind int

const (
	checkFull  checkKind = iota // SSH login + Nix handshake
	checkProbe                  // fresh TCP connection + SSH banner
	checkPing                   // keepalive on the cached connection
)

// String names the kind for logs.
func (k checkKind) String() string {
	switch k {
	case checkFull:
		return "full"
	case checkProbe:
		return "probe"
	default:
		return "ping"
	}
}

type checkDone struct {
	key      string
	r        health.Result
	kind     checkKind
	enrolled bool // the builder accepted our key just before this check
}

// Status returns the client's current state, as `list` shows it. It asks
// the running loop; ctx bounds the wait.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	if c.statusReq == nil {
		return nil, errors.New("client not running")
	}
	reply := make(chan *Status, 1)
	select {
	case c.statusReq <- reply:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case s := <-reply:
		return s, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Init prepares Status before Run is started in another goroutine.
func (c *Client) Init() {
	if c.statusReq == nil {
		c.statusReq = make(chan chan *Status)
	}
}

// Run discovers, checks and renders until ctx is done (or, with Once,
// until the first round is complete). A failed write is logged and
// retried; Run keeps going. It refuses at once (ErrForeignFile,
// render.ErrSymlink, render.ErrStoreSymlink) a machines file it may not
// replace: see CheckMachinesPath, and ErrLocked while another client
// keeps the same file (a lock file next to it, ".NAME.lock").
func (c *Client) Run(ctx context.Context) error {
	if len(c.Sources) == 0 || c.Checker == nil || c.MachinesPath == "" {
		return errors.New("client: Sources, Checker and MachinesPath are required")
	}
	// Whoever else may write in the directory could plant a symlink
	// under the lock's or the file's name: refuse before touching either.
	if err := render.CheckDir(filepath.Dir(c.MachinesPath)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("machines file %s: %w", c.MachinesPath, err)
	}
	// A file we did not write holds someone's builders: never replace it.
	if err := checkOurs(c.MachinesPath); err != nil {
		return err
	}
	unlock, err := lockMachines(c.MachinesPath)
	if err != nil && !errors.Is(err, errNoLock) {
		return err
	}
	defer unlock()
	c.Init()
	l := newLoop(c)
	if err != nil {
		l.log.Warn("running without the lock that keeps a second client off this machines file", "err", err)
	}
	if w, ok := c.Checker.(watcher); ok {
		l.watcher = w
		w.SetOnLost(func(key string, r health.Result) {
			select {
			case l.lost <- checkDone{key: key, r: r}:
			case <-ctx.Done():
			}
		})
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if n, err := render.SweepStale(c.MachinesPath); err != nil {
		l.log.Warn("cannot sweep stale temporary files", "err", err)
	} else if n > 0 {
		l.log.Info("removed stale temporary files of an interrupted write", "count", n)
	}
	for _, s := range c.Sources {
		go func(s Source) {
			err := s.Run(ctx, func(snap Snapshot) {
				select {
				case l.snaps <- snap:
				case <-ctx.Done():
				}
			})
			if err != nil && ctx.Err() == nil {
				select {
				case l.snaps <- Snapshot{Source: s.Name(), Err: fmt.Errorf("source %s stopped: %w", s.Name(), err)}:
				case <-ctx.Done():
				}
			}
		}(s)
	}
	fileEvents, closeWatch := l.watchMachinesFile()
	defer closeWatch()
	return l.run(ctx, fileEvents)
}

// watchMachinesFile reports changes to the machines file (by anyone).
func (l *loop) watchMachinesFile() (<-chan struct{}, func()) {
	out := make(chan struct{}, 1)
	w, err := fsnotify.NewWatcher()
	if err != nil {
		l.log.Warn("cannot watch the machines file; external edits are corrected only on the next change", "err", err)
		return nil, func() {}
	}
	dir, base := filepath.Split(l.c.MachinesPath)
	if dir == "" {
		dir = "."
	}
	if err := w.Add(dir); err != nil {
		l.log.Warn("cannot watch the machines file's directory", "dir", dir, "err", err)
		w.Close()
		return nil, func() {}
	}
	go func() {
		for {
			select {
			case ev, ok := <-w.Events:
				if !ok {
					return
				}
				if filepath.Base(ev.Name) == base && ev.Op&(fsnotify.Write|fsnotify.Create|fsnotify.Remove|fsnotify.Rename) != 0 {
					select {
					case out <- struct{}{}:
					default:
					}
				}
			case _, ok := <-w.Errors:
				if !ok {
					return
				}
			}
		}
	}()
	return out, func() { w.Close() }
}

// readFileIfExists returns the file's bytes, or nil.
func readFileIfExists(path string) []byte {
	b, err := render.ReadNoFollow(path)
	if err != nil {
		return nil
	}
	return b
}
