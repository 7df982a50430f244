// Package demo runs nixrb-discover's main job in one process, for a
// newcomer with nothing but Go: an in-process tailnet (Tailscale's tsnet
// nodes, its testcontrol coordination server, DERP and STUN, all on
// 127.0.0.1), two tagged builders and one untagged peer running the real
// advertise agent, and the real discover client keeping a machines file.
//
// What is simulated is said in the output: the builders' facts are given
// (no nix needed), and each builder's SSH endpoint is an in-process SSH
// server that answers the Nix worker protocol handshake but cannot build.
//
// Only cmd/nixrb-demo imports this package: it links tsnet and testcontrol,
// which must stay out of the nixrb-discover binary.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/nixrb-discover/nixrb-discover/discover/slots"
	"github.com/nixrb-discover/nixrb-discover/discover/tailnet"
	"github.com/nixrb-discover/nixrb-discover/health"
	"github.com/nixrb-discover/nixrb-discover/render"
	"tailscale.com/types/logger"
)

// DefaultTimeout bounds each wait of the demo.
const DefaultTimeout = 20 * time.Second

// Options configure Run. The zero value prints nothing and logs nothing.
type Options struct {
	// Stdout gets the demo's output; nil discards it.
	Stdout io.Writer
	// Logger gets the logs of the client, the agents and (at debug
	// level) Tailscale's; nil discards them.
	Logger *slog.Logger
	// TailscaleLogs sends Tailscale's own (many) log lines to Logger too,
	// at debug level.
	TailscaleLogs bool
	// Timeout bounds each wait; zero means DefaultTimeout.
	Timeout time.Duration
}

// The demo's cast: two tagged builders and an untagged peer that runs the
// same agent but must never be used.
var (
	specB1       = builderSpec{name: "b1", tags: []string{TagBuilder}, systems: []string{"x86_64-linux", "i686-linux"}, features: []string{"big-parallel", "kvm"}, maxJobs: 8, speed: 2}
	specB2       = builderSpec{name: "b2", tags: []string{TagBuilder}, systems: []string{"aarch64-linux"}, features: []string{"big-parallel"}, maxJobs: 4, speed: 1}
	specUntagged = builderSpec{name: "untagged", systems: []string{"x86_64-linux"}, features: []string{}, maxJobs: 16, speed: 4}
)

// demo is one run's state.
type demo struct {
	out      io.Writer
	log      *slog.Logger
	timeout  time.Duration
	client   *discover.Client
	machines string
	rendered chan struct{}
}

