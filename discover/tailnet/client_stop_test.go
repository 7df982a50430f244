//go:build linux

package tailnet_test

import (
	"context"
	"log/slog"
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

// TestClientOnTailnetCleanStop runs the real client against three real
// builders (agent, sshd, nix-daemon) on an in-process tailnet and stops
// two agents cleanly, one after the other (as SIGTERM does): each line
// leaves the machines file as soon as the agent's draining advert is
// pushed over the held long poll, while the other builders stay. The
// source's Refresh is an hour, so nothing but the push can explain it.
func TestClientOnTailnetCleanStop(t *testing.T) {
	nixtest.RequireTools(t)
	tn := tailnettest.New(t)
	dir := nixtest.WorkDir(t, "client-stop")
	id, err := discover.LoadOrCreateIdentity(filepath.Join(dir, "id_ed25519"), "client")
	if err != nil {
		t.Fatal(err)
	}
	opts := nixtest.BuilderOptions{Version: nixtest.V28, AuthorizedKeys: []string{id.AuthorizedKey}}
	var bs []*tailnetBuilder
	for _, name := range []string{"b1", "b2", "b3"} {
		bs = append(bs, startTailnetBuilder(t, tn, name, []string{tailnettest.TagBuilder}, opts))
	}
	cn := tn.AddNode(t, "laptop", tailnettest.TagClient)
	machines := filepath.Join(dir, "machines")
	c := &discover.Client{
		Sources:      []discover.Source{&tailnet.Source{LocalAPI: cn.LocalClient, Dial: cn.Server.Dial, Refresh: time.Hour}},
		Checker:      &health.Checker{Signer: id.Signer, Dial: cn.Server.Dial, BannerTimeout: 500 * time.Millisecond},
		Membership:   discover.MembershipConfig{Interval: 500 * time.Millisecond},
		MachinesPath: machines,
		SSHKeyPath:   id.Path,
		NixVersion:   render.NixVersion{Major: 2, Minor: 8},
		Logger:       slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo})),
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-runDone; err != nil {
			t.Errorf("client: %v", err)
		}
	})
	clienttest.WaitFile(t, machines, "listed all three builders", func(f string) bool {
		return strings.Contains(f, bs[0].node.FQDN) && strings.Contains(f, bs[1].node.FQDN) && strings.Contains(f, bs[2].node.FQDN)
	})
	time.Sleep(300 * time.Millisecond) // settled: the long polls are held

	for _, b := range bs[:2] {
		b.stop() // cancel the agent's Run context: a clean stop
		file, took := clienttest.WaitFile(t, machines, "dropped "+b.node.Name+" after its agent stopped", clienttest.NotContains(b.node.FQDN))
		t.Logf("clean stop of %s: out of the machines file after %v", b.node.Name, took)
		if took > time.Second {
			t.Errorf("clean stop of %s: out of the file after %v, want ~100 ms", b.node.Name, took)
		}
		if !strings.Contains(file, bs[2].node.FQDN) {
			t.Fatalf("b3 left the file too:\n%s", file)
		}
		<-b.done
	}
}
