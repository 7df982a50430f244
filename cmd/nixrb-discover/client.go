package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/nixrb-discover/nixrb-discover/discover/mdns"
	"github.com/nixrb-discover/nixrb-discover/discover/slots"
	"github.com/nixrb-discover/nixrb-discover/discover/static"
	"github.com/nixrb-discover/nixrb-discover/discover/tailnet"
	"github.com/nixrb-discover/nixrb-discover/health"
	"github.com/nixrb-discover/nixrb-discover/internal/localnix"
	"github.com/nixrb-discover/nixrb-discover/render"
	"github.com/nixrb-discover/nixrb-discover/systemd"
	"github.com/peterbourgon/ff/v3/ffcli"
	"tailscale.com/client/local"
)

// clientFlags are the client daemon's settings (also used by list --once);
// config-file keys are the same names.
type clientFlags struct {
	machines, static, sshKey, sshConfig, socket string
	checkStatic, adopt                          bool
	tailnet                                     bool
	tailscaleSocket, address                    string
	tags, builders                              repeated
	mdns                                        bool
	mdnsIfaces, trustKeys, pins                 repeated
	pinFile                                     string
	rise, fall                                  int
	interval, fullEvery, checkTimeout, banner   string
	hold, nixStateDir                           string
	wait                                        waitRange
	nixVersion                                  string
	once                                        bool
	logLevel                                    string
	metricsListen                               string
}

// register adds the client flags to fs.
func (f *clientFlags) register(fs *flag.FlagSet) {
	f.wait = waitRange{min: discover.DefaultWaitMin, max: discover.DefaultWaitMax}
	fs.StringVar(&f.machines, "machines", "/etc/nix/machines", "machines file to keep; a file there that nixrb-discover did not write is refused (see --adopt). Best: /var/lib/nixrb-discover/machines with builders = @/var/lib/nixrb-discover/machines in nix.conf (the NixOS module and the systemd units do this)")
	fs.StringVar(&f.static, "static", "", "machines file of builders you maintain by hand: always in the file, merged in")
	fs.BoolVar(&f.adopt, "adopt", false, "take over a machines file nixrb-discover did not write: back it up (FILE.orig), move its valid lines into --static (default FILE.static), then manage it")
	fs.BoolVar(&f.checkStatic, "check-static", false, "health-gate the --static builders too (they need a host key)")
	fs.StringVar(&f.sshKey, "ssh-key", discover.DefaultSSHKey, "SSH identity Nix and the checks use (created if absent); written into the machines file")
	fs.StringVar(&f.sshConfig, "ssh-config", "", "file for ssh_config Host aliases of builders on a port other than 22 (Nix < 2.31); Include it in root's ssh_config")
	fs.StringVar(&f.socket, "socket", discover.SocketFor(runtime.GOOS), "unix socket where list reads the client's state")
	fs.BoolVar(&f.tailnet, "tailnet", true, "discover builders among the tailnet's peers")
	fs.StringVar(&f.tailscaleSocket, "tailscale-socket", "", "tailscaled's LocalAPI socket (default: tailscaled's usual path; on macOS first the standalone Tailscale app's LocalAPI port, never the App Store app's)")
	fs.Var(&f.tags, "tag", "tailnet tag that marks builders (repeatable; default tag:nix-builder)")
	fs.Var(&f.builders, "builder", "MagicDNS name (short or full) of a tailnet peer that is a builder (repeatable)")
	fs.StringVar(&f.address, "address", tailnet.AddressMagicDNS, "how the machines file names tailnet builders: magicdns or ip")
	fs.BoolVar(&f.mdns, "mdns", false, "discover builders by mDNS (needs --mdns-iface and --trust-key or --pin)")
	fs.Var(&f.mdnsIfaces, "mdns-iface", "network interface to browse by mDNS (repeatable)")
	fs.Var(&f.trustKeys, "trust-key", "fleet public key file: mDNS adverts it signed are trusted (repeatable)")
	fs.Var(&f.pins, "pin", "NAME=KEYLINE: trust the mDNS builder NAME with this SSH host key (repeatable)")
	fs.StringVar(&f.pinFile, "pin-file", "", "known_hosts-format file of pinned mDNS builder host keys")
	fs.IntVar(&f.rise, "rise", discover.DefaultRise, "good checks in a row before a builder enters the file")
	fs.IntVar(&f.fall, "fall", discover.DefaultFall, "failed checks in a row before a builder leaves the file")
	fs.StringVar(&f.interval, "interval", discover.DefaultInterval.String(), "how often each builder is checked: a keepalive on its kept SSH connection, and every 30s a fresh TCP connection and SSH banner instead (static builders, which have no agent: at every check), the full check every --full-check-every")
	fs.StringVar(&f.fullEvery, "full-check-every", discover.DefaultFullEvery.String(), "how often each builder gets the full check (SSH login and Nix handshake)")
	fs.StringVar(&f.checkTimeout, "check-timeout", health.DefaultCheckTimeout.String(), "bound on each step of a check")
	fs.StringVar(&f.banner, "banner-timeout", health.DefaultBannerTimeout.String(), "bound on the wait for the SSH banner on each new connection (a hung sshd accepts TCP but never answers)")
	fs.StringVar(&f.hold, "hold", discover.DefaultHold.String(), "how long a builder that fails its checks keeps its line, all its Nix slots held so Nix never connects to it (builds go elsewhere or wait for it), before it leaves the file")
	fs.StringVar(&f.nixStateDir, "nix-state-dir", slots.DefaultStateDir, "state directory of the Nix that reads the machines file: the client holds its build hook's slot locks in current-load/ there; empty: hold none, a failing builder leaves the file at once")
	fs.Var(&f.wait, "wait", "MIN:MAX coalescing of changes before the file is written (a change after MAX without a write is written at once)")
	fs.StringVar(&f.nixVersion, "nix-version", "", `format for this Nix: what nix --version prints ("nix (Nix) 2.26.3", "nix (Determinate Nix 3.8.2) 2.30.1", "nix (Lix, like Nix) 2.93.3") or a CppNix version such as 2.26.3 (default: what the local nix reports)`)
	fs.BoolVar(&f.once, "once", false, "do one discovery round, write the file and exit (1 if it could not be written or a source could not be read)")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&f.metricsListen, "metrics-listen", "", "serve Prometheus metrics on this HOST:PORT at /metrics, e.g. 127.0.0.1:9467 (off by default; no authentication)")
	fs.String("config", "", "JSON file whose keys are these flag names; a change restarts the client")
}

