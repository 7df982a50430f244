package wire

import (
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Freshness of signed adverts (docs/PROTOCOL.md, "Freshness and replay").
const (
	// DefaultMaxAge is how old a signed advert may be when verified. It is
	// also how long a captured advert can be replayed on the link.
	DefaultMaxAge = 5 * time.Minute
	// ResignInterval is how often an agent re-signs (and re-announces) an
	// unchanged advert so that it stays well inside DefaultMaxAge.
	ResignInterval = time.Minute
	// MaxClockSkew is how far in the future an advert's IssuedAt may lie.
	MaxClockSkew = time.Minute
)

// Errors of Verify, wrapped with detail; test with errors.Is.
var (
	ErrUnsigned     = errors.New("advert is not signed")
	ErrUntrusted    = errors.New("advert is signed by a key that is not trusted")
	ErrBadSignature = errors.New("advert signature does not match its contents")
	ErrStale        = errors.New("advert is too old")
	ErrFuture       = errors.New("advert is issued in the future")
)

// signDomain starts the signed bytes, so that a fleet-key signature over an
// advert can never be taken for a signature over anything else.
const signDomain = "nixrb-discover advert v1\x00"

// Sign sets a.IssuedAt to now (in UTC, to the second) and signs a with key.
// It fails, leaving a unsigned, if a is not valid.
func Sign(a *Advert, key *SigningKey, now time.Time) error {
	if key == nil || len(key.Private) != ed25519.PrivateKeySize {
		return errors.New("sign advert: no ed25519 fleet key")
	}
	a.Signature = nil
	a.IssuedAt = time.Unix(now.Unix(), 0).UTC()
	if err := a.Validate(); err != nil {
		return fmt.Errorf("sign advert: %w", err)
	}
	sig := ed25519.Sign(key.Private, canonical(a))
	a.Signature = &Signature{KeyID: key.KeyID, Sig: sig}
	return nil
}

// Verify checks that a is valid, signed by one of trusted, unchanged since,
// issued at most maxAge before now (DefaultMaxAge if maxAge <= 0) and at
// most MaxClockSkew after it. Errors wrap ErrUnsigned, ErrUntrusted,
// ErrBadSignature, ErrStale or ErrFuture, or are a *FieldError.
func Verify(a *Advert, trusted []TrustKey, now time.Time, maxAge time.Duration) error {
	if a == nil || a.Signature == nil {
		return fmt.Errorf("verify: %w", ErrUnsigned)
	}
	if err := a.Validate(); err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	msg := canonical(a)
	known, ok := false, false
	for _, t := range trusted {
		if t.KeyID != a.Signature.KeyID || len(t.Public) != ed25519.PublicKeySize {
			continue
		}
		known = true
		if ed25519.Verify(t.Public, msg, a.Signature.Sig) {
			ok = true
			break
		}
	}
	switch {
	case !known:
		return fmt.Errorf("verify: key %s: %w", a.Signature.KeyID, ErrUntrusted)
	case !ok:
		return fmt.Errorf("verify: key %s: %w", a.Signature.KeyID, ErrBadSignature)
	}
	if maxAge <= 0 {
		maxAge = DefaultMaxAge
	}
	if age := now.Sub(a.IssuedAt); age > maxAge {
		return fmt.Errorf("verify: issued %s ago, more than %s: %w", age.Truncate(time.Second), maxAge, ErrStale)
	}
	if ahead := a.IssuedAt.Sub(now); ahead > MaxClockSkew {
		return fmt.Errorf("verify: issued %s ahead of this clock, more than %s: %w", ahead.Truncate(time.Second), MaxClockSkew, ErrFuture)
	}
	return nil
}

// canonical is the signed encoding of every field of a except Signature:
// signDomain, then per field its name and value as length-prefixed byte
// strings (uint32 big endian lengths); a list value is a uint32 item count
// followed by its length-prefixed items in order. Numbers are decimal
// (floats in shortest form, formatFloat), booleans "0"/"1", IssuedAt Unix
// seconds, HostKey its canonical "TYPE BASE64" form. docs/PROTOCOL.md
// specifies it; TestCanonicalCoversEveryField keeps it complete.
func canonical(a *Advert) []byte {
	b := []byte(signDomain)
	str := func(s string) {
		b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	field := func(name, v string) { str(name); str(v) }
	list := func(name string, items []string) {
		str(name)
		b = binary.BigEndian.AppendUint32(b, uint32(len(items)))
		for _, it := range items {
			str(it)
		}
	}
	num := func(f float64) string {
		if f == 0 {
			f = 0 // -0 signs as 0
		}
		return formatFloat(f)
	}
	i := func(n int64) string { return strconv.FormatInt(n, 10) }
	bl := func(v bool) string {
		if v {
			return "1"
		}
		return "0"
	}
	field("version", i(int64(a.Version)))
	field("hostname", a.Hostname)
	field("ssh_user", a.SSHUser)
	field("ssh_port", i(int64(a.SSHPort)))
	field("protocol", a.Protocol)
	field("host_key", a.HostKey)
	list("systems", a.Systems)
	list("supported_features", a.SupportedFeatures)
	list("mandatory_features", a.MandatoryFeatures)
	field("max_jobs", i(int64(a.MaxJobs)))
	field("speed_factor", num(a.SpeedFactor))
	field("capacity.cores", i(int64(a.Capacity.Cores)))
	field("capacity.load1", num(a.Capacity.Load1))
	field("capacity.mem_total_mib", i(a.Capacity.MemTotalMiB))
	field("capacity.mem_avail_mib", i(a.Capacity.MemAvailMiB))
	field("capacity.store_free_mib", i(a.Capacity.StoreFreeMiB))
	field("capacity.running_builds", i(int64(a.Capacity.RunningBuilds)))
	field("draining", bl(a.Draining))
	field("enroll", bl(a.Enroll))
	field("nix_version", a.NixVersion)
	field("agent_version", a.AgentVersion)
	field("issued_at", i(a.IssuedAt.Unix()))
	return b
}
