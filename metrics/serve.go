package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Bounds of the metrics server.
const (
	// StatusTimeout bounds the wait for the client's status at a scrape;
	// past it the scrape is answered with the last builders it got.
	StatusTimeout = 2 * time.Second
	// shutdownTimeout bounds the wait for scrapes in flight when Serve stops.
	shutdownTimeout = 5 * time.Second
)

// CheckAddr checks a --metrics-listen address. It must be HOST:PORT, and
// HOST an IP address or "localhost": an empty host (":9467") would serve
// every interface without anyone having asked for it, and a name that
// resolves elsewhere would bind an address nobody wrote down. A
// non-loopback address, 0.0.0.0 and :: included, is accepted because it was
// written explicitly; the metrics have no authentication.
func CheckAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("metrics address %q: %w (want HOST:PORT, e.g. 127.0.0.1:9467)", addr, err)
	}
	if port == "" {
		return fmt.Errorf("metrics address %q: no port (want HOST:PORT, e.g. 127.0.0.1:9467)", addr)
	}
	switch host {
	case "":
		return fmt.Errorf("metrics address %q: no host, which would serve every interface: use 127.0.0.1:%s for this machine only, or 0.0.0.0:%s to serve the network on purpose", addr, port, port)
	case "localhost":
		return nil
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return fmt.Errorf("metrics address %q: host %q is not an IP address or localhost", addr, host)
	}
	return nil
}

// Listen checks addr with [CheckAddr] and listens on it (TCP). Listening
// before serving lets the caller report a bad or busy address at startup,
// and learn the port when addr asks for port 0.
func Listen(addr string) (net.Listener, error) {
	if err := CheckAddr(addr); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err) // "listen tcp ADDR: bind: …"
	}
	return ln, nil
}

// Loopback reports whether ln only accepts connections from this machine.
func Loopback(ln net.Listener) bool {
	a, ok := ln.Addr().(*net.TCPAddr)
	return ok && a.IP.IsLoopback()
}

// Serve serves GET /metrics on ln from g until ctx is done, then shuts
// down (waiting briefly for scrapes in flight), closes ln and returns nil.
// It returns an error only if serving fails. Before each scrape it asks
// status (c.Status of the discover client; nil skips this) for the
// current builders, bounded by [StatusTimeout], and sets the builders
// gauge with [Client.ObserveStatus]; if that fails, the scrape reports
// the last builders it saw and the failure is logged.
//
// g should be the registry c was registered on (it may hold other
// collectors too). log may be nil.
func (c *Client) Serve(ctx context.Context, ln net.Listener, g prometheus.Gatherer, status func(context.Context) (*discover.Status, error), log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "metrics")
	gathered := promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorLog:            promLog{log},
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
	})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		if status != nil {
			c.refresh(r.Context(), status, log)
		}
		gathered.ServeHTTP(w, r)
	})
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      StatusTimeout + 20*time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("serving metrics", "addr", ln.Addr().String(), "path", "/metrics")
	select {
	case err := <-served:
		return fmt.Errorf("metrics: serve on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("scrapes still in flight at shutdown, closing them", "err", err)
		srv.Close()
	}
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics: serve on %s: %w", ln.Addr(), err)
	}
	return nil
}

// refresh sets the builders gauge from the client's current status.
func (c *Client) refresh(ctx context.Context, status func(context.Context) (*discover.Status, error), log *slog.Logger) {
	ctx, cancel := context.WithTimeout(ctx, StatusTimeout)
	defer cancel()
	s, err := status(ctx)
	if err != nil {
		log.Warn("cannot read the client's status, reporting the last builders seen", "err", err)
		return
	}
	c.ObserveStatus(s)
}

// promLog passes promhttp's errors to slog.
type promLog struct{ log *slog.Logger }

func (p promLog) Println(v ...any) {
	p.log.Error("cannot gather metrics", "err", fmt.Sprint(v...))
}