func newClientCmd(e *env) *ffcli.Command {
	fs := flag.NewFlagSet("nixrb-discover client", flag.ContinueOnError)
	var f clientFlags
	f.register(fs)
	return &ffcli.Command{
		Name:       "client",
		ShortUsage: "nixrb-discover client [flags]",
		ShortHelp:  "Keep the Nix machines file holding the builders that work",
		LongHelp: strings.TrimSpace(`
Runs on each laptop or CI host. Discovers builders among the tailnet's
peers (tagged tag:nix-builder, or named with --builder), by mDNS (--mdns,
signed or pinned adverts only) and from a --static file; checks each one
over SSH with the real Nix handshake, as Nix will use it; and rewrites the
machines file atomically whenever the healthy set changes. A builder that
stops answering leaves the file within about two seconds, so Nix never
waits on it.

Example:
  nixrb-discover client --machines /var/lib/nixrb-discover/machines`),
		FlagSet: fs,
		Options: configOptions(fs),
		Exec: func(ctx context.Context, args []string) error {
			if len(args) > 0 {
				return usageError("client takes no arguments (got %q)", args[0])
			}
			if !f.once {
				tuneIdleRuntime()
			}
			c, cleanup, err := f.build(ctx, e)
			if err != nil {
				return err
			}
			err = runClient(ctx, c, &f, e, fs.Lookup("config").Value.String())
			cleanup()
			if errors.Is(err, errReload) {
				return reexec()
			}
			return err
		},
	}
}