// Run runs the whole demo and returns once everything it started has
// stopped. It fails with a clear error when a step does not happen in
// time.
func Run(ctx context.Context, o Options) error {
	start := time.Now()
	d := &demo{out: o.Stdout, log: o.Logger, timeout: o.Timeout, rendered: make(chan struct{}, 1)}
	if d.out == nil {
		d.out = io.Discard
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	if d.timeout <= 0 {
		d.timeout = DefaultTimeout
	}
	dir, err := os.MkdirTemp("", "nixrb-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	d.machines = filepath.Join(dir, "machines")
	d.banner()

	tslogf := logger.Discard
	if o.TailscaleLogs {
		tslog := d.log.With("component", "tailscale")
		tslogf = func(f string, a ...any) { tslog.Debug(fmt.Sprintf(f, a...)) }
	}
	tn, err := newTailnet(ctx, filepath.Join(dir, "nodes"), tslogf)
	if err != nil {
		return fmt.Errorf("start the tailnet: %w", err)
	}
	defer tn.close()

	id, err := discover.LoadOrCreateIdentity(filepath.Join(dir, "client", "id_ed25519"), "nixrb-demo-client")
	if err != nil {
		return err
	}
	b1, b2, untagged, laptop, err := d.startNodes(ctx, tn, id)
	if err != nil {
		return err
	}

	checker := &health.Checker{Signer: id.Signer, Dial: laptop.server.Dial, Logger: d.log.With("component", "health")}
	defer checker.Close()
	// The laptop's Nix state directory: its build hook's slot locks live
	// in current-load/, where the client holds those of broken builders.
	stateDir := filepath.Join(dir, "nix-state")
	if err := os.Mkdir(stateDir, 0o755); err != nil {
		return err
	}
	locker, err := slots.New(stateDir, slots.Legacy)
	if err != nil {
		return err
	}
	defer locker.Close()
	d.client = &discover.Client{
		Sources:              []discover.Source{&tailnet.Source{LocalAPI: laptop.lc, Dial: laptop.server.Dial, Logger: d.log}},
		Checker:              checker,
		Slots:                locker,
		MachinesPath:         d.machines,
		SSHKeyPath:           id.Path,
		ClientKeyFingerprint: id.Fingerprint,
		NixVersion:           render.NixVersion{Major: 2, Minor: 8},
		Logger:               d.log,
		Hooks: discover.Hooks{Rendered: func(bool, error) {
			select {
			case d.rendered <- struct{}{}:
			default:
			}
		}},
	}
	d.client.Init()
	cctx, stopClient := context.WithCancel(ctx)
	clientDone := make(chan error, 1)
	clientStarted := time.Now()
	go func() { clientDone <- d.client.Run(cctx) }()
	defer func() {
		stopClient()
		select {
		case <-clientDone:
		case <-time.After(d.timeout):
		}
	}()

	// 1. Both tagged builders join; the untagged peer is not even a candidate.
	fmt.Fprintf(d.out, "Starting the client on laptop (writes %s)...\n", d.machines)
	if _, err := d.waitFile(ctx, "listed b1 and b2", func(f string) bool {
		return strings.Contains(f, b1.node.fqdn) && strings.Contains(f, b2.node.fqdn)
	}); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "  b1 and b2 are in the machines file %s after the client started.\n\n", ms(time.Since(clientStarted)))
	if err := d.show(ctx, true); err != nil {
		return err
	}
	if err := d.showPeers(ctx, laptop); err != nil {
		return err
	}
	if err := d.cat(); err != nil {
		return err
	}

	// 2. A clean stop: the agent's draining advert reaches the client at once.
	fmt.Fprintf(d.out, "Stopping b2's agent cleanly (what `systemctl stop nixrb-discover-advertise` does):\n")
	t0 := time.Now()
	stopped := make(chan error, 1)
	go func() { stopped <- b2.stop() }()
	seen, err := d.waitHeld(ctx, b2.node.fqdn, discover.HoldDraining)
	if err != nil {
		return err
	}
	fmt.Fprintf(d.out, "  b2's Nix slots are held %s after its agent stopped: Nix skips it without connecting\n"+
		"  (it published a draining advert; the client's long poll of /v1/advert got it at once).\n"+
		"  Its line stays while it drains (up to --hold), so the file is not rewritten.\n\n", ms(seen.Sub(t0)))
	if err := <-stopped; err != nil {
		return err
	}

	// 3. A crash: the SSH endpoint dies, the health checks notice.
	fmt.Fprintf(d.out, "Killing b1's SSH endpoint abruptly (as if sshd died; its agent keeps advertising):\n")
	t0 = time.Now()
	b1.ssh.kill()
	seen, err = d.waitHeld(ctx, b1.node.fqdn, discover.HoldDown)
	if err != nil {
		return err
	}
	fmt.Fprintf(d.out, "  b1's Nix slots are held %s after its SSH endpoint died (%d failed checks in a row):\n"+
		"  Nix skips it without connecting, and its line stays (up to --hold, %s), so a build\n"+
		"  waiting for it resumes there when it is back, with no rewrite of the file.\n\n",
		ms(seen.Sub(t0)), discover.DefaultFall, discover.DefaultHold)

	if err := d.show(ctx, false); err != nil {
		return err
	}
	if err := d.cat(); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "Nix's slot locks in %s (held by the client: Nix's build hook finds no free slot there):\n", locker.Dir())
	for _, st := range locker.States() {
		fmt.Fprintf(d.out, "  %-45s %d of %d held\n", st.StoreURI, st.Held, st.MaxJobs)
	}
	fmt.Fprintln(d.out)
	if f, _ := os.ReadFile(d.machines); strings.Contains(string(f), untagged.node.fqdn) {
		return fmt.Errorf("the untagged peer is in the machines file:\n%s", f)
	}
	fmt.Fprintf(d.out, "Done in %s. Everything ran in this process and is now stopped and removed.\n", ms(time.Since(start)))
	return nil
}

