package render

import (
	"encoding/base64"
	"math"
	"net/url"
	"sort"
	"strconv"
	"strings"
)

// Machine is one line of the Nix machines file: a remote builder and what it
// can build. The zero value is not valid; see [Machine.Validate].
type Machine struct {
	// URI is the store URI Nix connects to (field 1).
	URI StoreURI
	// Systems are the platforms the builder builds for, in the order given
	// (field 2). Nix uses its own system when the field is "-".
	Systems []string
	// SSHKey is the path of the SSH identity Nix logs in with (field 3);
	// empty means ssh's default.
	SSHKey string
	// MaxJobs is how many builds Nix sends at once (field 4, default 1).
	MaxJobs uint32
	// SpeedFactor ranks builders, higher first (field 5, default 1). Nix
	// before 2.20 reads only integers.
	SpeedFactor float64
	// SupportedFeatures are the system features the builder has (field 6),
	// sorted and without duplicates, as Nix keeps them.
	SupportedFeatures []string
	// MandatoryFeatures are features a derivation must require to be built
	// here (field 7), sorted and without duplicates.
	MandatoryFeatures []string
	// HostKey is the builder's SSH host public key line, for example
	// "ssh-ed25519 AAAA…" (field 8 holds its base64); empty means root's
	// known_hosts decides.
	HostKey string
}

// StoreURI is a Nix store URI. SSH stores ("ssh", "ssh-ng") are kept as
// parts; any other store is kept whole in Opaque.
type StoreURI struct {
	// Scheme is "ssh" or "ssh-ng" for SSH stores, empty when Opaque is set.
	Scheme string
	// User is the SSH user, empty for ssh's default.
	User string
	// Host is a host name or IP address (IPv6 without brackets).
	Host string
	// Port is the SSH port; 0 means ssh's default (22). How it is written
	// depends on the Nix ([NixVersion.PortStyle]): host:port for CppNix
	// 2.31 and later, ?port=N for Lix 2.93 and later, not at all for the
	// others (they need an ssh_config alias).
	Port int
	// Params are the store parameters after '?', e.g. remote-store.
	Params url.Values
	// Opaque is a non-SSH store URI exactly as written ("local",
	// "daemon", "/path", "s3://…").
	Opaque string
}

// IsSSH reports whether the URI names an SSH store.
func (u StoreURI) IsSSH() bool { return u.Opaque == "" }

// newest is the CppNix whose rules String uses.
var newest = CppNixVersion(2, 31, 0)

// String returns the URI as written in the machines file for the newest
// CppNix (a port, if set, as host:port).
func (u StoreURI) String() string {
	s, _ := u.format(newest)
	return s
}

// format renders the URI for Nix version v. It fails if v cannot read it.
func (u StoreURI) format(v NixVersion) (string, error) {
	if u.Opaque != "" {
		return u.Opaque, nil
	}
	var b strings.Builder
	b.WriteString(u.Scheme)
	b.WriteString("://")
	if u.User != "" {
		b.WriteString(u.User)
		b.WriteByte('@')
	}
	host, params := u.Host, u.Params
	if u.Port != 0 {
		switch v.PortStyle() {
		case PortInHost:
			if strings.Contains(host, ":") {
				host = "[" + host + "]"
			}
			host += ":" + strconv.Itoa(u.Port)
		case PortParam:
			params = make(url.Values, len(u.Params)+1)
			for k, vs := range u.Params {
				params[k] = vs
			}
			params.Set("port", strconv.Itoa(u.Port))
		default:
			return "", &FieldError{Builder: u.Host, Field: "uri", Value: strconv.Itoa(u.Port),
				Reason: v.String() + " cannot read a port in the store URI (CppNix needs 2.31, Lix 2.93): use an ssh_config Host alias"}
		}
	}
	b.WriteString(host)
	if len(params) > 0 {
		b.WriteByte('?')
		b.WriteString(params.Encode())
	}
	return b.String(), nil
}

// HostKeyBase64 is field 8 as Nix reads it: the base64 of the host key line.
func (m Machine) HostKeyBase64() string {
	if m.HostKey == "" {
		return ""
	}
	return base64.StdEncoding.EncodeToString([]byte(m.HostKey))
}

// Name is how errors and logs name the builder: its host, or the whole URI
// for a non-SSH store.
func (m Machine) Name() string {
	if m.URI.Opaque != "" {
		return m.URI.Opaque
	}
	if m.URI.Host == "" {
		return strconv.Quote(m.URI.Scheme + "://" + m.URI.User + "@")
	}
	return m.URI.Host
}

// String returns the machine's line for the newest CppNix, without
// validation.
func (m Machine) String() string {
	line, err := m.line(newest)
	if err != nil {
		return "# invalid machine " + strconv.Quote(m.Name())
	}
	return line
}

// line formats the 8 fields for Nix version v (no validation, no newline).
func (m Machine) line(v NixVersion) (string, error) {
	uri, err := m.URI.format(v)
	if err != nil {
		return "", err
	}
	speed := formatSpeed(m.SpeedFactor, v)
	fields := []string{
		uri,
		list(m.Systems),
		dash(m.SSHKey),
		strconv.FormatUint(uint64(m.MaxJobs), 10),
		speed,
		list(m.SupportedFeatures),
		list(m.MandatoryFeatures),
		dash(m.HostKeyBase64()),
	}
	return strings.Join(fields, " "), nil
}

// formatSpeed writes the speed factor so that Nix v reads it: a Nix that
// reads only whole numbers ([NixVersion.FractionalSpeed]) gets it rounded,
// and a positive factor never rounds down to 0.
func formatSpeed(f float64, v NixVersion) string {
	if !v.FractionalSpeed() {
		r := math.Round(f)
		if r < 1 && f > 0 {
			r = 1
		}
		return strconv.FormatFloat(r, 'f', 0, 64)
	}
	return strconv.FormatFloat(f, 'f', -1, 64)
}

func list(items []string) string {
	if len(items) == 0 {
		return "-"
	}
	return strings.Join(items, ",")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// featureSet returns items sorted without duplicates or empty entries, as
// Nix's std::set keeps features; nil when nothing is left.
func featureSet(items []string) []string {
	var out []string
	for _, it := range items {
		if it != "" {
			out = append(out, it)
		}
	}
	if len(out) == 0 {
		return nil
	}
	sort.Strings(out)
	j := 1
	for i := 1; i < len(out); i++ {
		if out[i] != out[j-1] {
			out[j] = out[i]
			j++
		}
	}
	return out[:j]
}