// build turns the flags into a discover.Client.
func (f *clientFlags) build(ctx context.Context, e *env) (*discover.Client, func(), error) {
	log, err := e.logger(f.logLevel)
	if err != nil {
		return nil, nil, err
	}
	t, err := f.check()
	if err != nil {
		return nil, nil, err
	}
	v, err := checkVersion(ctx, f.nixVersion)
	if err != nil {
		return nil, nil, err
	}
	if !v.Known() {
		log.Warn("the local Nix is not known (no nix on PATH, or its --version names no known implementation): "+
			"writing what every Nix since 2.8 reads (no ports in URIs, whole speed factors)", "fix", "pass --nix-version")
	} else {
		log.Debug("writing the machines file for the local Nix", "nix", v.String(), "port", v.PortStyle().String())
	}
	// Everything that can be refused is, before anything is changed on
	// disk (adopting the machines file, creating the SSH key).
	var mdnsSrc discover.Source
	if f.mdns {
		if mdnsSrc, err = f.mdnsSource(log); err != nil {
			return nil, nil, err
		}
	}
	if f.static != "" && !f.adopt {
		if err := staticError(&static.Source{Path: f.static, NixVersion: v, LocalSystem: localnix.System()}); err != nil {
			return nil, nil, err
		}
	}
	if err := f.claimMachines(v, log); err != nil {
		return nil, nil, err
	}
	f.warnUseless(log)
	var staticSrc *static.Source
	if f.static != "" {
		staticSrc = &static.Source{Path: f.static, NixVersion: v, LocalSystem: localnix.System(), Logger: log}
		if err := staticError(staticSrc); err != nil {
			return nil, nil, err
		}
	}
	var sources []discover.Source
	if f.tailnet {
		warnNoTailscaled(log, f.tailscaleSocket, "--tailnet=false with --static or --mdns")
		var d net.Dialer
		sources = append(sources, &tailnet.Source{
			LocalAPI: &local.Client{Socket: f.tailscaleSocket, UseSocketOnly: f.tailscaleSocket != ""},
			Dial:     d.DialContext,
			Tags:     f.tags,
			Builders: f.builders,
			Address:  f.address,
			Logger:   log,
		})
	}
	if mdnsSrc != nil {
		sources = append(sources, mdnsSrc)
	}
	if staticSrc != nil {
		sources = append(sources, staticSrc)
	}
	if len(sources) == 0 {
		return nil, nil, usageError("no source of builders: enable the tailnet (default), --mdns or --static")
	}
	host, _ := os.Hostname()
	id, err := discover.LoadOrCreateIdentity(f.sshKey, "nixrb-discover@"+host)
	if err != nil {
		return nil, nil, &exitError{code: 1, err: err}
	}
	if id.Created {
		log.Info("created the client's SSH identity; builders must accept it (enrolment, or add it to the builder user's authorized_keys)",
			"path", id.Path, "public_key", id.AuthorizedKey)
	}
	// Every third full check logs in on a new connection, so a re-keyed
	// host is noticed within 3 × --full-check-every.
	var enroll func(context.Context, discover.Candidate) error
	if f.tailnet {
		var d net.Dialer
		enroll = (&tailnet.Enroller{Dial: d.DialContext, PublicKey: id.AuthorizedKey}).Enroll
	}
	// A full check (every --full-check-every) reuses the kept connection
	// at most 3 times before it logs in afresh: a reinstalled builder that
	// no longer accepts our key is noticed within minutes.
	// The checks apply the local Nix's rules (render.NixVersion): whether
	// it builds on a daemon that does not trust it, and the oldest daemon
	// it still speaks ssh-ng to.
	checker := &health.Checker{Signer: id.Signer, Timeout: t.checkTimeout, BannerTimeout: t.banner, RefreshChecks: 3,
		UntrustedBuilds: v.BuildsOnUntrustedDaemon(), MinDaemonProtocol: v.MinDaemonProtocol(), Logger: log}
	c := &discover.Client{
		Sources: sources,
		Checker: checker,
		Membership: discover.MembershipConfig{Rise: f.rise, Fall: f.fall, Interval: t.interval, CheckStatic: f.checkStatic,
			FullEvery: t.fullEvery, Hold: t.hold},
		MachinesPath:         f.machines,
		SSHKeyPath:           f.sshKey,
		ClientKeyFingerprint: id.Fingerprint,
		NixVersion:           v,
		SSHConfigPath:        f.sshConfig,
		WaitMin:              f.wait.min,
		WaitMax:              f.wait.max,
		Enroll:               enroll,
		Once:                 f.once,
		Logger:               log,
	}
	var locker *slots.Locker
	dialect, knownLocks := slotDialect(v)
	if f.nixStateDir != "" && !f.once && !knownLocks {
		log.Warn("the local Nix's slot lock names are not known: holding none, so a failing builder leaves the machines file at once",
			"nix", v.String())
	}
	if f.nixStateDir != "" && !f.once && knownLocks {
		// Without the locks a failing builder must leave the file at
		// once, or Nix would connect to it: say so, and go on.
		if locker, err = slots.New(f.nixStateDir, dialect); err != nil {
			log.Warn("cannot hold Nix's build slots; a failing builder leaves the machines file instead",
				"nix_state_dir", f.nixStateDir, "err", err, "fix", "pass --nix-state-dir of the Nix that reads the machines file (the daemon's: /nix/var/nix)")
			locker = nil
		} else {
			c.Slots = locker
		}
	}
	return c, func() {
		checker.Close()
		if locker != nil {
			locker.Close()
		}
	}, nil
}

