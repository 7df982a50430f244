package discover

import (
	"crypto/ed25519"
	"crypto/rand"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nixrb-discover/nixrb-discover/advertise"
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
	return advertise.CanonicalHostKey(sp)
}

// mdnsFleetKey returns a fresh fleet signing key.
func mdnsFleetKey(t testing.TB) *advertise.SigningKey {
	t.Helper()
	k, err := advertise.GenerateFleetKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// mdnsAdvert is a valid advert for host with hostKey, issued at now,
// signed with key when key is not nil.
func mdnsAdvert(t testing.TB, host, hostKey string, key *advertise.SigningKey, now time.Time) *advertise.Advert {
	t.Helper()
	a := &advertise.Advert{
		Version: advertise.WireVersion, Hostname: host, SSHUser: "nix-builder", SSHPort: 22,
		Protocol: advertise.ProtocolSSHNG, HostKey: hostKey,
		Systems: []string{"x86_64-linux"}, SupportedFeatures: []string{"kvm", "big-parallel"},
		MaxJobs: 8, SpeedFactor: 2, Capacity: advertise.Capacity{Cores: 8},
		IssuedAt: time.Unix(now.Unix(), 0).UTC(),
	}
	if key != nil {
		if err := advertise.Sign(a, key, now); err != nil {
			t.Fatal(err)
		}
	}
	return a
}

// mdnsTXT encodes a as TXT strings.
func mdnsTXT(t testing.TB, a *advertise.Advert) []string {
	t.Helper()
	txt, err := advertise.EncodeTXT(a)
	if err != nil {
		t.Fatal(err)
	}
	return txt
}
