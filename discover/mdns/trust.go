package mdns

import (
	"errors"
	"fmt"
	"time"

	"github.com/nixrb-discover/nixrb-discover/wire"
	"golang.org/x/crypto/ssh"
)

// advertTrust is the outcome of deciding whether an mDNS advert may reach
// the machines file.
type advertTrust struct {
	trusted bool
	signed  bool   // trusted by a fleet-key signature (not only a pin)
	fp      string // SHA256 fingerprint of the advert's host key
	reason  string // Candidate.TrustReason
	hint    string // Candidate.TrustHint
	problem string // Candidate.Problem (an invalid advert)
}

// decideTrust trusts an advert when wire.Verify accepts its fleet-key
// signature, or when its host key is pinned for the instance name; a pin
// for that name with another key distrusts it even when signed.
func decideTrust(adv *wire.Advert, instance string, keys []wire.TrustKey, pins *Pins, now time.Time, maxAge time.Duration) advertTrust {
	var t advertTrust
	if pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(adv.HostKey)); err == nil {
		t.fp = ssh.FingerprintSHA256(pub)
	}
	pinHint := "--pin " + instance + "=" + adv.HostKey
	verr := wire.Verify(adv, keys, now, maxAge)
	pin := pins.Check(adv.HostKey, instance, instance+".local")
	var fe *wire.FieldError
	switch {
	case errors.As(verr, &fe) || t.fp == "":
		t.reason = "invalid advert"
		t.problem = "advert invalid: " + errString(verr, "host key unreadable")
		return t
	case pin == PinMismatch:
		t.reason = "host key differs from the key pinned for " + instance
		t.hint = pinHint + " (only if the builder was re-keyed)"
		return t
	case verr == nil:
		t.trusted, t.signed = true, true
		t.reason = "signed by fleet key " + adv.Signature.KeyID
		return t
	case pin == PinOK:
		t.trusted = true
		t.reason = "host key pinned for " + instance
		return t
	}
	switch {
	case errors.Is(verr, wire.ErrUnsigned):
		t.reason = "unsigned advert"
		if pins.Len() > 0 {
			t.reason = "unsigned advert, host key not pinned"
		}
		t.hint = pinHint
	case errors.Is(verr, wire.ErrUntrusted):
		t.reason = "signature by unknown key " + adv.Signature.KeyID
		t.hint = fmt.Sprintf("--trust-key FILE (the fleet public key %s), or %s", adv.Signature.KeyID, pinHint)
	case errors.Is(verr, wire.ErrBadSignature):
		t.reason = "bad signature by fleet key " + adv.Signature.KeyID
	default: // stale or from the future: a replay or a wrong clock
		t.reason = "signed advert rejected: " + verr.Error()
	}
	return t
}

func errString(err error, otherwise string) string {
	if err != nil {
		return err.Error()
	}
	return otherwise
}