// clientTimes are the client's parsed durations.
type clientTimes struct {
	interval, fullEvery, checkTimeout, banner, hold time.Duration
}

// check validates the flag values that need no I/O: every value that
// cannot work is refused with the reason.
func (f *clientFlags) check() (clientTimes, error) {
	var t clientTimes
	for name, p := range map[string]struct {
		v   string
		out *time.Duration
	}{"--interval": {f.interval, &t.interval}, "--full-check-every": {f.fullEvery, &t.fullEvery}, "--check-timeout": {f.checkTimeout, &t.checkTimeout},
		"--banner-timeout": {f.banner, &t.banner}, "--hold": {f.hold, &t.hold}} {
		d, err := parsePositiveDuration(name, p.v)
		if err != nil {
			return t, err
		}
		*p.out = d
	}
	if f.address != tailnet.AddressMagicDNS && f.address != tailnet.AddressIP {
		return t, usageError("--address %q: want magicdns or ip", f.address)
	}
	if f.mdns && len(f.mdnsIfaces) == 0 {
		return t, usageError("--mdns needs at least one --mdns-iface")
	}
	if f.rise < 1 {
		return t, usageError("--rise %d: want at least 1 (good checks in a row before a builder enters the file)", f.rise)
	}
	if f.fall < 1 {
		return t, usageError("--fall %d: want at least 1 (failed checks in a row before a builder is taken out)", f.fall)
	}
	for _, tag := range f.tags {
		if !strings.HasPrefix(tag, "tag:") || len(tag) == len("tag:") {
			return t, usageError("--tag %q: a tailnet tag starts with \"tag:\", such as tag:nix-builder", tag)
		}
	}
	if f.mdns {
		if err := checkInterfaces(f.mdnsIfaces); err != nil {
			return t, err
		}
	}
	return t, nil
}

// checkInterfaces refuses --mdns-iface names this host does not have.
func checkInterfaces(names []string) error {
	for _, n := range names {
		if _, err := net.InterfaceByName(n); err != nil {
			var have []string
			if ifs, err := net.Interfaces(); err == nil {
				for _, i := range ifs {
					have = append(have, i.Name)
				}
			}
			return usageError("--mdns-iface %q: no such network interface (this host has %s)", n, strings.Join(have, ", "))
		}
	}
	return nil
}

