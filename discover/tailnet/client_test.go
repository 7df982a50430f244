//go:build linux

package tailnet_test

import (
	"context"

	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/advertise"
	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/nixrb-discover/nixrb-discover/discover/tailnet"
	"github.com/nixrb-discover/nixrb-discover/health"
	"github.com/nixrb-discover/nixrb-discover/internal/clienttest"
	"github.com/nixrb-discover/nixrb-discover/internal/nixtest"
	"github.com/nixrb-discover/nixrb-discover/internal/tailnettest"
	"github.com/nixrb-discover/nixrb-discover/render"
)

// tailnetBuilder is a builder on the in-process tailnet: a tsnet node
// running the real advertise agent, in front of a real sshd + nix-daemon.
type tailnetBuilder struct {
	node  *tailnettest.Node
	nix   *nixtest.Builder
	agent *advertise.Agent
	stop  context.CancelFunc
	done  chan struct{}
}

func startTailnetBuilder(t testing.TB, tn *tailnettest.Net, name string, tags []string, opts nixtest.BuilderOptions) *tailnetBuilder {
	t.Helper()
	opts.Hostname = name
	b := nixtest.StartBuilder(t, opts)
	node := tn.AddNode(t, name, tags...)
	node.ForwardTCP(t, 22, net.JoinHostPort(b.Addr.String(), "22"))
	ctx, cancel := context.WithCancel(context.Background())
	agent := &advertise.Agent{
		Facts: advertise.FactsOptions{
			HostKeyPath: b.HostKeyPath + ".pub",
			Overrides: advertise.Overrides{
				// The key is fixed: host-key-swap-excluded puts another key
				// on sshd (an impostor at b2's address) that the agent, which
				// follows its key file, must not learn.
				HostKey:  strings.Join(strings.Fields(b.HostKey())[:2], " "),
				Hostname: name, SSHUser: b.User, SSHPort: 22, MaxJobs: 2,
				SupportedFeatures: opts.SystemFeatures, AgentVersion: "test",
			},
		},
		Tailnet: &advertise.TailnetServer{LocalAPI: node.LocalClient, Listen: node.Server.Listen},
		// The agent runs in the test process; its builder's sshd is in the
		// builder's namespace, whose socket tables nix-daemon's /proc shows.
		SSHWatch: &advertise.SSHWatch{Port: 22, NetDir: fmt.Sprintf("/proc/%d/net", b.NixDaemonPID())},
	}
	tb := &tailnetBuilder{node: node, nix: b, agent: agent, stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(tb.done)
		if err := agent.Run(ctx); err != nil {
			t.Errorf("agent %s: %v", name, err)
		}
	}()
	t.Cleanup(func() { cancel(); <-tb.done })
	return tb
}

