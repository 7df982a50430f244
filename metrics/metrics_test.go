package metrics_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/nixrb-discover/nixrb-discover/discover/static"
	"github.com/nixrb-discover/nixrb-discover/health"
	"github.com/nixrb-discover/nixrb-discover/metrics"
	"github.com/nixrb-discover/nixrb-discover/render"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// noChecks is the HealthChecker of a client whose only source is a static
// file, which is not health-gated: it must never be called.
type noChecks struct{ t *testing.T }

func (n noChecks) Check(context.Context, health.Target) health.Result {
	n.t.Error("static entries were health-checked")
	return health.Result{}
}
func (n noChecks) Probe(ctx context.Context, t health.Target) health.Result {
	return n.Check(ctx, t)
}
func (noChecks) Ping(context.Context, health.Target) (health.Result, bool) {
	return health.Result{}, false
}
func (noChecks) Forget(string) {}

// series is one exposition: "name{labels}" → value.
type series map[string]float64

// get returns the value of a series that must be present.
func (s series) get(t *testing.T, name string) float64 {
	t.Helper()
	v, ok := s[name]
	if !ok {
		t.Fatalf("no series %s in the scrape", name)
	}
	return v
}

// parse reads the text exposition format: "name{labels} value" lines.
func parse(r io.Reader) (series, error) {
	s := series{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			return nil, fmt.Errorf("bad exposition line %q", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("bad value in %q: %w", line, err)
		}
		s[line[:i]] = v
	}
	return s, sc.Err()
}

// scrape GETs /metrics from addr like Prometheus would (text format).
func scrape(t *testing.T, addr string) series {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("scrape: %s: %s", resp.Status, b)
	}
	s, err := parse(resp.Body)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	return s
}

