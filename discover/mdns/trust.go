package mdns

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
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
// signature, or when its host key is pinned for the instance name. A pin
// with another key for the instance name, or for the hostname the advert
// claims (signed or not), distrusts it even when signed: a fleet-signed
// advert for a pinned host cannot bring an unpinned key under another
// instance name.
func decideTrust(adv *wire.Advert, instance string, keys []wire.TrustKey, pins *Pins, now time.Time, maxAge time.Duration) advertTrust {
	var t advertTrust
	if pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(adv.HostKey)); err == nil {
		t.fp = ssh.FingerprintSHA256(pub)
	}
	pinHint := pinHintFor(instance, adv.HostKey)
	verr := wire.Verify(adv, keys, now, maxAge)
	pin := pins.Check(adv.HostKey, instance, instance+".local")
	hostPin, pinnedFor := PinNone, instance
	if h := adv.Hostname; h != "" && !strings.EqualFold(h, instance) {
		hostPin = pins.Check(adv.HostKey, h, h+".local", strings.TrimSuffix(h, ".local"))
	}
	if hostPin == PinMismatch && pin != PinMismatch {
		pin, pinnedFor = PinMismatch, adv.Hostname
	}
	var fe *wire.FieldError
	switch {
	case errors.As(verr, &fe) || t.fp == "":
		t.reason = "invalid advert"
		t.problem = "advert invalid: " + errString(verr, "host key unreadable")
		return t
	case pin == PinMismatch:
		t.reason = "host key differs from the key pinned for " + pinnedFor
		if pinHint != "" && pinnedFor == instance {
			t.hint = pinHint + " (only if the builder was re-keyed)"
		}
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
		t.hint = fmt.Sprintf("--trust-key FILE (the fleet public key %s)", adv.Signature.KeyID)
		if pinHint != "" {
			t.hint += ", or " + pinHint
		}
	case errors.Is(verr, wire.ErrBadSignature):
		t.reason = "bad signature by fleet key " + adv.Signature.KeyID
	default: // stale or from the future: a replay or a wrong clock
		t.reason = "signed advert rejected: " + verr.Error()
	}
	return t
}

// pinnableName matches the instance names a --pin hint is offered for:
// one DNS label (letters, digits, inner '-'), as agents announce their
// host names. Anything else on the link (escape sequences, spaces, shell
// syntax) gets no hint to copy and paste.
var pinnableName = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)

// pinHintFor is the `--pin NAME=KEY` argument that would trust hostKey
// for instance, shell-quoted, or "" when instance is not pinnable or the
// key is not a plain "TYPE BASE64" line.
func pinHintFor(instance, hostKey string) string {
	f := strings.Fields(hostKey)
	if !pinnableName.MatchString(instance) || len(f) != 2 || f[0]+" "+f[1] != hostKey || !safeKeyLine.MatchString(hostKey) {
		return ""
	}
	return "--pin " + shellQuote(instance+"="+hostKey)
}

// safeKeyLine is what an SSH public key line may hold to be quoted in a
// hint: a key type and base64.
var safeKeyLine = regexp.MustCompile(`^[a-z0-9@.-]+ [A-Za-z0-9+/]+=*$`)

// shellQuote quotes s for a POSIX shell: as it is when it holds only
// characters no shell treats specially, else in single quotes.
func shellQuote(s string) string {
	if s != "" && shellSafe.MatchString(s) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

var shellSafe = regexp.MustCompile(`^[A-Za-z0-9@%+=:,./_-]+$`)

func errString(err error, otherwise string) string {
	if err != nil {
		return err.Error()
	}
	return otherwise
}
