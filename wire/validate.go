package wire

import (
	"fmt"
	"math"
	"regexp"
	"strings"
	"unicode/utf8"

	"golang.org/x/crypto/ssh"
)

// Bounds of an advert. docs/PROTOCOL.md lists them per field.
const (
	// MaxStringLen is the longest string value, in bytes (one DNS-SD TXT
	// string holds at most 255 bytes).
	MaxStringLen = 255
	// MaxListLen is the most items a list field (systems, features) holds.
	MaxListLen = 32
	// MaxMaxJobs is the largest max_jobs accepted.
	MaxMaxJobs = 10000
	// MaxSpeedFactor is the largest speed_factor accepted.
	MaxSpeedFactor = 1e6
	// MaxVersion is the largest wire format version accepted.
	MaxVersion = 1 << 16
	// MaxLoad is the largest 1-minute load average accepted.
	MaxLoad = 1e6

	maxHostnameLen = 253
	maxLabelLen    = 63
	maxUserLen     = 32
	maxCores       = 1 << 20
	maxMiB         = 1 << 40 // 1 ZiB in MiB: far beyond any machine
	maxBuilds      = 1 << 20
	maxKeyIDLen    = 64
	maxUnixSeconds = 253402300799 // 9999-12-31T23:59:59Z, RFC 3339's last second
)

var (
	labelRE   = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?$`)
	userRE    = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]*$`)
	systemRE  = regexp.MustCompile(`^[A-Za-z0-9_]+(-[A-Za-z0-9_]+)+$`)
	featureRE = regexp.MustCompile(`^[A-Za-z0-9._+-]+$`)
	keyIDRE   = regexp.MustCompile(`^[A-Za-z0-9+/=_.:-]+$`)
)

// FieldError says which advert field is wrong and why. Field is the JSON
// key (e.g. "host_key", "capacity.load1"); docs/PROTOCOL.md lists them.
type FieldError struct {
	Field  string
	Reason string
}

// Error is "advert: field FIELD: REASON".
func (e *FieldError) Error() string {
	return "advert: field " + e.Field + ": " + e.Reason
}