// gather renders g's exposition without a server.
func gather(t *testing.T, g prometheus.Gatherer) series {
	t.Helper()
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(g, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	s, err := parse(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// serve starts m.Serve on a loopback port; stop cancels it and checks
// that it returns nil promptly.
func serve(t *testing.T, m *metrics.Client, g prometheus.Gatherer, status func(context.Context) (*discover.Status, error)) (addr string, stop func()) {
	t.Helper()
	ln, err := metrics.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Serve(ctx, ln, g, status, nil) }()
	return ln.Addr().String(), func() {
		t.Helper()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Serve did not return 10 s after its context ended")
		}
	}
}

func TestScrapeRealClient(t *testing.T) {
	dir := t.TempDir()
	staticPath := filepath.Join(dir, "static")
	if err := os.WriteFile(staticPath, []byte("ssh-ng://builder@b1 x86_64-linux - 4 1 kvm\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m := metrics.NewClient(reg)
	var nextRendered, nextChecked, nextSourceErrors atomic.Int32
	c := &discover.Client{
		Sources:      []discover.Source{&static.Source{Path: staticPath}},
		Checker:      noChecks{t},
		MachinesPath: filepath.Join(dir, "machines"),
		NixVersion:   render.NixVersion{Major: 2, Minor: 8},
		Hooks: m.Hooks(discover.Hooks{
			Rendered:    func(bool, error) { nextRendered.Add(1) },
			Checked:     func(string, health.Result) { nextChecked.Add(1) },
			SourceError: func(string, error) { nextSourceErrors.Add(1) },
		}),
	}
	c.Init()
	addr, stopServe := serve(t, m, reg, c.Status)
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- c.Run(ctx) }()
	defer func() {
		cancel()
		select {
		case err := <-ran:
			if err != nil {
				t.Errorf("client: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("client did not stop 10 s after its context ended")
		}
	}()
	defer stopServe()

	// The first round writes the static builder; each scrape asks the
	// client for its builders.
	var s series
	deadline := time.Now().Add(10 * time.Second)
	for {
		s = scrape(t, addr)
		if s[`nixrb_discover_renders_total{outcome="written"}`] >= 1 && s[`nixrb_discover_builders{state="static"}`] == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no written render with one static builder after 10 s; last scrape:\n%v", s)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := s.get(t, `nixrb_discover_builders{state="healthy"}`); got != 0 {
		t.Errorf("builders{state=healthy} = %v, want 0 (a static builder is not health-gated)", got)
	}
	if n := nextRendered.Load(); n < 1 {
		t.Errorf("the wrapped Rendered hook was called %d times, want at least 1", n)
	}
	if got := s.get(t, `nixrb_discover_checks_total{result="ok"}`); got != 0 {
		t.Errorf(`checks_total{result="ok"} = %v before any check, want 0`, got)
	}
	if got := s.get(t, `nixrb_discover_source_errors_total{source="static"}`); got != 0 {
		t.Errorf(`source_errors_total{source="static"} = %v, want 0 (created from the status)`, got)
	}

	// Events the static client cannot produce, fed through its hooks.
	h := c.Hooks
	h.Checked("tailnet:n1", health.Result{Reason: health.ReasonUnreachable, Took: 30 * time.Millisecond})
	h.Checked("tailnet:n2", health.Result{OK: true, Took: 2 * time.Millisecond})
	h.Checked("tailnet:n2", health.Result{Reason: health.ReasonAuthRefused, Took: 3 * time.Second})
	h.Rendered(false, errors.New("write machines: no space left on device"))
	h.SourceError("tailnet", errors.New("tailscaled local api: ipn bus: EOF"))
	h.SourceError("tailnet", errors.New("tailscaled is Stopped, not Running"))
	h.SourceError("mdns", errors.New("mdns: join group: no such device"))

	s = scrape(t, addr)
	for name, want := range map[string]float64{
		`nixrb_discover_checks_total{result="ok"}`:                  1,
		`nixrb_discover_checks_total{result="unreachable"}`:         1,
		`nixrb_discover_checks_total{result="auth refused"}`:        1,
		`nixrb_discover_checks_total{result="timeout"}`:             0, // every reason is there from the start
		`nixrb_discover_checks_total{result="nix not on PATH"}`:     0,
		`nixrb_discover_check_duration_seconds_count`:               3,
		`nixrb_discover_check_duration_seconds_bucket{le="0.001"}`:  0,
		`nixrb_discover_check_duration_seconds_bucket{le="0.0025"}`: 1, // 2 ms
		`nixrb_discover_check_duration_seconds_bucket{le="0.025"}`:  1,
		`nixrb_discover_check_duration_seconds_bucket{le="0.05"}`:   2, // 30 ms
		`nixrb_discover_check_duration_seconds_bucket{le="2.5"}`:    2,
		`nixrb_discover_check_duration_seconds_bucket{le="5"}`:      3, // 3 s
		`nixrb_discover_check_duration_seconds_bucket{le="10"}`:     3,
		`nixrb_discover_check_duration_seconds_bucket{le="+Inf"}`:   3,
		`nixrb_discover_renders_total{outcome="failed"}`:            1,
		`nixrb_discover_source_errors_total{source="tailnet"}`:      2,
		`nixrb_discover_source_errors_total{source="mdns"}`:         1,
		`nixrb_discover_tailnet_reconnects_total`:                   2, // mdns errors are not reconnects
		`nixrb_discover_builders{state="static"}`:                   1,
		`nixrb_discover_builders{state="down"}`:                     0,
	} {
		if got := s.get(t, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if got := s.get(t, "nixrb_discover_check_duration_seconds_sum"); math.Abs(got-3.032) > 1e-9 {
		t.Errorf("check_duration_seconds_sum = %v, want 3.032", got)
	}
	// The wrapped hooks were called too.
	if n := nextChecked.Load(); n != 3 {
		t.Errorf("the wrapped Checked hook was called %d times, want 3", n)
	}
	if n := nextSourceErrors.Load(); n != 3 {
		t.Errorf("the wrapped SourceError hook was called %d times, want 3", n)
	}
}

func TestObserveStatus(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := metrics.NewClient(reg)
	m.ObserveStatus(&discover.Status{Builders: []discover.BuilderStatus{
		{Key: "tailnet:a", State: discover.StateHealthy},
		{Key: "tailnet:b", State: discover.StateHealthy},
		{Key: "mdns:c", State: discover.StateDown},
		{Key: "tailnet:d", State: "quarantined"}, // a state this package does not know yet
	}})
	s := gather(t, reg)
	for name, want := range map[string]float64{
		`nixrb_discover_builders{state="healthy"}`:     2,
		`nixrb_discover_builders{state="down"}`:        1,
		`nixrb_discover_builders{state="static"}`:      0,
		`nixrb_discover_builders{state="quarantined"}`: 1,
	} {
		if got := s.get(t, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}

	t.Run("slots-held-by-reason", func(t *testing.T) {
		m.ObserveStatus(&discover.Status{Builders: []discover.BuilderStatus{
			{Key: "tailnet:a", State: discover.StateDown, InFile: true, Slots: &discover.SlotsStatus{Max: 4, Held: 4, Reason: discover.HoldDown}},
			{Key: "tailnet:b", State: discover.StateHealthy, InFile: true, Slots: &discover.SlotsStatus{Max: 4, Held: 1, Reason: discover.HoldLoad, NixRunning: 2}},
			{Key: "tailnet:c", State: discover.StateHealthy, InFile: true, Slots: &discover.SlotsStatus{Max: 2, Held: 2, Reason: discover.HoldLoad}},
		}})
		s := gather(t, reg)
		for name, want := range map[string]float64{
			`nixrb_discover_slots_held{reason="down"}`:     4,
			`nixrb_discover_slots_held{reason="load"}`:     3,
			`nixrb_discover_slots_held{reason="draining"}`: 0,
		} {
			if got := s.get(t, name); got != want {
				t.Errorf("%s = %v, want %v", name, got, want)
			}
		}
	})

	t.Run("builders-leave", func(t *testing.T) {
		m.ObserveStatus(&discover.Status{Builders: []discover.BuilderStatus{{Key: "tailnet:a", State: discover.StateFailing}}})
		s := gather(t, reg)
		if got := s.get(t, `nixrb_discover_builders{state="healthy"}`); got != 0 {
			t.Errorf("builders{state=healthy} = %v after they left, want 0", got)
		}
		if got := s.get(t, `nixrb_discover_builders{state="failing"}`); got != 1 {
			t.Errorf("builders{state=failing} = %v, want 1", got)
		}
		if _, ok := s[`nixrb_discover_builders{state="quarantined"}`]; ok {
			t.Error("the series of an unknown state outlived its last builder")
		}
	})

	t.Run("nil-status-keeps-the-last", func(t *testing.T) {
		m.ObserveStatus(nil)
		if got := gather(t, reg).get(t, `nixrb_discover_builders{state="failing"}`); got != 1 {
			t.Errorf("builders{state=failing} = %v after a nil status, want 1", got)
		}
	})
}

func TestNewClientOwnRegistry(t *testing.T) {
	// Two clients on two registries do not collide: no global state.
	a, b := prometheus.NewRegistry(), prometheus.NewRegistry()
	metrics.NewClient(a)
	mb := metrics.NewClient(b)
	mb.Hooks(discover.Hooks{}).Rendered(true, nil)
	if got := gather(t, a).get(t, `nixrb_discover_renders_total{outcome="written"}`); got != 0 {
		t.Errorf("a render on b's client shows on a's registry: %v", got)
	}
	if got := gather(t, b).get(t, `nixrb_discover_renders_total{outcome="written"}`); got != 1 {
		t.Errorf("renders_total{outcome=written} = %v, want 1", got)
	}
}

func TestServeStatusFails(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	m := metrics.NewClient(reg)
	m.ObserveStatus(&discover.Status{Builders: []discover.BuilderStatus{{Key: "static:b1", State: discover.StateStatic}}})

	t.Run("error", func(t *testing.T) {
		addr, stop := serve(t, m, reg, func(context.Context) (*discover.Status, error) {
			return nil, errors.New("client not running")
		})
		defer stop()
		if got := scrape(t, addr).get(t, `nixrb_discover_builders{state="static"}`); got != 1 {
			t.Errorf("builders{state=static} = %v, want the last value 1", got)
		}
	})

	t.Run("stuck-client", func(t *testing.T) {
		// A client loop that never answers must not hang the scrape.
		addr, stop := serve(t, m, reg, func(ctx context.Context) (*discover.Status, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		})
		defer stop()
		start := time.Now()
		s := scrape(t, addr)
		if took := time.Since(start); took > metrics.StatusTimeout+2*time.Second {
			t.Errorf("scrape took %v with a stuck client, want about %v", took, metrics.StatusTimeout)
		}
		if got := s.get(t, `nixrb_discover_builders{state="static"}`); got != 1 {
			t.Errorf("builders{state=static} = %v, want the last value 1", got)
		}
	})
}

func TestServeStopsWithContext(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	m := metrics.NewClient(reg)
	addr, stop := serve(t, m, reg, nil)
	scrape(t, addr)
	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET / = %s, want 404: only /metrics is served", resp.Status)
	}
	stop() // fails the test unless Serve returns nil promptly
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Error("the metrics port still accepts connections after Serve returned")
	}
}

func TestCheckAddr(t *testing.T) {
	for _, tc := range []struct {
		addr string
		ok   bool
	}{
		{"127.0.0.1:9467", true},
		{"[::1]:9467", true},
		{"localhost:9467", true},
		{"100.64.0.7:9467", true}, // a tailnet address, written on purpose
		{"0.0.0.0:9467", true},    // every interface, written on purpose
		{"[::]:9467", true},
		{":9467", false},                        // every interface, by accident
		{"9467", false},                         // no host at all
		{"127.0.0.1", false},                    // no port
		{"127.0.0.1:", false},                   // empty port
		{"builder.tail1234.ts.net:9467", false}, // a name: which address would it bind?
	} {
		err := metrics.CheckAddr(tc.addr)
		if (err == nil) != tc.ok {
			t.Errorf("CheckAddr(%q) = %v, want ok=%v", tc.addr, err, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "metrics address") {
			t.Errorf("CheckAddr(%q) error lacks context: %v", tc.addr, err)
		}
	}
	if _, err := metrics.Listen(":0"); err == nil || !strings.Contains(err.Error(), "127.0.0.1:0") {
		t.Errorf("Listen(:0) = %v, want a refusal that suggests 127.0.0.1:0", err)
	}
}

func TestLoopback(t *testing.T) {
	ln, err := metrics.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if !metrics.Loopback(ln) {
		t.Errorf("Loopback(%v) = false", ln.Addr())
	}
}