// waitFile waits (bounded) until the machines file satisfies ok and
// returns when it first saw it so.
func (d *demo) waitFile(ctx context.Context, what string, ok func(string) bool) (time.Time, error) {
	deadline := time.NewTimer(d.timeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		b, _ := os.ReadFile(d.machines)
		if ok(string(b)) {
			return time.Now(), nil
		}
		select {
		case <-d.rendered:
		case <-tick.C:
		case <-deadline.C:
			return time.Time{}, fmt.Errorf("the client never %s within %s; the machines file holds:\n%s", what, d.timeout, b)
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		}
	}
}

// waitHeld waits (bounded) until the client holds all of the named
// builder's Nix slots for reason, and returns when it first saw it.
func (d *demo) waitHeld(ctx context.Context, name, reason string) (time.Time, error) {
	deadline := time.Now().Add(d.timeout)
	for {
		st, err := d.client.Status(ctx)
		if err != nil {
			return time.Time{}, err
		}
		for _, b := range st.Builders {
			if b.Name == name && b.Slots != nil && b.Slots.Held == b.Slots.Max && b.Slots.Reason == reason {
				return time.Now(), nil
			}
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("the client never held %s's slots (%s) within %s", name, reason, d.timeout)
		}
		select {
		case <-time.After(5 * time.Millisecond):
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		}
	}
}

func notContains(s string) func(string) bool {
	return func(f string) bool { return !strings.Contains(f, s) }
}

// ms formats a duration for people: "34 ms", "1.3 s".
func ms(d time.Duration) string {
	if d < time.Second {
		return fmt.Sprintf("%d ms", d.Milliseconds())
	}
	return fmt.Sprintf("%.1f s", d.Seconds())
}

func orDash(ss []string) string {
	if len(ss) == 0 {
		return "-"
	}
	return strings.Join(ss, ",")
}

// startNodes starts the three builders and the client's node at once and
// waits until the client's node sees them all online.
func (d *demo) startNodes(ctx context.Context, tn *inProcTailnet, id *discover.Identity) (b1, b2, untagged *builder, laptop *node, err error) {
	fmt.Fprintf(d.out, "Starting the tailnet (control, DERP, STUN on 127.0.0.1) and 4 nodes...\n")
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	startB := func(s builderSpec) (*builder, error) {
		return startBuilder(ctx, tn, s, id.Signer.PublicKey(), d.log)
	}
	var wg sync.WaitGroup
	var e1, e2, e3, e4 error
	wg.Go(func() { b1, e1 = startB(specB1) })
	wg.Go(func() { b2, e2 = startB(specB2) })
	wg.Go(func() { untagged, e3 = startB(specUntagged) })
	wg.Go(func() { laptop, e4 = tn.addNode(ctx, "laptop") })
	wg.Wait()
	if err := errors.Join(e1, e2, e3, e4); err != nil {
		return nil, nil, nil, nil, fmt.Errorf("start the demo nodes (bounded by %s): %w", d.timeout, err)
	}
	if err := waitPeers(ctx, laptop, b1.node, b2.node, untagged.node); err != nil {
		return nil, nil, nil, nil, err
	}
	fmt.Fprintf(d.out, "  ready in %s:\n", ms(time.Since(start)))
	for _, b := range []*builder{b1, b2, untagged} {
		tag := "no tags"
		if len(b.spec.tags) > 0 {
			tag = strings.Join(b.spec.tags, ",")
		}
		fmt.Fprintf(d.out, "  %-9s %-16s advertises %s (features %s, %d jobs)\n", b.spec.name, tag,
			strings.Join(b.spec.systems, ","), orDash(b.spec.features), b.spec.maxJobs)
	}
	fmt.Fprintf(d.out, "  %-9s %-16s runs the client (tailnet source, builder tag %s)\n\n", "laptop", "no tags", TagBuilder)
	return b1, b2, untagged, laptop, nil
}