func fieldErr(field, format string, args ...any) *FieldError {
	return &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// Validate reports the first field of a that breaks the wire format v1
// rules (docs/PROTOCOL.md) as a *FieldError. A valid advert can be written
// to a Nix machines file without injecting a field or a line. The
// signature, if any, is checked for shape only; see [Verify].
func (a *Advert) Validate() error {
	if a == nil {
		return fieldErr("advert", "missing")
	}
	if a.Version < 1 || a.Version > MaxVersion {
		return fieldErr("version", "%d is not between 1 and %d", a.Version, MaxVersion)
	}
	if err := checkHostname(a.Hostname); err != nil {
		return err
	}
	if err := checkString("ssh_user", a.SSHUser, false); err != nil {
		return err
	}
	if len(a.SSHUser) > maxUserLen || !userRE.MatchString(a.SSHUser) {
		return fieldErr("ssh_user", "%q is not a user name (letters, digits, '_', '.', '-', at most %d bytes)", a.SSHUser, maxUserLen)
	}
	if a.SSHPort < 1 || a.SSHPort > 65535 {
		return fieldErr("ssh_port", "%d is not between 1 and 65535", a.SSHPort)
	}
	if a.Protocol != ProtocolSSHNG && a.Protocol != ProtocolSSH {
		return fieldErr("protocol", "%q is not %q or %q", clip(a.Protocol), ProtocolSSHNG, ProtocolSSH)
	}
	if err := checkHostKey(a.HostKey); err != nil {
		return err
	}
	if len(a.Systems) == 0 {
		return fieldErr("systems", "empty: a builder builds for at least one system")
	}
	if err := checkList("systems", a.Systems, systemRE, "an arch-os system such as x86_64-linux"); err != nil {
		return err
	}
	if err := checkList("supported_features", a.SupportedFeatures, featureRE, "a feature name ([A-Za-z0-9._+-])"); err != nil {
		return err
	}
	if err := checkList("mandatory_features", a.MandatoryFeatures, featureRE, "a feature name ([A-Za-z0-9._+-])"); err != nil {
		return err
	}
	if a.MaxJobs < 1 || a.MaxJobs > MaxMaxJobs {
		return fieldErr("max_jobs", "%d is not between 1 and %d (advertise draining to take no builds)", a.MaxJobs, MaxMaxJobs)
	}
	if math.IsNaN(a.SpeedFactor) || a.SpeedFactor <= 0 || a.SpeedFactor > MaxSpeedFactor {
		return fieldErr("speed_factor", "%v is not above 0 and at most %g", a.SpeedFactor, float64(MaxSpeedFactor))
	}
	if err := a.Capacity.validate(); err != nil {
		return err
	}
	if err := checkString("nix_version", a.NixVersion, true); err != nil {
		return err
	}
	if err := checkString("agent_version", a.AgentVersion, true); err != nil {
		return err
	}
	if a.IssuedAt.IsZero() {
		return fieldErr("issued_at", "missing")
	}
	if s := a.IssuedAt.Unix(); s < 0 || s > maxUnixSeconds {
		return fieldErr("issued_at", "%d is not between 1970 and 9999", s)
	}
	if a.Signature != nil {
		return a.Signature.validate()
	}
	return nil
}

func (c Capacity) validate() error {
	ints := []struct {
		name string
		v    int64
		max  int64
	}{
		{"capacity.cores", int64(c.Cores), maxCores},
		{"capacity.mem_total_mib", c.MemTotalMiB, maxMiB},
		{"capacity.mem_avail_mib", c.MemAvailMiB, maxMiB},
		{"capacity.store_free_mib", c.StoreFreeMiB, maxMiB},
		{"capacity.running_builds", int64(c.RunningBuilds), maxBuilds},
	}
	for _, f := range ints {
		if f.v < 0 || f.v > f.max {
			return fieldErr(f.name, "%d is not between 0 and %d", f.v, f.max)
		}
	}
	if math.IsNaN(c.Load1) || c.Load1 < 0 || c.Load1 > MaxLoad {
		return fieldErr("capacity.load1", "%v is not between 0 and %g", c.Load1, float64(MaxLoad))
	}
	return nil
}

func (s *Signature) validate() error {
	if s.KeyID == "" || len(s.KeyID) > maxKeyIDLen || !keyIDRE.MatchString(s.KeyID) {
		return fieldErr("signature.key_id", "%q is not a key ID", clip(s.KeyID))
	}
	if len(s.Sig) != 64 {
		return fieldErr("signature.sig", "%d bytes, want a 64-byte ed25519 signature", len(s.Sig))
	}
	return nil
}

// checkString applies the rules every string obeys: valid UTF-8, at most
// MaxStringLen bytes, and nothing that could split a machines file field
// or line (whitespace, '#', ';', ',', control characters).
func checkString(field, s string, emptyOK bool) error {
	if s == "" {
		if emptyOK {
			return nil
		}
		return fieldErr(field, "missing")
	}
	if len(s) > MaxStringLen {
		return fieldErr(field, "%d bytes, more than %d", len(s), MaxStringLen)
	}
	if !utf8.ValidString(s) {
		return fieldErr(field, "%q is not valid UTF-8", s)
	}
	for _, r := range s {
		switch {
		case r == '#' || r == ';' || r == ',':
			return fieldErr(field, "%q contains %q", s, r)
		case r <= ' ' || r == 0x7f || (r >= 0x80 && r <= 0x9f) || isSpace(r):
			return fieldErr(field, "%q contains whitespace or a control character", s)
		}
	}
	return nil
}

// isSpace reports Unicode white space beyond ASCII, which some parsers
// (and people) treat as a separator.
func isSpace(r rune) bool {
	return strings.ContainsRune("\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff", r)
}

func checkHostname(h string) error {
	if err := checkString("hostname", h, false); err != nil {
		return err
	}
	if len(h) > maxHostnameLen {
		return fieldErr("hostname", "%d bytes, more than %d", len(h), maxHostnameLen)
	}
	for _, l := range strings.Split(h, ".") {
		if len(l) > maxLabelLen {
			return fieldErr("hostname", "%q has a label longer than %d bytes", h, maxLabelLen)
		}
		if !labelRE.MatchString(l) {
			return fieldErr("hostname", "%q is not a DNS name (labels of letters, digits and inner '-', no trailing dot)", h)
		}
	}
	return nil
}

func checkList(field string, items []string, re *regexp.Regexp, want string) error {
	if len(items) > MaxListLen {
		return fieldErr(field, "%d items, more than %d", len(items), MaxListLen)
	}
	seen := make(map[string]bool, len(items))
	for _, it := range items {
		if err := checkString(field, it, false); err != nil {
			return err
		}
		if !re.MatchString(it) {
			return fieldErr(field, "%q is not %s", it, want)
		}
		if seen[it] {
			return fieldErr(field, "%q is listed twice", it)
		}
		seen[it] = true
	}
	return nil
}

// checkHostKey requires exactly one SSH public key in canonical
// authorized_keys form: "TYPE BASE64", no options, no comment.
func checkHostKey(k string) error {
	if k == "" {
		return fieldErr("host_key", "missing")
	}
	if len(k) > MaxStringLen {
		return fieldErr("host_key", "%d bytes, more than %d", len(k), MaxStringLen)
	}
	pub, _, options, rest, err := ssh.ParseAuthorizedKey([]byte(k))
	if err != nil {
		return fieldErr("host_key", "not an SSH public key")
	}
	if len(options) > 0 || len(rest) > 0 {
		return fieldErr("host_key", "not exactly one SSH public key without options")
	}
	if canon := CanonicalHostKey(pub); canon != k {
		return fieldErr("host_key", "not in canonical form %q (no comment, one space)", clip(canon))
	}
	return nil
}

// CanonicalHostKey is pub in the form an advert carries: "TYPE BASE64",
// without a comment or trailing newline.
func CanonicalHostKey(pub ssh.PublicKey) string {
	return strings.TrimSuffix(string(ssh.MarshalAuthorizedKey(pub)), "\n")
}

// clip shortens s for an error message.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}
