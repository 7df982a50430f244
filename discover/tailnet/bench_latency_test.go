//go:build linux

package tailnet_test

import (
	"context"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/nixrb-discover/nixrb-discover/discover/tailnet"
	"github.com/nixrb-discover/nixrb-discover/health"
	"github.com/nixrb-discover/nixrb-discover/internal/clienttest"
	"github.com/nixrb-discover/nixrb-discover/internal/nixtest"
	"github.com/nixrb-discover/nixrb-discover/internal/tailnettest"
	"github.com/nixrb-discover/nixrb-discover/render"
)

// BenchmarkClientTailnetLatency measures, with the client's default
// settings, on an in-process tailnet with real sshd + nix-daemon behind
// each builder, how long the machines file takes to follow:
//
//	join     builder comes online → its line is in the file (incl. advert fetch and the SSH + Nix check)
//	offline  control marks it offline → line gone
//	killed   its sshd is SIGKILLed → line gone
//	hung     its sshd is SIGSTOPped → line gone
//
// Each iteration runs every scenario once; the medians and p95 are reported.
//
//	go test -run '^$' -bench BenchmarkClientTailnetLatency -benchtime 20x ./discover
func BenchmarkClientTailnetLatency(b *testing.B) {
	nixtest.RequireTools(b)
	tn := tailnettest.New(b)
	dir := nixtest.WorkDir(b, "latency")
	id, err := discover.LoadOrCreateIdentity(filepath.Join(dir, "id_ed25519"), "client")
	if err != nil {
		b.Fatal(err)
	}
	tb := startTailnetBuilder(b, tn, "lat", []string{tailnettest.TagBuilder}, nixtest.BuilderOptions{Version: nixtest.V28, AuthorizedKeys: []string{id.AuthorizedKey}})
	other := startTailnetBuilder(b, tn, "steady", []string{tailnettest.TagBuilder}, nixtest.BuilderOptions{Version: nixtest.V28, AuthorizedKeys: []string{id.AuthorizedKey}})
	cn := tn.AddNode(b, "laptop", tailnettest.TagClient)
	machines := filepath.Join(dir, "machines")
	c := &discover.Client{
		Sources:      []discover.Source{&tailnet.Source{LocalAPI: cn.LocalClient, Dial: cn.Server.Dial}},
		Checker:      &health.Checker{Signer: id.Signer, Dial: cn.Server.Dial, BannerTimeout: 500 * time.Millisecond, RefreshChecks: 3},
		MachinesPath: machines,
		SSHKeyPath:   id.Path,
		NixVersion:   render.NixVersion{Major: 2, Minor: 8},
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	name := tb.node.FQDN
	clienttest.WaitFile(b, machines, "listed both builders", func(f string) bool {
		return strings.Contains(f, name) && strings.Contains(f, other.node.FQDN)
	})

	lat := map[string][]time.Duration{}
	measure := func(scenario string, fault func(), present bool) {
		// Faults come at a random moment of the check cycle, as in life.
		time.Sleep(time.Duration(rand.Int64N(int64(discover.DefaultInterval))))
		start := time.Now()
		fault()
		clienttest.WaitFile(b, machines, scenario, func(f string) bool { return strings.Contains(f, name) == present })
		lat[scenario] = append(lat[scenario], time.Since(start))
	}
	b.ResetTimer()
	for b.Loop() {
		measure("offline", func() { tn.SetOnline(b, tb.node, false) }, false)
		measure("join", func() { tn.SetOnline(b, tb.node, true) }, true)
		measure("killed", func() { tb.nix.KillSSHD() }, false)
		tb.nix.RestartSSHD()
		clienttest.WaitFile(b, machines, "back after restart", func(f string) bool { return strings.Contains(f, name) })
		measure("hung", func() { tb.nix.StopSSHD() }, false)
		tb.nix.ContSSHD()
		clienttest.WaitFile(b, machines, "back after SIGCONT", func(f string) bool { return strings.Contains(f, name) })
	}
	b.StopTimer()
	for _, s := range []string{"join", "offline", "killed", "hung"} {
		med, p95 := clienttest.Quantiles(lat[s])
		b.ReportMetric(float64(med.Microseconds())/1000, s+"-p50-ms")
		b.ReportMetric(float64(p95.Microseconds())/1000, s+"-p95-ms")
		b.Logf("%-8s n=%d p50=%v p95=%v", s, len(lat[s]), med.Round(time.Millisecond), p95.Round(time.Millisecond))
	}
}
