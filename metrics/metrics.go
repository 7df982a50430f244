// Package metrics exports what the discover client sees and does as
// Prometheus metrics: builders by state, health checks by result and their
// latency, machines-file renders, source errors and IPN-bus reconnects.
//
// It keeps no global state: [NewClient] registers its collectors on the
// registry it is given, [Client.Hooks] wraps the client's hooks to count
// events, and [Client.Serve] serves /metrics, refreshing the builders
// gauge from the client's status on each scrape. [Listen] refuses an
// address that would expose the metrics without saying so.
//
// # Usage
//
//	reg := prometheus.NewRegistry()
//	m := metrics.NewClient(reg)
//	c.Hooks = m.Hooks(c.Hooks)
//	ln, err := metrics.Listen("127.0.0.1:9467")
//	…
//	go m.Serve(ctx, ln, reg, c.Status, log)
package metrics

import (
	"sync"

	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/nixrb-discover/nixrb-discover/health"
	"github.com/prometheus/client_golang/prometheus"
)

// namespace prefixes every metric name.
const namespace = "nixrb_discover"

// CheckBuckets are the bounds, in seconds, of the check latency histogram:
// from a keepalive on a cached connection (about a millisecond) to a full
// check that runs into its timeout (seconds).
var CheckBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// knownStates get a builders series each, zero when no builder is in
// them, so that dashboards and alerts see a 0 rather than no data.
var knownStates = []discover.State{
	discover.StateUntrusted, discover.StateProblem, discover.StatePending,
	discover.StateHealthy, discover.StateFailing, discover.StateDown,
	discover.StateDraining, discover.StateStatic,
}

// knownHoldReasons get a slots_held series each, zero when no slot is held
// for them.
var knownHoldReasons = []string{discover.HoldDown, discover.HoldDraining, discover.HoldPending, discover.HoldLoad}

// knownResults are the result labels of checks_total, created at zero.
var knownResults = []health.Reason{
	health.ReasonUnreachable, health.ReasonTimeout, health.ReasonAuthRefused,
	health.ReasonHostKeyMismatch, health.ReasonNixNotFound, health.ReasonDaemonError,
	health.ReasonNotTrusted, health.ReasonInvalid,
}

// Render outcomes, the outcome label of renders_total.
const (
	RenderWritten   = "written"   // the file changed and was written
	RenderUnchanged = "unchanged" // the bytes were the same: nothing written
	RenderFailed    = "failed"    // the write failed
)

// Client holds the metrics of one discover.Client. Build it with
// [NewClient]; its methods are safe for concurrent use.
type Client struct {
	builders     *prometheus.GaugeVec
	checks       *prometheus.CounterVec
	checkSeconds prometheus.Histogram
	renders      *prometheus.CounterVec
	sourceErrors *prometheus.CounterVec
	reconnects   prometheus.Counter
	slotsHeld    *prometheus.GaugeVec

	mu    sync.Mutex                  // guards extra and the builders series
	extra map[discover.State]struct{} // states outside knownStates now exported
}

// NewClient creates the client metrics and registers them on reg. It
// panics if reg already holds metrics of the same names, as
// prometheus.MustRegister does: register one Client per registry.
func NewClient(reg prometheus.Registerer) *Client {
	c := &Client{
		builders: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "builders",
			Help: "Builders the client knows, by state (as list shows them), read from the client's status at each scrape.",
		}, []string{"state"}),
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "checks_total",
			Help: `Health checks by result: "ok", or the reason the check failed.`,
		}, []string{"result"}),
		checkSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "check_duration_seconds",
			Help:    "How long each health check (full check, probe or ping) took.",
			Buckets: CheckBuckets,
		}),
		renders: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "renders_total",
			Help: "Renders of the machines file by outcome: written, unchanged or failed.",
		}, []string{"outcome"}),
		sourceErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "source_errors_total",
			Help: "Errors reported by discovery sources, by source.",
		}, []string{"source"}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "tailnet_reconnects_total",
			Help: "Errors the tailnet source reported (tailscaled's IPN bus lost, or its backend not Running); each is followed by a re-subscription.",
		}),
		slotsHeld: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "slots_held",
			Help: `Nix build slots the client holds, by reason: "down", "draining", "pending" (Nix skips those builders without connecting) or "load" (other clients' builds fill them).`,
		}, []string{"reason"}),
		extra: map[discover.State]struct{}{},
	}
	reg.MustRegister(c.builders, c.checks, c.checkSeconds, c.renders, c.sourceErrors, c.reconnects, c.slotsHeld)
	for _, r := range knownHoldReasons {
		c.slotsHeld.WithLabelValues(r)
	}
	for _, st := range knownStates {
		c.builders.WithLabelValues(string(st))
	}
	c.checks.WithLabelValues("ok")
	for _, r := range knownResults {
		c.checks.WithLabelValues(string(r))
	}
	for _, o := range []string{RenderWritten, RenderUnchanged, RenderFailed} {
		c.renders.WithLabelValues(o)
	}
	return c
}

