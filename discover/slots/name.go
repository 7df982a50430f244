package slots

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Dialect is the way a Nix release turns the first field of a machines
// line into the store URI its build hook names slot locks after.
type Dialect int

const (
	// Legacy is Nix 2.8 (Machine's constructor in machines.cc): the URI
	// exactly as written, with "ssh://" prepended when it has no scheme
	// (no "://", no "/", and not auto, daemon, local or "?...").
	Legacy Dialect = iota + 1
	// Rendered is Nix 2.26 (StoreReference::parse, then render): after
	// the same "ssh://" rule, the path is percent-decoded, empty and
	// '='-less query parameters are dropped, a repeated key keeps its
	// first value, values are percent-decoded, and the query is written
	// back sorted by key with every byte outside A-Z a-z 0-9 - . _ ~ : @
	// / ? percent-encoded (upper-case hex), keys included (which are
	// never decoded: "a%41=1" becomes "a%2541=1"). The authority is kept.
	Rendered
)

// String returns "legacy" or "rendered".
func (d Dialect) String() string {
	switch d {
	case Legacy:
		return "legacy"
	case Rendered:
		return "rendered"
	}
	return "dialect(" + strconv.Itoa(int(d)) + ")"
}

// DialectFor returns the dialect of Nix major.minor: [Rendered] from 2.21
// on, [Legacy] before. Only 2.8 (Legacy) and 2.26 (Rendered) are checked
// against a real Nix; the 2.21 boundary is an assumption from Nix's
// history (machines moved to StoreReference in NixOS/nix#9839, opened in
// January 2024). For URIs without query parameters or percent escapes
// both dialects give the same name, so only such lines can be misnamed.
func DialectFor(major, minor int) Dialect {
	if major > 2 || major == 2 && minor >= 21 {
		return Rendered
	}
	return Legacy
}

// LockName returns the file name, inside current-load, of slot slot of
// the machine whose store URI (from [StoreURI]) is storeURI: Nix's
// escapeUri(storeURI) + "-" + slot, escapeUri replacing each '/' with '_'.
// For example ssh-ng://root@100.64.0.2 slot 0 is
// "ssh-ng:__root@100.64.0.2-0". The name is the same in every dialect.
func LockName(storeURI string, slot int) string {
	return strings.ReplaceAll(storeURI, "/", "_") + "-" + strconv.Itoa(slot)
}

// StoreURI returns the store URI Nix of dialect d derives from uri, the
// first field of a machines line, for [LockName]. It refuses what Nix
// would not read as one URI (whitespace, ';', '#', an empty string) and,
// for [Rendered], what Nix 2.26 refuses ("Cannot parse Nix store": bytes
// outside printable ASCII, an upper-case scheme, < > \ ^ ` { | }, a
// bracket outside an IPv6 host, a bad percent escape) or renders
// unpredictably (a non-numeric port), and store words that are not remote
// stores (auto, daemon, local, local paths).
func StoreURI(uri string, d Dialect) (string, error) {
	if d != Legacy && d != Rendered {
		return "", fmt.Errorf("store uri %q: unknown %v", uri, d)
	}
	if uri == "" {
		return "", errors.New("store uri: empty")
	}
	if i := strings.IndexAny(uri, " \t\r\n\v\f;#"); i >= 0 {
		return "", fmt.Errorf("store uri %q: %q splits or ends a machines entry", uri, uri[i])
	}
	s := uri
	if !strings.Contains(s, "://") && !strings.Contains(s, "/") &&
		s != "auto" && s != "daemon" && s != "local" &&
		!strings.HasPrefix(s, "auto?") && !strings.HasPrefix(s, "daemon?") &&
		!strings.HasPrefix(s, "local?") && !strings.HasPrefix(s, "?") {
		s = "ssh://" + s
	}
	if d == Legacy {
		return s, nil
	}
	r, err := render(s)
	if err != nil {
		return "", fmt.Errorf("store uri %q (%v): %w", uri, d, err)
	}
	return r, nil
}

// render is StoreReference::render(StoreReference::parse(s)) of Nix 2.26
// for scheme://authority[/path][?query] URIs.
func render(s string) (string, error) {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return "", errors.New("not a scheme://host store (Nix reads it as a local store)")
	}
	if !validScheme(scheme) {
		return "", fmt.Errorf("scheme %q: Nix 2.26 accepts only [a-z][a-z0-9+.-]*", scheme)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`<>\^`+"`{|}", c) >= 0 {
			return "", fmt.Errorf("byte %q at %d: Nix 2.26 cannot parse it", c, i)
		}
	}
	base, query, _ := strings.Cut(rest, "?")
	authority, path := base, ""
	if i := strings.IndexByte(base, '/'); i >= 0 {
		authority, path = base[:i], base[i:]
	}
	if err := checkAuthority(authority); err != nil {
		return "", err
	}
	if strings.ContainsAny(path+query, "[]") {
		return "", errors.New("'[' or ']' outside an IPv6 host: Nix 2.26 cannot parse it")
	}
	path, err := percentDecode(path)
	if err != nil {
		return "", fmt.Errorf("path: %w", err)
	}
	if strings.IndexByte(path, 0) >= 0 {
		return "", errors.New("path: NUL byte")
	}
	params, err := decodeQuery(query)
	if err != nil {
		return "", fmt.Errorf("query: %w", err)
	}
	out := scheme + "://" + authority + path
	if len(params) > 0 {
		out += "?" + encodeQuery(params)
	}
	return out, nil
}