// warnUseless warns about settings that do nothing with the others given.
func (f *clientFlags) warnUseless(log *slog.Logger) {
	if !f.mdns && (len(f.pins) > 0 || len(f.trustKeys) > 0 || f.pinFile != "") {
		log.Warn("--pin, --pin-file and --trust-key only trust mDNS builders, and mDNS is off: they do nothing (add --mdns --mdns-iface IFACE)")
	}
	if f.checkStatic && f.static != "" {
		entries, _ := render.ParseFile(f.static, render.ParseOptions{})
		for _, en := range entries {
			if en.Machine.HostKey == "" {
				log.Warn("static builder has no host key (field 8): with --check-static it cannot be checked and stays out of the file",
					"builder", en.Machine.Name(), "line", fmt.Sprintf("%s:%d", en.Path, en.Line),
					"fix", "add the base64 of its host key line (ssh-keyscan -t ed25519 HOST | cut -d' ' -f2- | base64 -w0)")
			}
		}
	}
}

func runClient(ctx context.Context, c *discover.Client, f *clientFlags, e *env, configPath string) error {
	var notify systemd.Notifier
	c.Hooks.Ready = func() { notify.Ready("first round complete") }
	c.Hooks.Status = func(s string) { notify.Status(s) }
	if wd := notify.WatchdogInterval(); wd > 0 {
		c.Hooks.TickEvery = wd
		last := time.Time{}
		c.Hooks.Tick = func() {
			if time.Since(last) >= wd/2 {
				last = time.Now()
				notify.Watchdog()
			}
		}
	}
	c.Init()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var cfgErr atomic.Pointer[configRefusal]
	status := func(ctx context.Context) (*discover.Status, error) {
		st, err := c.Status(ctx)
		if r := cfgErr.Load(); st != nil && r != nil {
			st.ConfigError = r.err.Error()
		}
		return st, err
	}
	sockErr := make(chan error, 1)
	if !c.Once && f.socket != "" {
		go func() { sockErr <- discover.ServeStatus(ctx, f.socket, status, c.Logger) }()
	}
	// A changed config file or SSH key restarts the daemon in place:
	// every setting is read afresh and nothing is half-applied.
	var changed <-chan string
	if !c.Once {
		var err error
		if changed, err = watchFiles(ctx, configPath, f.sshKey); err != nil {
			c.Logger.Warn("cannot watch the config file and SSH key; restart the client after changing them", "err", err)
		}
	}
	if !c.Once && f.metricsListen != "" {
		stop, err := startMetrics(ctx, f.metricsListen, c, c.Logger)
		if err != nil {
			return err // an exitError: 2 for a bad address, 1 for a busy port
		}
		defer stop()
	}
	runErr := make(chan error, 1)
	go func() { runErr <- c.Run(ctx) }()
	for {
		select {
		case path := <-changed:
			if path == configPath {
				// A restart with a config that does not parse would
				// stop the daemon: refuse it, keep the running one.
				if err := checkConfig(ctx, clientArgs(configPath)); err != nil {
					c.Logger.Error("config file changed but cannot be used; still running on the previous configuration", "path", path, "err", err)
					cfgErr.Store(&configRefusal{path: path, err: err})
					notify.Status("config " + path + " refused, running on the previous one")
					continue
				}
			}
			c.Logger.Info("file changed, restarting to apply it", "path", path)
			notify.Status("restarting: " + path + " changed")
			cancel()
			<-runErr
			return errReload
		case err := <-sockErr:
			cancel()
			<-runErr
			return &exitError{code: 1, err: err, hint: "is another client running? use --socket to choose another path"}
		case err := <-runErr:
			notify.Stopping()
			if errors.Is(err, discover.ErrNotWritten) || errors.Is(err, discover.ErrForeignFile) ||
				errors.Is(err, render.ErrSymlink) || errors.Is(err, render.ErrStoreSymlink) {
				return machinesError(c.MachinesPath, err)
			}
			return err
		}
	}
}

