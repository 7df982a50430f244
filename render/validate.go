package render

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
)

// FieldError says which builder and which field of a machine is wrong.
type FieldError struct {
	Builder string // host or URI of the builder, if known
	Field   string // uri, systems, ssh-key, max-jobs, speed-factor, supported-features, mandatory-features, host-key
	Value   string // the offending value, as given
	Reason  string // what is wrong, lowercase
}

func (e *FieldError) Error() string {
	if e.Builder == "" {
		return e.short()
	}
	return fmt.Sprintf("builder %s: %s", e.Builder, e.short())
}

// short omits the builder (a file position names it instead).
func (e *FieldError) short() string {
	return fmt.Sprintf("field %s: %s: %s", e.Field, strconv.Quote(e.Value), e.Reason)
}

// Bounds on values written to the machines file.
const (
	maxValueLen  = 255
	maxListItems = 64
	maxSpeed     = 1e6
)

var (
	hostRE    = regexp.MustCompile(`^[A-Za-z0-9_]([A-Za-z0-9_.:%-]*[A-Za-z0-9_])?$`)
	userRE    = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]*$`)
	systemRE  = regexp.MustCompile(`^[A-Za-z0-9_]+(-[A-Za-z0-9_]+)+$`)
	featureRE = regexp.MustCompile(`^[A-Za-z0-9_.+-]+$`)
	paramRE   = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)
)

// Validate checks that m can be written as one machines-file line that
// Nix reads back to the same values: no value may contain whitespace, '#',
// ';', a comma inside a list item, a newline or a control character; the
// systems list is not empty; the speed factor is finite and not negative;
// the host key is one SSH public key line. The error is a *FieldError
// naming the builder and the field.
func (m Machine) Validate() error {
	name := m.Name()
	bad := func(field, value, reason string) error {
		return &FieldError{Builder: name, Field: field, Value: value, Reason: reason}
	}
	if err := m.URI.validate(name); err != nil {
		return err
	}
	if len(m.Systems) == 0 {
		return bad("systems", "", "empty: a builder must name at least one system")
	}
	if len(m.Systems) > maxListItems {
		return bad("systems", strings.Join(m.Systems, ","), fmt.Sprintf("more than %d systems", maxListItems))
	}
	for _, s := range m.Systems {
		if err := checkToken(s); err != nil {
			return bad("systems", s, err.Error())
		}
		if !systemRE.MatchString(s) {
			return bad("systems", s, "not a Nix system such as x86_64-linux")
		}
	}
	if m.SSHKey != "" {
		if err := checkToken(m.SSHKey); err != nil {
			return bad("ssh-key", m.SSHKey, err.Error())
		}
		if m.SSHKey == "-" {
			return bad("ssh-key", m.SSHKey, `"-" would be read as no key`)
		}
	}
	f := m.SpeedFactor
	switch {
	case math.IsNaN(f) || math.IsInf(f, 0):
		return bad("speed-factor", strconv.FormatFloat(f, 'g', -1, 64), "not a finite number")
	case f < 0:
		return bad("speed-factor", strconv.FormatFloat(f, 'g', -1, 64), "negative")
	case f > maxSpeed:
		return bad("speed-factor", strconv.FormatFloat(f, 'g', -1, 64), "larger than 1000000")
	}
	for field, list := range map[string][]string{"supported-features": m.SupportedFeatures, "mandatory-features": m.MandatoryFeatures} {
		if len(list) > maxListItems {
			return bad(field, strings.Join(list, ","), fmt.Sprintf("more than %d features", maxListItems))
		}
		for _, it := range list {
			if !featureRE.MatchString(it) || len(it) > maxValueLen {
				return bad(field, it, "a feature is letters, digits and . _ + - only")
			}
			if it == "-" {
				return bad(field, it, `"-" would be read as no features`)
			}
		}
	}
	if m.HostKey != "" {
		if err := checkKeyLine(m.HostKey); err != nil {
			return bad("host-key", m.HostKey, err.Error())
		}
	}
	return nil
}

func (u StoreURI) validate(name string) error {
	bad := func(value, reason string) error {
		return &FieldError{Builder: name, Field: "uri", Value: value, Reason: reason}
	}
	if u.Opaque != "" {
		if err := checkToken(u.Opaque); err != nil {
			return bad(u.Opaque, err.Error())
		}
		if u.Opaque[0] == '@' || u.Opaque == "-" {
			return bad(u.Opaque, "would be read as an include or an empty field")
		}
		scheme, _, hasScheme := strings.Cut(u.Opaque, "://")
		if hasScheme && (scheme == "ssh" || scheme == "ssh-ng") || !hasScheme && !isStoreWord(u.Opaque) {
			return bad(u.Opaque, "Nix would read this store URI as an SSH host")
		}
		return nil
	}
	if u.Scheme != "ssh" && u.Scheme != "ssh-ng" {
		return bad(u.Scheme, "scheme must be ssh or ssh-ng")
	}
	if u.Host == "" || len(u.Host) > 253 || !hostRE.MatchString(u.Host) {
		return bad(u.Host, "not a host name or IP address")
	}
	if strings.Count(u.Host, ":") == 1 {
		return bad(u.Host, "a port belongs in Port, not in the host")
	}
	if u.User != "" && (len(u.User) > 64 || !userRE.MatchString(u.User)) {
		return bad(u.User, "not a user name")
	}
	if u.Port < 0 || u.Port > 65535 {
		return bad(strconv.Itoa(u.Port), "port out of range")
	}
	for k, vs := range u.Params {
		if !paramRE.MatchString(k) {
			return bad(k, "bad store parameter name")
		}
		if k == "port" {
			// Lix 2.93 reads it (and the parser moves it to Port); CppNix
			// has no such setting and would connect to port 22.
			return bad(k, "a port store parameter: CppNix ignores it; write the port as host:port (CppNix 2.31) or an ssh_config alias")
		}
		for _, v := range vs {
			if len(v) > maxValueLen {
				return bad(v, "store parameter value too long")
			}
		}
	}
	return nil
}

// checkToken rejects what would split or end a field or a line.
func checkToken(s string) error {
	if s == "" {
		return fmt.Errorf("empty")
	}
	if len(s) > maxValueLen*4 {
		return fmt.Errorf("longer than %d bytes", maxValueLen*4)
	}
	for _, r := range s {
		switch {
		case r == ' ' || r == '\t':
			return fmt.Errorf("contains whitespace")
		case r == '\n' || r == '\r':
			return fmt.Errorf("contains a newline")
		case isControl(r):
			return fmt.Errorf("contains a control character")
		case r == '#':
			return fmt.Errorf("contains '#' (starts a comment)")
		case r == ';':
			return fmt.Errorf("contains ';' (separates machines)")
		case r == ',':
			return fmt.Errorf("contains ',' (separates list items)")
		case r > 0x7e:
			return fmt.Errorf("contains a non-ASCII character")
		}
	}
	return nil
}
