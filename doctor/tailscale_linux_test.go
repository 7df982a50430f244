package doctor

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/internal/nixtest"
	"github.com/nixrb-discover/nixrb-discover/render"
	"golang.org/x/crypto/ssh"
)

// A Tailscale SSH rule in check mode answers with Tailscale's banner, sends
// "requires an additional check" and holds the login until someone opens
// a URL in a browser. This in-process server does the same on loopback
// (no real tailscaled here): it identifies as Tailscale and never finishes
// authentication.
func TestTailscaleCheckMode(t *testing.T) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	hostSigner, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	cfg := &ssh.ServerConfig{
		ServerVersion: "SSH-2.0-Tailscale",
		BannerCallback: func(ssh.ConnMetadata) string {
			return "# Tailscale SSH requires an additional check.\n# To authenticate, visit: https://login.tailscale.com/a/xyz\n"
		},
		PublicKeyCallback: func(ssh.ConnMetadata, ssh.PublicKey) (*ssh.Permissions, error) {
			<-ctx.Done() // waits for a browser that never comes
			return nil, fmt.Errorf("check not completed")
		},
	}
	cfg.AddHostKey(hostSigner)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _, _, _ = ssh.NewServerConn(c, cfg)
			}()
		}
	}()
	t.Cleanup(func() { cancel(); _ = ln.Close(); <-done })

	key := nixtest.NewClientKey(t)
	hostKey := b64(strings.TrimSpace(string(ssh.MarshalAuthorizedKey(hostSigner.PublicKey()))))
	// Nix 2.31 reads the port in the URI; the local nix (2.8) still
	// answers show-config (doctor falls back from `nix config show`).
	line := fmt.Sprintf("ssh-ng://root@%s %s %s 1 1 - - %s", ln.Addr(), nixtest.System, key.Path, hostKey)
	f := newFixture(t, line)
	f.opts.NixVersion = render.NixVersion{Major: 2, Minor: 31}
	f.opts.Timeout = 2 * time.Second
	wantFail(t, f.run(t), "accepts key", "SSH-2.0-Tailscale",
		"a Tailscale SSH rule in check mode waits for a browser: use accept mode for the builder user root")
}
