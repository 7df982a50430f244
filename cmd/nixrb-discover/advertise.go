package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"os/user"
	"strings"
	"syscall"

	"github.com/nixrb-discover/nixrb-discover/advertise"
	"github.com/nixrb-discover/nixrb-discover/systemd"
	"github.com/nixrb-discover/nixrb-discover/wire"
	"github.com/peterbourgon/ff/v3/ffcli"
	"tailscale.com/client/local"
	"tailscale.com/tailcfg"
)

// advertiseFlags are the builder agent's settings; config-file keys are the same names.
type advertiseFlags struct {
	sshUser, protocol, hostKey, hostname string
	sshPort, maxJobs                     int
	speedFactor                          float64
	systems, features, mandatory         commaList
	interval                             string
	signKey                              string
	tailnet                              bool
	socket, listen                       string
	advertPort                           int
	allowTags, allowCaps                 repeated
	mdns                                 bool
	mdnsIfaces                           repeated
	drain                                bool
	watchSSHD                            bool
	nixPath, nixStateDir                 string
	logLevel                             string
	enrollTags, enrollCaps               repeated
	enrollExtraFrom                      repeated
	enrollStore, enrollSocket            string
}

func newAdvertiseCmd(e *env) *ffcli.Command {
	fs := flag.NewFlagSet("nixrb-discover advertise", flag.ContinueOnError)
	var f advertiseFlags
	fs.StringVar(&f.sshUser, "ssh-user", advertise.DefaultSSHUser, "user Nix logs in as (nix.buildMachines sshUser)")
	fs.IntVar(&f.sshPort, "ssh-port", advertise.DefaultSSHPort, "port sshd listens on")
	fs.StringVar(&f.protocol, "protocol", wire.ProtocolSSHNG, "ssh-ng (nix-daemon --stdio) or ssh (nix-store --serve)")
	fs.StringVar(&f.hostKey, "ssh-host-key", advertise.DefaultHostKeyPath, "SSH host public key file to advertise")
	fs.StringVar(&f.hostname, "hostname", "", "host name to advertise (default: the kernel host name)")
	fs.Var(&f.systems, "systems", "comma list of systems (default: nix's system and extra-platforms)")
	fs.Var(&f.features, "features", "comma list of supported features (default: nix's system-features)")
	fs.Var(&f.mandatory, "mandatory-features", "comma list of features a build must require to come here")
	fs.IntVar(&f.maxJobs, "max-jobs", 0, "builds at once (default: nix's max-jobs; auto = cores)")
	fs.Float64Var(&f.speedFactor, "speed-factor", 0, "preference among builders, higher first (default 1)")
	fs.StringVar(&f.interval, "interval", advertise.DefaultInterval.String(), "how often capacity is measured")
	fs.StringVar(&f.signKey, "sign-key", "", "fleet private key (nixrb-discover keygen) to sign adverts with; needed for mDNS clients")
	fs.BoolVar(&f.tailnet, "tailnet", true, "serve the advert on this node's tailnet addresses")
	fs.StringVar(&f.socket, "tailscale-socket", "", "tailscaled's LocalAPI socket (default: tailscaled's usual path)")
	fs.IntVar(&f.advertPort, "advert-port", wire.DefaultAdvertPort, "TCP port of GET /v1/advert on the tailnet")
	fs.StringVar(&f.listen, "listen", "", "listen on this host:port instead of the tailnet addresses (callers are still checked with WhoIs)")
	fs.Var(&f.allowTags, "allow-tag", "only serve tailnet callers with this tag (repeatable)")
	fs.Var(&f.allowCaps, "allow-cap", "only serve tailnet callers granted this peer capability (repeatable)")
	fs.BoolVar(&f.mdns, "mdns", false, "also advertise by mDNS (needs --mdns-iface)")
	fs.Var(&f.mdnsIfaces, "mdns-iface", "network interface to advertise on by mDNS (repeatable)")
	fs.BoolVar(&f.drain, "drain", false, "start draining: clients send no new builds (SIGUSR1 toggles)")
	fs.BoolVar(&f.watchSSHD, "watch-sshd", true, "advertise draining while the local sshd on --ssh-port is dead, stopped or hung (read from the kernel 4 times a second; no connection is made)")
	fs.StringVar(&f.nixPath, "nix", "nix", "the nix binary to read the configuration from")
	fs.StringVar(&f.nixStateDir, "nix-state-dir", advertise.DefaultNixStateDir, "the Nix daemon's state directory: a build starting is seen at once by its build-user lock (userpool/), not at the next --interval")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.Var(&f.enrollTags, "enroll-allow-tag", "accept SSH key enrolment (POST /v1/enroll) from tailnet callers with this tag (repeatable)")
	fs.Var(&f.enrollCaps, "enroll-allow-cap", "accept SSH key enrolment from tailnet callers granted this peer capability (repeatable)")
	fs.Var(&f.enrollExtraFrom, "enroll-extra-from", "also accept enrolled keys from this source address (sshd from= pattern), e.g. 127.0.0.1 when tailscaled runs with --tun=userspace-networking (repeatable)")
	fs.StringVar(&f.enrollStore, "enroll-store", advertise.DefaultEnrollStore, "file the enrolled keys are kept in")
	fs.StringVar(&f.enrollSocket, "enroll-socket", advertise.DefaultEnrollSocket, "unix socket 'nixrb-discover authorized-keys' asks for the valid keys")
	fs.String("config", "", "JSON file whose keys are these flag names")
	return &ffcli.Command{
		Name:       "advertise",
		ShortUsage: "nixrb-discover advertise [flags]",
		ShortHelp:  "Advertise this builder on the tailnet and by mDNS",
		LongHelp: strings.TrimSpace(`
Runs on each builder. Reads what it can build from the local Nix
(nix config show / show-config: system, extra-platforms, system-features,
max-jobs), its capacity from /proc and its SSH host key, and serves that
advert on the tailnet (GET /v1/advert on --advert-port, only on this
node's tailnet addresses, only to tailnet peers) and, with --mdns, by
DNS-SD (_nix-builder._tcp) on the chosen interfaces. SIGUSR1 toggles
draining; SIGTERM publishes a draining advert, says goodbye and exits.
With --watch-sshd (the default) the advert also says draining while the
local sshd on --ssh-port is dead, stopped or hung, so that Nix never
stalls on this builder (from when sshd is first seen listening; with
Tailscale SSH, which has no sshd, use --watch-sshd=false).
With --enroll-allow-tag or --enroll-allow-cap, tailnet clients with that
tag or capability enrol their SSH keys themselves (POST /v1/enroll); sshd
reads them with 'nixrb-discover authorized-keys' (see its help). Each key
logs in only from its node's tailnet addresses (and --enroll-extra-from);
a revoked key's open sessions are ended.

Example:
  nixrb-discover advertise --ssh-user nixrb-builder --features kvm,big-parallel`),
		FlagSet: fs,
		Options: configOptions(fs),
		Exec: func(ctx context.Context, args []string) error {
			if len(args) > 0 {
				return usageError("advertise takes no arguments (got %q)", args[0])
			}
			return runAdvertise(ctx, e, &f)
		},
	}
}

