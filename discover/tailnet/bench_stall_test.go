//go:build linux

package tailnet_test

import (
	"context"
	"fmt"
	"os"
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

// BenchmarkDeadBuilderStall is what the product is for: a real
// `nix-build --max-jobs 0` of a trivial derivation with two builders, one
// of them broken (sshd hung by SIGSTOP, or its packets dropped), through
// (a) a hand-written machines file listing both (the broken one ranked
// first, as a faster machine would be) and (b) the file the client keeps,
// started with both healthy, the fault injected, the build started 5 s
// later. Static builds are capped (Nix would wait 135 s or forever).
//
//	go test -run '^$' -bench BenchmarkDeadBuilderStall -benchtime 5x -timeout 60m ./discover
func BenchmarkDeadBuilderStall(b *testing.B) {
	nixtest.RequireTools(b)
	const staticCap = 30 * time.Second
	tn := tailnettest.New(b)
	dir := nixtest.WorkDir(b, "stall")
	id, err := discover.LoadOrCreateIdentity(filepath.Join(dir, "id_ed25519"), "client")
	if err != nil {
		b.Fatal(err)
	}
	auth := []string{id.AuthorizedKey}
	good := startTailnetBuilder(b, tn, "good", []string{tailnettest.TagBuilder}, nixtest.BuilderOptions{Version: nixtest.V28, AuthorizedKeys: auth})
	bad := startTailnetBuilder(b, tn, "bad", []string{tailnettest.TagBuilder}, nixtest.BuilderOptions{Version: nixtest.V28, AuthorizedKeys: auth})
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

	cfg := filepath.Join(dir, "ssh_config")
	var sb strings.Builder
	for _, tb := range []*tailnetBuilder{good, bad} {
		fmt.Fprintf(&sb, "Host %s\n  HostName %s\n  HostKeyAlias %s\n", tb.node.FQDN, tb.nix.Addr, tb.node.FQDN)
	}
	if err := os.WriteFile(cfg, []byte(sb.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	// The hand-written file: both builders, the broken one ranked first.
	static := filepath.Join(dir, "static")
	line := func(tb *tailnetBuilder, speed int) string {
		return fmt.Sprintf("ssh-ng://root@%s %s %s 1 %d - - %s", tb.node.FQDN, nixtest.System, id.Path, speed, tb.nix.HostKeyBase64())
	}
	if err := os.WriteFile(static, []byte(line(bad, 10)+"\n"+line(good, 1)+"\n"), 0o644); err != nil {
		b.Fatal(err)
	}

	build := func(file string, limit time.Duration) (time.Duration, string, error) {
		bctx, bcancel := context.WithTimeout(context.Background(), limit)
		defer bcancel()
		start := time.Now()
		out, stderr, err := nixtest.NixBuild(b, bctx, nixtest.ClientOptions{Version: nixtest.V28, MachinesFile: file, SSHOpts: "-F " + cfg,
			Expr: nixtest.TrivialDerivation("stall")})
		took := time.Since(start)
		if err != nil && bctx.Err() == nil {
			return took, stderr, err
		}
		return took, strings.TrimSpace(out), nil
	}
	faults := []struct {
		name          string
		inject, clear func() error
	}{
		{"hung-sshd", bad.nix.StopSSHD, bad.nix.ContSSHD},
		{"packets-dropped", bad.nix.LinkDown, bad.nix.LinkUp},
	}
	res := map[string][]time.Duration{}
	for b.Loop() {
		for _, f := range faults {
			clienttest.WaitFile(b, machines, "both builders in the file", func(s string) bool {
				return strings.Contains(s, good.node.FQDN) && strings.Contains(s, bad.node.FQDN)
			})
			if err := f.inject(); err != nil {
				b.Fatal(err)
			}
			time.Sleep(5 * time.Second)
			took, who, err := build(machines, 2*time.Minute)
			if err != nil || who != "good" {
				b.Fatalf("%s: managed build: %v %q", f.name, err, who)
			}
			res[f.name+"/managed"] = append(res[f.name+"/managed"], took)
			took, _, _ = build(static, staticCap)
			res[f.name+"/hand-written"] = append(res[f.name+"/hand-written"], took)
			if err := f.clear(); err != nil {
				b.Fatal(err)
			}
		}
	}
	for _, f := range faults {
		m, _ := clienttest.Quantiles(res[f.name+"/managed"])
		s, _ := clienttest.Quantiles(res[f.name+"/hand-written"])
		capped := ""
		if s >= staticCap {
			capped = " (capped: Nix was still waiting)"
		}
		b.ReportMetric(float64(m.Milliseconds()), f.name+"-managed-ms")
		b.ReportMetric(float64(s.Milliseconds()), f.name+"-handwritten-ms")
		b.Logf("%-16s hand-written file p50 %v%s, managed file p50 %v: %.0f× faster", f.name, s.Round(time.Millisecond), capped, m.Round(time.Millisecond), float64(s)/float64(m))
	}
}
