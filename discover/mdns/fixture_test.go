package mdns

import (
	"crypto/ed25519"
	"crypto/rand"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/wire"
	"golang.org/x/crypto/ssh"
)

// mdnsHostKey returns a fresh SSH host public key in advert form.
func mdnsHostKey(t testing.TB) string {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return wire.CanonicalHostKey(sp)
}

// mdnsFleetKey returns a fresh fleet signing key.
func mdnsFleetKey(t testing.TB) *wire.SigningKey {
	t.Helper()
	k, err := wire.GenerateFleetKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// mdnsAdvert is a valid advert for host with hostKey, issued at now,
// signed with key when key is not nil.
func mdnsAdvert(t testing.TB, host, hostKey string, key *wire.SigningKey, now time.Time) *wire.Advert {
	t.Helper()
	a := &wire.Advert{
		Version: wire.WireVersion, Hostname: host, SSHUser: "nix-builder", SSHPort: 22,
		Protocol: wire.ProtocolSSHNG, HostKey: hostKey,
		Systems: []string{"x86_64-linux"}, SupportedFeatures: []string{"kvm", "big-parallel"},
		MaxJobs: 8, SpeedFactor: 2, Capacity: wire.Capacity{Cores: 8},
		IssuedAt: time.Unix(now.Unix(), 0).UTC(),
	}
	if key != nil {
		if err := wire.Sign(a, key, now); err != nil {
			t.Fatal(err)
		}
	}
	return a
}

// mdnsTXT encodes a as TXT strings.
func mdnsTXT(t testing.TB, a *wire.Advert) []string {
	t.Helper()
	txt, err := wire.EncodeTXT(a)
	if err != nil {
		t.Fatal(err)
	}
	return txt
}