func runAdvertise(ctx context.Context, e *env, f *advertiseFlags) error {
	log, err := e.logger(f.logLevel)
	if err != nil {
		return err
	}
	interval, err := parsePositiveDuration("--interval", f.interval)
	if err != nil {
		return err
	}
	if f.mdns && len(f.mdnsIfaces) == 0 {
		return usageError("--mdns needs at least one --mdns-iface (the responder never picks interfaces by itself)")
	}
	if !f.tailnet && !f.mdns {
		return usageError("nothing to advertise on: use the tailnet (default) or --mdns")
	}
	for name, port := range map[string]int{"--ssh-port": f.sshPort, "--advert-port": f.advertPort} {
		if port < 1 || port > 65535 {
			return usageError("%s %d: want a TCP port, 1 to 65535", name, port)
		}
	}
	if _, err := user.Lookup(f.sshUser); err != nil {
		log.Warn(fmt.Sprintf("--ssh-user %s does not exist on this builder: Nix logs in as that user, so builds sent here fail (create it, or pass the user sshd lets Nix in as)", f.sshUser), "err", err)
	}
	if f.tailnet {
		warnNoTailscaled(log, f.socket, "--tailnet=false --mdns")
	}
	hostKey := f.hostKey
	agent := &advertise.Agent{
		Facts: advertise.FactsOptions{
			NixPath:     f.nixPath,
			HostKeyPath: hostKey,
			NixStateDir: f.nixStateDir,
			Overrides: advertise.Overrides{
				Hostname:          f.hostname,
				SSHUser:           f.sshUser,
				SSHPort:           f.sshPort,
				Protocol:          f.protocol,
				Systems:           f.systems.value(),
				SupportedFeatures: f.features.value(),
				MandatoryFeatures: f.mandatory.value(),
				MaxJobs:           f.maxJobs,
				SpeedFactor:       f.speedFactor,
				Draining:          f.drain,
				AgentVersion:      agentVersion(),
			},
		},
		Interval: interval,
		Logger:   log,
	}
	if f.watchSSHD {
		agent.SSHWatch = &advertise.SSHWatch{Port: f.sshPort}
	}
	if f.signKey != "" {
		k, err := loadSigningKey(f.signKey)
		if err != nil {
			return err
		}
		agent.SigningKey = k
	} else if f.mdns {
		log.Warn("advertising by mDNS without --sign-key: clients accept the advert only if they pin this builder's host key")
	}
	enrolling := len(f.enrollTags) > 0 || len(f.enrollCaps) > 0
	if _, ok := fromPatterns(f.enrollExtraFrom); len(f.enrollExtraFrom) > 0 && !ok {
		return usageError("--enroll-extra-from %q: want addresses or CIDRs (letters, digits and .:*?/-)", f.enrollExtraFrom.String())
	}
	if enrolling && !f.tailnet {
		return usageError("--enroll-allow-tag and --enroll-allow-cap need the tailnet")
	}
	if f.tailnet {
		lc := &local.Client{Socket: f.socket, UseSocketOnly: f.socket != ""}
		var caps []tailcfg.PeerCapability
		for _, c := range f.allowCaps {
			caps = append(caps, tailcfg.PeerCapability(c))
		}
		agent.Tailnet = &advertise.TailnetServer{
			LocalAPI:   lc,
			Listen:     net.Listen,
			Port:       f.advertPort,
			ListenAddr: f.listen,
			AllowTags:  f.allowTags,
			AllowCaps:  caps,
			Logger:     log,
		}
		if enrolling {
			var ecaps []tailcfg.PeerCapability
			for _, c := range f.enrollCaps {
				ecaps = append(ecaps, tailcfg.PeerCapability(c))
			}
			enr := &advertise.Enroller{
				AllowTags: f.enrollTags,
				AllowCaps: ecaps,
				StorePath: f.enrollStore,
				User:      f.sshUser,
				LocalAPI:  lc,
				Logger:    log,
				ExtraFrom: f.enrollExtraFrom,
			}
			if _, err := enr.Keys(); err != nil {
				return err
			}
			agent.Facts.Overrides.Enroll = true
			agent.Tailnet.Handle("POST "+wire.EnrollPath, enr.Handler())
			sctx, stopSocket := context.WithCancel(ctx)
			socketDone := make(chan struct{})
			go func() {
				defer close(socketDone)
				if err := enr.ServeSocket(sctx, f.enrollSocket); err != nil {
					log.Error("enroll socket failed: sshd gets no enrolled keys", "err", err)
				}
			}()
			defer func() { stopSocket(); <-socketDone }()
		}
	}
	if f.mdns {
		agent.MDNS = &advertise.MDNSResponder{Hostname: f.hostname, Interfaces: f.mdnsIfaces, Logger: log}
	}
	var notify systemd.Notifier
	first := true
	agent.OnChange = func(a *wire.Advert) {
		status := fmt.Sprintf("advertising %s, %d jobs", strings.Join(a.Systems, ","), a.MaxJobs)
		if a.Draining {
			status = "draining: no new builds"
		}
		if first {
			first = false
			notify.Ready(status)
			return
		}
		notify.Status(status)
	}
	if wd := notify.WatchdogInterval(); wd > 0 {
		agent.TickEvery = wd
		agent.Tick = func() { notify.Watchdog() }
	}
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	defer signal.Stop(usr1)
	go func() {
		for {
			select {
			case <-usr1:
				agent.ToggleDrain()
			case <-ctx.Done():
				return
			}
		}
	}()
	err = agent.Run(ctx)
	notify.Stopping()
	return err
}
