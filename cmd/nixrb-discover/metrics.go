package main

import (
	"context"
	"log/slog"

	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/nixrb-discover/nixrb-discover/metrics"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// startMetrics serves Prometheus metrics of c on addr (--metrics-listen)
// until ctx is done or stop is called; with addr empty it does nothing.
// Call it after the other hooks are set and before c.Run: it wraps
// c.Hooks and calls c.Init so that scrapes can ask c.Status. A bad
// address is a usage error; a busy one fails here, before the client
// starts. stop shuts the server down and waits for it.
func startMetrics(ctx context.Context, addr string, c *discover.Client, log *slog.Logger) (stop func(), err error) {
	if addr == "" {
		return func() {}, nil
	}
	if err := metrics.CheckAddr(addr); err != nil {
		return nil, usageError("--metrics-listen: %v", err)
	}
	ln, err := metrics.Listen(addr)
	if err != nil {
		return nil, &exitError{code: 1, err: err, hint: "is another process using this port? choose another with --metrics-listen"}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if !metrics.Loopback(ln) {
		log.Warn("serving metrics beyond this machine, without authentication", "addr", ln.Addr().String())
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := metrics.NewClient(reg)
	c.Hooks = m.Hooks(c.Hooks)
	c.Init()
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := m.Serve(ctx, ln, reg, c.Status, log); err != nil {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	return func() {
		cancel()
		<-done
	}, nil
}