// claimMachines makes sure the client may keep the machines file before
// anything starts: with --adopt a file we did not write is handed over
// (backup, its lines into the static file); without it such a file, a
// symlink, or a missing or read-only directory stops the start with the fix.
func (f *clientFlags) claimMachines(v render.NixVersion, log *slog.Logger) error {
	if f.adopt {
		staticPath := f.static
		if staticPath == "" {
			staticPath = f.machines + ".static"
		}
		res, err := discover.Adopt(f.machines, staticPath, render.ParseOptions{NixVersion: v, LocalSystem: localnix.System()})
		if err != nil {
			return machinesError(f.machines, err)
		}
		if res.Adopted {
			log.Warn("adopted a machines file nixrb-discover did not write; its builders are now static entries",
				"path", f.machines, "static", staticPath, "backup", res.Backup, "builders", res.Builders, "skipped", len(res.Skipped))
			for _, s := range res.Skipped {
				log.Warn("adopt: invalid line left out (it stays in the backup)", "line", s)
			}
		}
		if _, err := os.Stat(staticPath); err == nil {
			f.static = staticPath
		}
	}
	if err := discover.CheckMachinesPath(f.machines); err != nil {
		return machinesError(f.machines, err)
	}
	return nil
}

// staticError reads the static file once: a missing file is a usage
// error, a broken one lists every FILE:LINE: field: problem. The client
// never starts without the builders the user wrote down.
func staticError(src *static.Source) error {
	if _, err := os.Stat(src.Path); err != nil {
		return usageError("--static: %v", err)
	}
	err := src.Check()
	var problems render.ParseErrors
	if errors.As(err, &problems) {
		return &exitError{code: 1, err: fmt.Errorf("--static %s has %d invalid lines:\n  %s", src.Path, len(problems), strings.ReplaceAll(problems.Error(), "\n", "\n  ")),
			hint: "fix them (nixrb-discover check-machines " + src.Path + " checks the file); the client does not start without its static builders"}
	}
	if err != nil {
		return &exitError{code: 1, err: fmt.Errorf("--static %s: %w", src.Path, err)}
	}
	return nil
}

// machinesError is a start-up refusal about the machines file, with the fix.
func machinesError(path string, err error) error {
	hint := ""
	switch {
	case errors.Is(err, discover.ErrForeignFile):
		hint = discover.ForeignFileHint(path)
	case errors.Is(err, render.ErrStoreSymlink):
		hint = render.StoreSymlinkHint
	case errors.Is(err, render.ErrSymlink):
		hint = render.SymlinkHint
	}
	return &exitError{code: 1, err: err, hint: hint}
}

// tuneIdleRuntime fits the Go runtime to a daemon that waits on the
// network nearly all the time (docs/BENCHMARKS.md, "Idle cost"), unless
// the user set GOMAXPROCS or GOGC. One P: a wake-up (a packet, a timer)
// no longer starts a second thread spinning for more work, and setting it
// stops the runtime re-reading the cgroup CPU limit every second. GOGC
// 25: the heap stays small (a few MiB live), so the quartered slack costs
// little GC time and keeps RSS lower.
func tuneIdleRuntime() {
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(25)
	}
}

// mdnsSource builds the mDNS source with its trust settings.
func (f *clientFlags) mdnsSource(log *slog.Logger) (discover.Source, error) {
	src := &mdns.Source{Interfaces: f.mdnsIfaces, Pins: &mdns.Pins{}, Logger: log}
	for _, path := range f.trustKeys {
		k, err := loadTrustKey(path)
		if err != nil {
			return nil, err
		}
		src.TrustKeys = append(src.TrustKeys, k)
	}
	for _, p := range f.pins {
		if err := src.Pins.AddFlag(p); err != nil {
			return nil, usageError("--pin %q: %v", p, err)
		}
	}
	if f.pinFile != "" {
		if err := src.Pins.LoadPinFile(f.pinFile); err != nil {
			return nil, usageError("--pin-file: %v", err)
		}
	}
	if len(src.TrustKeys) == 0 && src.Pins.Len() == 0 {
		log.Warn("mDNS without --trust-key or --pin: every mDNS builder will be listed as untrusted and kept out of the file")
	}
	return src, nil
}

// slotDialect is how the local Nix names its build hook's slot locks
// (render.NixVersion.SlotLockNames); ok is false when that is not known
// (Lix), and then no lock is held.
func slotDialect(v render.NixVersion) (d slots.Dialect, ok bool) {
	switch v.SlotLockNames() {
	case render.SlotLocksLegacy:
		return slots.Legacy, true
	case render.SlotLocksRendered:
		return slots.Rendered, true
	}
	return 0, false
}