// ObserveStatus sets the builders gauge from a status snapshot: one
// series per known state (zero when empty), plus any other state that a
// builder is in now. It also creates the source_errors_total series of
// each source it lists, at zero until that source reports an error. A nil
// status changes nothing.
func (c *Client) ObserveStatus(s *discover.Status) {
	if s == nil {
		return
	}
	for _, src := range s.Sources {
		c.sourceErrors.WithLabelValues(src.Name)
	}
	held := make(map[string]int, len(knownHoldReasons))
	for _, r := range knownHoldReasons {
		held[r] = 0
	}
	for _, b := range s.Builders {
		if b.Slots != nil && b.Slots.Held > 0 && b.Slots.Reason != "" {
			held[b.Slots.Reason] += b.Slots.Held
		}
	}
	for r, n := range held {
		c.slotsHeld.WithLabelValues(r).Set(float64(n))
	}
	counts := make(map[discover.State]int, len(knownStates))
	for _, st := range knownStates {
		counts[st] = 0
	}
	for _, b := range s.Builders {
		st := b.State
		if st == "" {
			st = "unknown"
		}
		counts[st]++
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for st := range c.extra {
		if _, ok := counts[st]; !ok {
			c.builders.DeleteLabelValues(string(st))
			delete(c.extra, st)
		}
	}
	for st, n := range counts {
		c.builders.WithLabelValues(string(st)).Set(float64(n))
		if !isKnownState(st) {
			c.extra[st] = struct{}{}
		}
	}
}

func isKnownState(st discover.State) bool {
	for _, k := range knownStates {
		if k == st {
			return true
		}
	}
	return false
}

// Hooks returns next with Checked, Rendered and SourceError wrapped so
// that each event is counted first and then passed on to next's hook, if
// it has one. Ready, Status, Tick and TickEvery are next's, unchanged.
//
// Every SourceError from the tailnet source also counts as an IPN-bus
// reconnect: the tailnet source reports an error when it loses
// tailscaled's bus (or the backend stops Running), and then re-subscribes
// with backoff. The count is close, not exact: the source does not repeat
// an unchanged snapshot, so attempts that keep failing the same way count
// once, but a builder whose advert changes during the outage makes it
// report the error again, and that counts too.
func (c *Client) Hooks(next discover.Hooks) discover.Hooks {
	h := next
	h.Checked = func(key string, r health.Result) {
		c.observeCheck(r)
		if next.Checked != nil {
			next.Checked(key, r)
		}
	}
	h.Rendered = func(changed bool, err error) {
		c.observeRender(changed, err)
		if next.Rendered != nil {
			next.Rendered(changed, err)
		}
	}
	h.SourceError = func(source string, err error) {
		c.observeSourceError(source)
		if next.SourceError != nil {
			next.SourceError(source, err)
		}
	}
	return h
}

func (c *Client) observeCheck(r health.Result) {
	result := "ok"
	if !r.OK {
		result = string(r.Reason)
		if result == "" {
			result = "unknown"
		}
	}
	c.checks.WithLabelValues(result).Inc()
	c.checkSeconds.Observe(r.Took.Seconds())
}

func (c *Client) observeRender(changed bool, err error) {
	outcome := RenderUnchanged
	switch {
	case err != nil:
		outcome = RenderFailed
	case changed:
		outcome = RenderWritten
	}
	c.renders.WithLabelValues(outcome).Inc()
}

func (c *Client) observeSourceError(source string) {
	c.sourceErrors.WithLabelValues(source).Inc()
	if source == discover.SourceTailnet {
		c.reconnects.Inc()
	}
}
