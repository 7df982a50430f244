package advertise

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nixrb-discover/nixrb-discover/wire"
)

// DefaultInterval is how often the agent re-measures capacity.
const DefaultInterval = 10 * time.Second

// Agent is the builder daemon: it detects this builder's facts, keeps its
// advert current (capacity refreshed every Interval, re-signed before it
// goes stale, draining toggled on demand) and serves it on the tailnet and
// by mDNS. Set the fields, then call Run once.
type Agent struct {
	// Facts says where facts come from, and holds the user's overrides.
	Facts FactsOptions
	// SigningKey signs every advert when set (required for mDNS clients
	// that trust a fleet key).
	SigningKey *wire.SigningKey
	// Interval is how often capacity is measured (at least every second
	// while builds run); zero means DefaultInterval.
	Interval time.Duration
	// Tailnet serves the advert over the tailnet when set (its Advert
	// field is set by Run).
	Tailnet *TailnetServer
	// MDNS announces the advert by mDNS when set (its TXT is set by Run).
	MDNS *MDNSResponder
	// SSHWatch, when set, is checked every SSHWatch.Interval: while sshd
	// is unhealthy (see [SSHWatch]) the advert says draining, so clients
	// drop this builder within a check instead of Nix stalling on it.
	// Nil turns the watch off.
	SSHWatch *SSHWatch
	// Logger gets what is advertised where, once, and then each change.
	Logger *slog.Logger
	// OnChange is called (from Run's goroutine) with every new advert,
	// the first one included.
	OnChange func(a *wire.Advert)
	// Tick, when set, is called from Run's loop at least every TickEvery
	// (the systemd watchdog: a stuck loop stops calling it).
	Tick      func()
	TickEvery time.Duration

	drain   chan struct{}
	once    sync.Once
	current atomic.Pointer[published]
}

// published is an advert and its encodings, swapped as one.
type published struct {
	advert *wire.Advert
	json   []byte
	txt    []string
}

func (a *Agent) init() {
	a.once.Do(func() { a.drain = make(chan struct{}, 1) })
}

// ToggleDrain flips draining (SIGUSR1 calls it). Safe from any goroutine.
func (a *Agent) ToggleDrain() {
	a.init()
	select {
	case a.drain <- struct{}{}:
	default:
	}
}

// Current returns the advert being served now, or nil before Run has made one.
func (a *Agent) Current() *wire.Advert {
	if p := a.current.Load(); p != nil {
		return p.advert
	}
	return nil
}

