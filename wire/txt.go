package wire

import (
	"encoding/base64"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// MaxTXTStrings is the most TXT strings DecodeTXT reads.
const MaxTXTStrings = 64

// TXT keys of wire format v1 (docs/PROTOCOL.md has the table).
const (
	txtVersion       = "v"
	txtHostname      = "h"
	txtSSHUser       = "u"
	txtSSHPort       = "p"
	txtProtocol      = "pr"
	txtHostKey       = "hk"
	txtSystems       = "sy"
	txtSupported     = "sf"
	txtMandatory     = "mf"
	txtMaxJobs       = "mj"
	txtSpeedFactor   = "sp"
	txtCores         = "cc"
	txtLoad1         = "ld"
	txtMemTotal      = "mt"
	txtMemAvail      = "ma"
	txtStoreFree     = "sd"
	txtRunningBuilds = "rb"
	txtDraining      = "dr"
	txtEnroll        = "en"
	txtNixVersion    = "nv"
	txtAgentVersion  = "av"
	txtIssuedAt      = "iat"
	txtKeyID         = "kid"
	txtSig           = "sig"
)

// txtRequired are the keys every TXT advert carries, with their JSON name.
var txtRequired = []struct{ key, field string }{
	{txtVersion, "version"}, {txtHostname, "hostname"}, {txtSSHUser, "ssh_user"},
	{txtSSHPort, "ssh_port"}, {txtProtocol, "protocol"}, {txtHostKey, "host_key"},
	{txtSystems, "systems"}, {txtMaxJobs, "max_jobs"}, {txtSpeedFactor, "speed_factor"},
	{txtIssuedAt, "issued_at"},
}

// EncodeTXT validates a and returns its DNS-SD TXT strings ("key=value",
// docs/PROTOCOL.md). The host name and SSH port are also the mDNS instance
// name and SRV port, but the TXT set repeats them so that it is complete
// and covered by the signature. It fails if a string would exceed 255
// bytes.
func EncodeTXT(a *Advert) ([]string, error) {
	if err := a.Validate(); err != nil {
		return nil, err
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(a.HostKey))
	if err != nil { // Validate parsed it already
		return nil, fieldErr("host_key", "not an SSH public key")
	}
	b2i := func(b bool) string {
		if b {
			return "1"
		}
		return "0"
	}
	kv := [][2]string{
		{txtVersion, strconv.Itoa(a.Version)},
		{txtHostname, a.Hostname},
		{txtSSHUser, a.SSHUser},
		{txtSSHPort, strconv.Itoa(a.SSHPort)},
		{txtProtocol, a.Protocol},
		{txtHostKey, base64.StdEncoding.EncodeToString(pub.Marshal())},
		{txtSystems, strings.Join(a.Systems, ",")},
		{txtSupported, strings.Join(a.SupportedFeatures, ",")},
		{txtMandatory, strings.Join(a.MandatoryFeatures, ",")},
		{txtMaxJobs, strconv.Itoa(a.MaxJobs)},
		{txtSpeedFactor, formatFloat(a.SpeedFactor)},
		{txtCores, strconv.Itoa(a.Capacity.Cores)},
		{txtLoad1, formatFloat(a.Capacity.Load1)},
		{txtMemTotal, strconv.FormatInt(a.Capacity.MemTotalMiB, 10)},
		{txtMemAvail, strconv.FormatInt(a.Capacity.MemAvailMiB, 10)},
		{txtStoreFree, strconv.FormatInt(a.Capacity.StoreFreeMiB, 10)},
		{txtRunningBuilds, strconv.Itoa(a.Capacity.RunningBuilds)},
		{txtDraining, b2i(a.Draining)},
		{txtEnroll, b2i(a.Enroll)},
		{txtNixVersion, a.NixVersion},
		{txtAgentVersion, a.AgentVersion},
		{txtIssuedAt, strconv.FormatInt(a.IssuedAt.Unix(), 10)},
	}
	if a.Signature != nil {
		kv = append(kv,
			[2]string{txtKeyID, a.Signature.KeyID},
			[2]string{txtSig, base64.RawStdEncoding.EncodeToString(a.Signature.Sig)})
	}
	txt := make([]string, 0, len(kv))
	for _, p := range kv {
		s := p[0] + "=" + p[1]
		if len(s) > MaxStringLen {
			return nil, fmt.Errorf("advert: TXT key %s: %d bytes, more than %d", p[0], len(s), MaxStringLen)
		}
		txt = append(txt, s)
	}
	return txt, nil
}

// DecodeTXT parses and validates the DNS-SD TXT strings of an advert of
// any version >= 1. Keys are case-insensitive; unknown keys are ignored; a
// repeated key, a missing required key or a malformed value is an error
// (a *FieldError naming the JSON field where it is about one field).
func DecodeTXT(txt []string) (*Advert, error) {
	if len(txt) > MaxTXTStrings {
		return nil, fmt.Errorf("advert: %d TXT strings, more than %d", len(txt), MaxTXTStrings)
	}
	m := make(map[string]string, len(txt))
	bare := make(map[string]bool)
	for _, s := range txt {
		if s == "" {
			continue // RFC 6763 6.1: an empty TXT record is one empty string
		}
		if len(s) > MaxStringLen {
			return nil, fmt.Errorf("advert: TXT string of %d bytes, more than %d", len(s), MaxStringLen)
		}
		k, v, hasValue := strings.Cut(s, "=")
		k = strings.ToLower(k)
		if k == "" {
			return nil, fmt.Errorf("advert: TXT string %q has no key", clip(s))
		}
		if _, dup := m[k]; dup || bare[k] {
			return nil, fmt.Errorf("advert: TXT key %q appears twice", clip(k))
		}
		if !hasValue {
			// A boolean attribute (RFC 6763 6.4): no v1 key is one.
			if isTXTKey(k) {
				return nil, fmt.Errorf("advert: TXT key %s has no value", k)
			}
			bare[k] = true
			continue
		}
		m[k] = v
	}
	for _, r := range txtRequired {
		if _, ok := m[r.key]; !ok {
			return nil, fieldErr(r.field, "missing (TXT key %s)", r.key)
		}
	}
	d := txtDecoder{m: m}
	a := &Advert{
		Version:           d.int(txtVersion, "version"),
		Hostname:          m[txtHostname],
		SSHUser:           m[txtSSHUser],
		SSHPort:           d.int(txtSSHPort, "ssh_port"),
		Protocol:          m[txtProtocol],
		HostKey:           d.hostKey(),
		Systems:           splitList(m[txtSystems]),
		SupportedFeatures: splitList(m[txtSupported]),
		MandatoryFeatures: splitList(m[txtMandatory]),
		MaxJobs:           d.int(txtMaxJobs, "max_jobs"),
		SpeedFactor:       d.float(txtSpeedFactor, "speed_factor"),
		Capacity: Capacity{
			Cores:         d.int(txtCores, "capacity.cores"),
			Load1:         d.float(txtLoad1, "capacity.load1"),
			MemTotalMiB:   d.int64(txtMemTotal, "capacity.mem_total_mib"),
			MemAvailMiB:   d.int64(txtMemAvail, "capacity.mem_avail_mib"),
			StoreFreeMiB:  d.int64(txtStoreFree, "capacity.store_free_mib"),
			RunningBuilds: d.int(txtRunningBuilds, "capacity.running_builds"),
		},
		Draining:     d.bool(txtDraining, "draining"),
		Enroll:       d.bool(txtEnroll, "enroll"),
		NixVersion:   m[txtNixVersion],
		AgentVersion: m[txtAgentVersion],
		IssuedAt:     time.Unix(d.int64(txtIssuedAt, "issued_at"), 0).UTC(),
	}
	kid, hasKid := m[txtKeyID]
	sig, hasSig := m[txtSig]
	switch {
	case hasKid && !hasSig:
		return nil, fieldErr("signature.sig", "missing (TXT key %s)", txtSig)
	case hasSig && !hasKid:
		return nil, fieldErr("signature.key_id", "missing (TXT key %s)", txtKeyID)
	case hasSig:
		raw, err := base64.RawStdEncoding.Strict().DecodeString(sig)
		if err != nil && d.err == nil {
			d.err = fieldErr("signature.sig", "not unpadded base64")
		}
		a.Signature = &Signature{KeyID: kid, Sig: raw}
	}
	if d.err != nil {
		return nil, d.err
	}
	if err := a.Validate(); err != nil {
		return nil, err
	}
	return a, nil
}

// txtDecoder parses TXT values, keeping the first error.
type txtDecoder struct {
	m   map[string]string
	err error
}

func (d *txtDecoder) fail(field, format string, args ...any) {
	if d.err == nil {
		d.err = fieldErr(field, format, args...)
	}
}

func (d *txtDecoder) int64(key, field string) int64 {
	v, ok := d.m[key]
	if !ok {
		return 0
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		d.fail(field, "%q is not a decimal integer (TXT key %s)", clip(v), key)
	}
	return n
}

func (d *txtDecoder) int(key, field string) int {
	n := d.int64(key, field)
	if n < math.MinInt32 || n > math.MaxInt32 {
		d.fail(field, "%d is out of range (TXT key %s)", n, key)
		return 0
	}
	return int(n)
}

func (d *txtDecoder) float(key, field string) float64 {
	v, ok := d.m[key]
	if !ok {
		return 0
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
		d.fail(field, "%q is not a decimal number (TXT key %s)", clip(v), key)
	}
	return f
}

func (d *txtDecoder) bool(key, field string) bool {
	switch v := d.m[key]; v {
	case "", "0":
		return false
	case "1":
		return true
	default:
		d.fail(field, "%q is not 0 or 1 (TXT key %s)", clip(v), key)
		return false
	}
}

// hostKey turns the TXT form (base64 of the SSH wire key) into the
// advert form "TYPE BASE64".
func (d *txtDecoder) hostKey() string {
	raw, err := base64.StdEncoding.Strict().DecodeString(d.m[txtHostKey])
	if err != nil {
		d.fail("host_key", "not base64 (TXT key %s)", txtHostKey)
		return ""
	}
	pub, err := ssh.ParsePublicKey(raw)
	if err != nil {
		d.fail("host_key", "not an SSH public key")
		return ""
	}
	return CanonicalHostKey(pub)
}

func splitList(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

// formatFloat is the one text form of a float on the wire and in the
// signed encoding: shortest decimal that parses back to the same value.
func formatFloat(f float64) string {
	return strconv.FormatFloat(f, 'g', -1, 64)
}

func isTXTKey(k string) bool {
	switch k {
	case txtVersion, txtHostname, txtSSHUser, txtSSHPort, txtProtocol, txtHostKey,
		txtSystems, txtSupported, txtMandatory, txtMaxJobs, txtSpeedFactor, txtCores,
		txtLoad1, txtMemTotal, txtMemAvail, txtStoreFree, txtRunningBuilds, txtDraining,
		txtEnroll, txtNixVersion, txtAgentVersion, txtIssuedAt, txtKeyID, txtSig:
		return true
	}
	return false
}