// TestClientOnTailnet runs the real client against two tagged builders and
// one untagged peer on an in-process tailnet, each builder a real sshd and
// nix-daemon, and checks what ends up in the machines file as builders
// appear, fail and change.
func TestClientOnTailnet(t *testing.T) {
	nixtest.RequireTools(t)
	tn := tailnettest.New(t)
	dir := nixtest.WorkDir(t, "client")
	id, err := discover.LoadOrCreateIdentity(filepath.Join(dir, "id_ed25519"), "client")
	if err != nil {
		t.Fatal(err)
	}
	auth := []string{id.AuthorizedKey}
	b1 := startTailnetBuilder(t, tn, "b1", []string{tailnettest.TagBuilder}, nixtest.BuilderOptions{Version: nixtest.V28, AuthorizedKeys: auth, SystemFeatures: []string{"kvm"}})
	b2 := startTailnetBuilder(t, tn, "b2", []string{tailnettest.TagBuilder}, nixtest.BuilderOptions{Version: nixtest.V28, AuthorizedKeys: auth, SystemFeatures: []string{"big-parallel"}})
	nixtest.EnsureTrixie(t)
	b3 := startTailnetBuilder(t, tn, "b3", []string{tailnettest.TagBuilder}, nixtest.BuilderOptions{Version: nixtest.V226, AuthorizedKeys: auth, SystemFeatures: []string{"benchmark"}})
	rogue := startTailnetBuilder(t, tn, "untagged", nil, nixtest.BuilderOptions{Version: nixtest.V28, AuthorizedKeys: auth})
	cn := tn.AddNode(t, "laptop", tailnettest.TagClient)

	machines := filepath.Join(dir, "machines")
	// start runs a client (a restart is a second call after stop).
	start := func() (c *discover.Client, stop func()) {
		c = &discover.Client{
			Sources: []discover.Source{&tailnet.Source{LocalAPI: cn.LocalClient, Dial: cn.Server.Dial, Refresh: time.Second}},
			// The tailnet is userspace (tsnet) on 2 shared cores: a
			// 1 s banner bound and 3 failures in a row keep a loaded CI
			// machine from dropping healthy builders; the faults below
			// are real and still leave within the waits.
			Checker:      &health.Checker{Signer: id.Signer, Dial: cn.Server.Dial, BannerTimeout: time.Second, RefreshChecks: 3},
			Membership:   discover.MembershipConfig{Interval: 500 * time.Millisecond, FullEvery: 2 * time.Second, Fall: 3},
			MachinesPath: machines,
			SSHKeyPath:   id.Path,
			NixVersion:   render.NixVersion{Major: 2, Minor: 8},
			Logger:       slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
		}
		c.Init()
		ctx, cancel := context.WithCancel(context.Background())
		runDone := make(chan error, 1)
		go func() { runDone <- c.Run(ctx) }()
		var once sync.Once
		return c, func() {
			once.Do(func() {
				cancel()
				if err := <-runDone; err != nil {
					t.Errorf("client: %v", err)
				}
			})
		}
	}
	c, stop := start()
	t.Cleanup(func() { stop() })

	file, took := clienttest.WaitFile(t, machines, "listed the three tagged builders", func(f string) bool {
		return strings.Contains(f, b1.node.FQDN) && strings.Contains(f, b2.node.FQDN) && strings.Contains(f, b3.node.FQDN)
	})
	t.Logf("all builders in the file %v after the client started", took)
	entries, err := render.Parse([]byte(file), render.ParseOptions{NixVersion: render.NixVersion{Major: 2, Minor: 8}})
	if err != nil || len(entries) != 3 {
		t.Fatalf("file does not parse as 3 machines (%v):\n%s", err, file)
	}
	for _, e := range entries {
		m := e.Machine
		want := b1
		switch m.URI.Host {
		case b2.node.FQDN:
			want = b2
		case b3.node.FQDN:
			want = b3
		}
		if m.URI.Scheme != "ssh-ng" || m.URI.User != "root" || m.SSHKey != id.Path || m.MaxJobs != 2 ||
			strings.Join(strings.Fields(m.HostKey)[:2], " ") != strings.Join(strings.Fields(want.nix.HostKey())[:2], " ") {
			t.Errorf("line for %s is wrong: %s", want.node.FQDN, m.String())
		}
		if want == b1 && strings.Join(m.SupportedFeatures, ",") != "kvm" {
			t.Errorf("b1's features = %v, want kvm", m.SupportedFeatures)
		}
	}
	if strings.Contains(file, rogue.node.FQDN) {
		t.Fatalf("the untagged peer is in the file:\n%s", file)
	}

	// MagicDNS names resolve only on the tailnet; give ssh the builders'
	// real addresses under those names.
	cfg := filepath.Join(dir, "ssh_config")
	var sb strings.Builder
	for _, b := range []*tailnetBuilder{b1, b2, b3} {
		fmt.Fprintf(&sb, "Host %s\n  HostName %s\n  HostKeyAlias %s\n", b.node.FQDN, b.nix.Addr, b.node.FQDN)
	}
	if err := os.WriteFile(cfg, []byte(sb.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		client  nixtest.Version
		feature string
		want    *tailnetBuilder
	}{
		{"nix-2.8-client-kvm-build-goes-to-the-kvm-builder", nixtest.V28, "kvm", b1},
		{"nix-2.8-client-to-nix-2.26-builder", nixtest.V28, "benchmark", b3},
		{"nix-2.26-client-to-nix-2.8-builder", nixtest.V226, "kvm", b1},
	} {
		t.Run("real-nix-build/"+tc.name, func(t *testing.T) {
			bctx, bcancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer bcancel()
			out, stderr, err := nixtest.NixBuild(t, bctx, nixtest.ClientOptions{
				Version: tc.client, MachinesFile: machines, SSHOpts: "-F " + cfg, BindPaths: []string{dir},
				Expr: nixtest.TrivialDerivation("via-tailnet", tc.feature),
			})
			if err != nil {
				t.Fatalf("nix-build through the rendered file: %v\n%s", err, stderr)
			}
			if strings.TrimSpace(out) != tc.want.node.Name {
				t.Errorf("a %s build ran on %q, want %s (the only builder with it)", tc.feature, out, tc.want.node.Name)
			}
		})
	}

	t.Run("drained-builder-gets-no-new-builds", func(t *testing.T) {
		b1.agent.ToggleDrain() // what SIGUSR1 does
		_, took := clienttest.WaitFile(t, machines, "dropped the drained b1", clienttest.NotContains(b1.node.FQDN))
		t.Logf("drained: out of the file after %v", took)
		for i := range 3 {
			bctx, bcancel := context.WithTimeout(context.Background(), 2*time.Minute)
			out, stderr, err := nixtest.NixBuild(t, bctx, nixtest.ClientOptions{
				Version: nixtest.V28, MachinesFile: machines, SSHOpts: "-F " + cfg, Expr: nixtest.TrivialDerivation(fmt.Sprintf("after-drain-%d", i)),
			})
			bcancel()
			if err != nil {
				t.Fatalf("build %d after the drain: %v\n%s", i, err, stderr)
			}
			if strings.TrimSpace(out) == "b1" {
				t.Errorf("build %d went to the drained builder b1", i)
			}
		}
		b1.agent.ToggleDrain()
		clienttest.WaitFile(t, machines, "took b1 back when it stopped draining", clienttest.Contains(b1.node.FQDN))
	})

	t.Run("sshd-killed-leaves", func(t *testing.T) {
		if err := b2.nix.KillSSHD(); err != nil {
			t.Fatal(err)
		}
		_, took := clienttest.WaitFile(t, machines, "dropped b2 after its sshd was killed", clienttest.NotContains(b2.node.FQDN))
		t.Logf("killed sshd: out of the file after %v", took)
		if err := b2.nix.RestartSSHD(); err != nil {
			t.Fatal(err)
		}
		_, took = clienttest.WaitFile(t, machines, "took b2 back after its sshd restarted", clienttest.Contains(b2.node.FQDN))
		t.Logf("restarted sshd: back in the file after %v", took)
	})

	t.Run("sshd-hung-leaves", func(t *testing.T) {
		if err := b2.nix.StopSSHD(); err != nil {
			t.Fatal(err)
		}
		_, took := clienttest.WaitFile(t, machines, "dropped b2 after its sshd hung", clienttest.NotContains(b2.node.FQDN))
		t.Logf("hung sshd: out of the file after %v", took)
		if err := b2.nix.ContSSHD(); err != nil {
			t.Fatal(err)
		}
		clienttest.WaitFile(t, machines, "took b2 back after its sshd resumed", clienttest.Contains(b2.node.FQDN))
	})

	t.Run("offline-peer-leaves", func(t *testing.T) {
		tn.SetOnline(t, b2.node, false)
		_, took := clienttest.WaitFile(t, machines, "dropped b2 after control marked it offline", clienttest.NotContains(b2.node.FQDN))
		t.Logf("offline: out of the file after %v", took)
		tn.SetOnline(t, b2.node, true)
		clienttest.WaitFile(t, machines, "took b2 back when it came online", clienttest.Contains(b2.node.FQDN))
	})

	// A restarted client (the file in place, nothing changed) must not
	// rewrite the file, not even with the same bytes: its first write
	// waits until every advert has been fetched and every builder checked.
	t.Run("restart-rewrites-nothing", func(t *testing.T) {
		clienttest.WaitFile(t, machines, "all three builders back", func(f string) bool {
			return strings.Contains(f, b1.node.FQDN) && strings.Contains(f, b2.node.FQDN) && strings.Contains(f, b3.node.FQDN)
		})
		time.Sleep(time.Second) // let a late write (a rejoin) land first
		before, err := os.Stat(machines)
		if err != nil {
			t.Fatal(err)
		}
		stop()
		c, stop = start()
		deadline := time.Now().Add(tailnettest.Timeout)
		for {
			st, err := c.Status(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if st.Ready {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the restarted client never completed its first round")
			}
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(500 * time.Millisecond)
		after, _ := os.Stat(machines)
		if !after.ModTime().Equal(before.ModTime()) {
			t.Errorf("the restarted client rewrote an unchanged file (mtime %v → %v)", before.ModTime(), after.ModTime())
		}
	})

	t.Run("host-key-swap-excluded", func(t *testing.T) {
		priv, _, err := nixtest.GenerateKey("impostor")
		if err != nil {
			t.Fatal(err)
		}
		if err := b2.nix.SetHostKey(priv); err != nil {
			t.Fatal(err)
		}
		clienttest.WaitFile(t, machines, "dropped b2 after its sshd presented another host key", clienttest.NotContains(b2.node.FQDN))
		// Restarting sshd with the new key can make b2's agent say
		// draining for a moment first; the verdict that follows is the
		// mismatch (bounded wait).
		st := statusOf(t, c, "tailnet:"+string(b2.node.StableID))
		for deadline := time.Now().Add(15 * time.Second); !strings.Contains(st.Reason, string(health.ReasonHostKeyMismatch)) && time.Now().Before(deadline); {
			time.Sleep(20 * time.Millisecond)
			st = statusOf(t, c, "tailnet:"+string(b2.node.StableID))
		}
		if st.InFile || !strings.Contains(st.Reason, string(health.ReasonHostKeyMismatch)) {
			t.Errorf("b2 status = %+v, want out of the file with reason %q", st, health.ReasonHostKeyMismatch)
		}
	})

	st, err := c.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range st.Builders {
		if b.Name == rogue.node.FQDN {
			t.Errorf("the untagged peer is known to the client: %+v", b)
		}
	}
}

func statusOf(t *testing.T, c *discover.Client, key string) discover.BuilderStatus {
	t.Helper()
	st, err := c.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range st.Builders {
		if b.Key == key {
			return b
		}
	}
	t.Fatalf("no builder %s in the status", key)
	return discover.BuilderStatus{}
}