// Run detects the facts, publishes the advert and keeps it current until
// ctx is done. On the way out it publishes a draining advert (signed like
// any other: an authenticated leave), then stops the transports (the mDNS
// goodbye follows), and returns nil.
func (a *Agent) Run(ctx context.Context) error {
	a.init()
	log := a.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "advertise")
	if a.Tailnet == nil && a.MDNS == nil {
		return errors.New("advertise: no transport (enable the tailnet or --mdns)")
	}
	facts, err := detectFacts(ctx, a.Facts)
	if err != nil {
		return err
	}
	if facts.CapacityErr != nil {
		log.Warn("some capacity figures cannot be measured and are advertised as 0 (unknown)", "err", facts.CapacityErr)
	}
	o := a.Facts.Overrides // o.Draining is the user's drain; see advertised
	var sshd *sshHealth
	var sshTick <-chan time.Time
	if a.SSHWatch != nil {
		sshd = &sshHealth{watch: a.SSHWatch}
		sshd.check(log)
		t := time.NewTicker(a.SSHWatch.interval())
		defer t.Stop()
		sshTick = t.C
	}
	// advertised is what goes out: draining while the user drains or
	// sshd is unhealthy.
	advertised := func() Overrides {
		p := o
		p.Draining = sshd.draining(o.Draining)
		return p
	}
	// republishDraining publishes when the advertised draining flag
	// differs from the current advert's (a failed publish is retried on
	// the next change or watch tick), and reports whether it did.
	republishDraining := func() bool {
		if advertised().Draining == a.Current().Draining {
			return false
		}
		if _, err := a.publish(facts, advertised(), time.Now()); err != nil {
			log.Error("cannot publish the new advert", "err", err)
			return false
		}
		return true
	}
	ad, err := a.publish(facts, advertised(), time.Now())
	if err != nil {
		return err
	}
	log.Info("advertising", "hostname", ad.Hostname, "systems", ad.Systems, "features", ad.SupportedFeatures,
		"max_jobs", ad.MaxJobs, "ssh", fmt.Sprintf("%s://%s@:%d", ad.Protocol, ad.SSHUser, ad.SSHPort),
		"signed", ad.Signature != nil, "tailnet", a.Tailnet != nil, "mdns", a.MDNS != nil)

	tctx, stopTransports := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	if a.Tailnet != nil {
		a.Tailnet.Advert = func() ([]byte, error) { return a.current.Load().json, nil }
		wg.Add(1)
		go func() { defer wg.Done(); errc <- a.Tailnet.Run(tctx) }()
	}
	if a.MDNS != nil {
		a.MDNS.TXT = a.current.Load().txt
		if a.MDNS.Port == 0 {
			a.MDNS.Port = ad.SSHPort
		}
		if a.MDNS.Hostname == "" {
			a.MDNS.Hostname = ad.Hostname
		}
		wg.Add(1)
		go func() { defer wg.Done(); errc <- a.MDNS.Run(tctx) }()
	}
	defer func() {
		stopTransports()
		wg.Wait()
	}()

	interval := a.Interval
	if interval <= 0 {
		interval = DefaultInterval
	}
	current := buildsInterval(interval, facts.Capacity.RunningBuilds)
	tick := time.NewTicker(current)
	defer tick.Stop()
	// A build starting on an idle builder is measured within
	// buildWakeDelay, not at the next tick: Nix locks a build user's file
	// as it starts a build, and the watch sees the open.
	var buildWake <-chan struct{}
	var wokenUntil time.Time // measure every second until then
	if facts.BuildUsers.Group != "" || facts.BuildUsers.AutoAllocate {
		if buildWake, err = watchBuildStarts(ctx, a.Facts.withDefaults().NixStateDir); err != nil {
			log.Warn("cannot watch for build starts; running builds are measured every --interval while idle", "err", err)
		}
	}
	var watchdog <-chan time.Time
	if a.Tick != nil && a.TickEvery > 0 {
		wd := time.NewTicker(a.TickEvery)
		defer wd.Stop()
		watchdog = wd.C
		a.Tick()
	}
	lastSigned := time.Now()
	// A re-keyed sshd (new host key file) is advertised at the next
	// sshd-watch tick, or capacity tick without a watch.
	hostKey := newHostKeyWatch(a.Facts)
	rekeyed := func() {
		k, changed, err := hostKey.changed(facts.HostKey)
		if err != nil {
			log.Warn("cannot re-read the SSH host key; advertising the old one", "err", err)
			return
		}
		if !changed {
			return
		}
		facts.HostKey = k
		if _, err := a.publish(facts, advertised(), time.Now()); err != nil {
			log.Error("cannot publish the new advert", "err", err)
			return
		}
		lastSigned = time.Now()
		log.Info("SSH host key changed: advertising the new one", "host_key", k)
	}
	for {
		select {
		case <-ctx.Done():
			o.Draining = true
			if _, err := a.publish(facts, advertised(), time.Now()); err != nil {
				log.Error("cannot publish the leaving advert", "err", err)
			}
			log.Info("stopping: published a draining advert, saying goodbye")
			return nil
		case err := <-errc:
			if err != nil {
				return fmt.Errorf("advertise: %w", err)
			}
		case <-watchdog:
			a.Tick()
		case <-buildWake:
			wokenUntil = time.Now().Add(buildWakeHold)
			tick.Reset(buildWakeDelay)
			current = buildWakeDelay
		case <-a.drain:
			o.Draining = !o.Draining
			log.Info("draining changed", "draining", o.Draining)
			if republishDraining() {
				lastSigned = time.Now()
			}
		case <-sshTick:
			rekeyed()
			sshd.check(log)
			if republishDraining() {
				lastSigned = time.Now()
			}
		case now := <-tick.C:
			if sshTick == nil {
				rekeyed()
			}
			c, err := measureCapacity(a.Facts, facts.BuildUsers)
			if err != nil && facts.CapacityErr == nil {
				log.Warn("capacity measurement failed", "err", err)
			}
			// While builds run, their count is measured every second:
			// clients hold the slots other clients' builds fill, so a
			// finished build should free its slot there soon.
			running := c.RunningBuilds
			if now.Before(wokenUntil) {
				running = max(running, 1) // a build may be starting
			}
			if next := buildsInterval(interval, running); next != current {
				tick.Reset(next)
				current = next
			}
			changed := meaningfullyDifferent(c, a.current.Load().advert.Capacity)
			stale := a.SigningKey != nil && now.Sub(lastSigned) >= wire.ResignInterval
			if !changed && !stale {
				continue
			}
			facts.Capacity = c
			if _, err := a.publish(facts, advertised(), now); err != nil {
				log.Error("cannot publish the new advert", "err", err)
				continue
			}
			lastSigned = now
			if changed {
				log.Debug("capacity changed", "capacity", fmt.Sprintf("%+v", a.Current().Capacity))
			}
		}
	}
}

