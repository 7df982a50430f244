package demo

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"net"
	"testing"

	"github.com/nixrb-discover/nixrb-discover/health"
	"golang.org/x/crypto/ssh"
)

func newSigner(t *testing.T) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestSimulatedEndpoint checks the simulated SSH endpoint with the real
// health checker over loopback: the client's key passes the SSH login and
// the Nix handshake (reported as simulated and trusted), another key is
// refused, and after kill the port is closed.
func TestSimulatedEndpoint(t *testing.T) {
	host, client, stranger := newSigner(t), newSigner(t), newSigner(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := serveSSH(ln, host, client.PublicKey())
	defer e.kill()
	target := health.Target{Key: "b", Addr: ln.Addr().String(), User: "nix-ssh", Protocol: health.ProtocolSSHNG, HostKey: host.PublicKey()}
	ctx := context.Background()

	t.Run("client-key-passes-the-nix-handshake", func(t *testing.T) {
		c := &health.Checker{Signer: client}
		defer c.Close()
		r := c.Check(ctx, target)
		if !r.OK || r.NixVersion != SimulatedNixVersion || r.Trusted != health.TrustedYes || r.ProtocolVersion != "1.37" {
			t.Fatalf("check = %+v, want OK, Nix %q, trusted, protocol 1.37", r, SimulatedNixVersion)
		}
	})
	t.Run("ssh-protocol-is-not-served", func(t *testing.T) {
		c := &health.Checker{Signer: client}
		defer c.Close()
		tg := target
		tg.Protocol = health.ProtocolSSH
		if r := c.Check(ctx, tg); r.OK || r.Reason != health.ReasonNixNotFound {
			t.Fatalf("check = %+v, want %q", r, health.ReasonNixNotFound)
		}
	})
	t.Run("other-key-refused", func(t *testing.T) {
		c := &health.Checker{Signer: stranger}
		defer c.Close()
		if r := c.Check(ctx, target); r.OK || r.Reason != health.ReasonAuthRefused {
			t.Fatalf("check = %+v, want %q", r, health.ReasonAuthRefused)
		}
	})
	t.Run("killed-endpoint-is-unreachable", func(t *testing.T) {
		e.kill()
		c := &health.Checker{Signer: client}
		defer c.Close()
		if r := c.Check(ctx, target); r.OK || r.Reason != health.ReasonUnreachable {
			t.Fatalf("check = %+v, want %q", r, health.ReasonUnreachable)
		}
	})
}