func validScheme(s string) bool {
	if s == "" || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}

// checkAuthority accepts [user@]host[:port], host being a name, a bare
// IPv6 address or one in brackets. Nix 2.26 keeps the authority as
// written (no percent-decoding), so only the percent escapes are checked.
func checkAuthority(a string) error {
	if _, err := percentDecode(a); err != nil {
		return fmt.Errorf("authority: %w", err)
	}
	host := a
	if i := strings.LastIndexByte(a, '@'); i >= 0 {
		host = a[i+1:]
	}
	if strings.ContainsAny(a[:len(a)-len(host)], "[]") {
		return errors.New("authority: '[' or ']' in the user name")
	}
	if strings.HasPrefix(host, "[") {
		end := strings.IndexByte(host, ']')
		if end < 0 {
			return errors.New("authority: unclosed '['")
		}
		addr, err := netip.ParseAddr(host[1:end])
		if err != nil || !addr.Is6() {
			return fmt.Errorf("authority: %q in brackets is not an IPv6 address", host[1:end])
		}
		if port := host[end+1:]; port != "" && !(port[0] == ':' && digits(port[1:])) {
			return fmt.Errorf("authority: %q after the IPv6 address is not :port", port)
		}
		return nil
	}
	if strings.ContainsAny(host, "[]") {
		return errors.New("authority: '[' or ']' outside an IPv6 host")
	}
	if strings.Count(host, ":") > 1 {
		if addr, err := netip.ParseAddr(host); err == nil && addr.Is6() {
			return nil
		}
		return fmt.Errorf("authority: %q is neither host:port nor an IPv6 address", host)
	}
	if _, port, ok := strings.Cut(host, ":"); ok && !digits(port) {
		return fmt.Errorf("authority: port %q is not a number (Nix 2.26 renders it as a path)", port)
	}
	return nil
}

func digits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// percentDecode decodes every %XX; '+' stays '+'.
func percentDecode(s string) (string, error) {
	if !strings.Contains(s, "%") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b.WriteByte(s[i])
			continue
		}
		if i+2 >= len(s) {
			return "", fmt.Errorf("bad percent escape %q", s[i:])
		}
		hi, ok1 := unhex(s[i+1])
		lo, ok2 := unhex(s[i+2])
		if !ok1 || !ok2 {
			return "", fmt.Errorf("bad percent escape %q", s[i:i+3])
		}
		b.WriteByte(hi<<4 | lo)
		i += 2
	}
	return b.String(), nil
}

type param struct{ key, value string }

// decodeQuery is Nix's decodeQuery into a std::map: tokens split on '&'
// (empty ones skipped), a token without '=' dropped, the key kept as
// written, the value percent-decoded, the first of a repeated key kept.
func decodeQuery(q string) ([]param, error) {
	var ps []param
	for tok := range strings.SplitSeq(q, "&") {
		if tok == "" {
			continue
		}
		if _, err := percentDecode(tok); err != nil {
			return nil, err // Nix 2.26 refuses a bad escape in a key too
		}
		k, v, ok := strings.Cut(tok, "=")
		if !ok {
			continue
		}
		if slices.ContainsFunc(ps, func(p param) bool { return p.key == k }) {
			continue
		}
		dv, err := percentDecode(v)
		if err != nil {
			return nil, err
		}
		ps = append(ps, param{k, dv})
	}
	slices.SortFunc(ps, func(a, b param) int { return strings.Compare(a.key, b.key) })
	return ps, nil
}

func encodeQuery(ps []param) string {
	var b strings.Builder
	for i, p := range ps {
		if i > 0 {
			b.WriteByte('&')
		}
		percentEncode(&b, p.key)
		b.WriteByte('=')
		percentEncode(&b, p.value)
	}
	return b.String()
}

// percentEncode writes s with every byte but unreserved ones and ":@/?"
// as %XX (upper-case), as Nix's encodeQuery does.
func percentEncode(b *strings.Builder, s string) {
	const hex = "0123456789ABCDEF"
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-._~:@/?", c) >= 0 {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
}