// publish builds, signs and encodes the advert and makes it current.
func (a *Agent) publish(f Facts, o Overrides, now time.Time) (*wire.Advert, error) {
	ad, err := buildAdvert(f, o, now)
	if err != nil {
		return nil, err
	}
	if a.SigningKey != nil {
		if err := wire.Sign(ad, a.SigningKey, now); err != nil {
			return nil, err
		}
	}
	js, err := wire.EncodeJSON(ad)
	if err != nil {
		return nil, fmt.Errorf("advertise: %w", err)
	}
	txt, err := wire.EncodeTXT(ad)
	if err != nil {
		return nil, fmt.Errorf("advertise: %w", err)
	}
	a.current.Store(&published{advert: ad, json: js, txt: txt})
	if a.Tailnet != nil {
		a.Tailnet.Publish() // held long polls answer with the new advert
	}
	if a.MDNS != nil {
		if err := a.MDNS.Update(txt); err != nil {
			return nil, fmt.Errorf("advertise: mdns: %w", err)
		}
	}
	if a.OnChange != nil {
		a.OnChange(ad)
	}
	return ad, nil
}

// hostKeyWatch notices a new SSH host key file by its metadata (one stat
// per check) and reads it only when that changed.
type hostKeyWatch struct {
	path string // "" when the host key is an override: nothing to watch
	last os.FileInfo
}

func newHostKeyWatch(o FactsOptions) *hostKeyWatch {
	w := &hostKeyWatch{}
	if o.Overrides.HostKey == "" {
		w.path = o.withDefaults().HostKeyPath
		w.last, _ = os.Stat(w.path)
	}
	return w
}

// changed returns the host key in the file and whether it differs from
// current. A missing or unreadable file is an error (the old key stays).
func (w *hostKeyWatch) changed(current string) (string, bool, error) {
	if w.path == "" {
		return current, false, nil
	}
	fi, err := os.Stat(w.path)
	if err != nil {
		return current, false, fmt.Errorf("host key: %w", err)
	}
	if w.last != nil && fi.ModTime().Equal(w.last.ModTime()) && fi.Size() == w.last.Size() && os.SameFile(fi, w.last) {
		return current, false, nil
	}
	w.last = fi // a broken file is reported once, not at every check
	k, err := readHostKey(w.path)
	if err != nil {
		return current, false, err
	}
	return k, k != current, nil
}

// runningBuildsEvery is how often capacity is measured while builds run.
const runningBuildsEvery = time.Second

// buildsInterval is the capacity tick: every interval, but at least
// every runningBuildsEvery while builds run.
func buildsInterval(interval time.Duration, running int) time.Duration {
	if running > 0 {
		return min(interval, runningBuildsEvery)
	}
	return interval
}
