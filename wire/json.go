package wire

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// MaxJSONSize is the largest JSON advert DecodeJSON reads, in bytes.
const MaxJSONSize = 16 << 10

// jsonAdvert is the JSON document of wire format v1. Pointers mark the
// required fields, so a missing one is told from a zero one.
type jsonAdvert struct {
	Version           *int          `json:"version"`
	Hostname          *string       `json:"hostname"`
	SSHUser           *string       `json:"ssh_user"`
	SSHPort           *int          `json:"ssh_port"`
	Protocol          *string       `json:"protocol"`
	HostKey           *string       `json:"host_key"`
	Systems           []string      `json:"systems"`
	SupportedFeatures []string      `json:"supported_features"`
	MandatoryFeatures []string      `json:"mandatory_features"`
	MaxJobs           *int          `json:"max_jobs"`
	SpeedFactor       *float64      `json:"speed_factor"`
	Capacity          *jsonCapacity `json:"capacity,omitempty"`
	Draining          bool          `json:"draining"`
	Enroll            bool          `json:"enroll"`
	NixVersion        string        `json:"nix_version,omitempty"`
	AgentVersion      string        `json:"agent_version,omitempty"`
	IssuedAt          *string       `json:"issued_at"`
	Signature         *jsonSig      `json:"signature,omitempty"`
}

type jsonCapacity struct {
	Cores         int     `json:"cores"`
	Load1         float64 `json:"load1"`
	MemTotalMiB   int64   `json:"mem_total_mib"`
	MemAvailMiB   int64   `json:"mem_avail_mib"`
	StoreFreeMiB  int64   `json:"store_free_mib"`
	RunningBuilds int     `json:"running_builds"`
}

type jsonSig struct {
	KeyID *string `json:"key_id"`
	Sig   []byte  `json:"sig"` // standard base64 in JSON
}

// EncodeJSON validates a and returns its wire format v1 JSON document
// (docs/PROTOCOL.md). IssuedAt is written in UTC to the second.
func EncodeJSON(a *Advert) ([]byte, error) {
	if err := a.Validate(); err != nil {
		return nil, err
	}
	iat := a.IssuedAt.UTC().Format(time.RFC3339)
	c := jsonCapacity(a.Capacity)
	j := jsonAdvert{
		Version:           &a.Version,
		Hostname:          &a.Hostname,
		SSHUser:           &a.SSHUser,
		SSHPort:           &a.SSHPort,
		Protocol:          &a.Protocol,
		HostKey:           &a.HostKey,
		Systems:           a.Systems,
		SupportedFeatures: nonNil(a.SupportedFeatures),
		MandatoryFeatures: nonNil(a.MandatoryFeatures),
		MaxJobs:           &a.MaxJobs,
		SpeedFactor:       &a.SpeedFactor,
		Capacity:          &c,
		Draining:          a.Draining,
		Enroll:            a.Enroll,
		NixVersion:        a.NixVersion,
		AgentVersion:      a.AgentVersion,
		IssuedAt:          &iat,
	}
	if a.Signature != nil {
		j.Signature = &jsonSig{KeyID: &a.Signature.KeyID, Sig: a.Signature.Sig}
	}
	return json.Marshal(j)
}

// DecodeJSON parses and validates a wire format JSON advert of any version
// >= 1, ignoring keys it does not know. A missing or malformed field is a
// *FieldError naming it; input over MaxJSONSize is refused.
func DecodeJSON(b []byte) (*Advert, error) {
	if len(b) > MaxJSONSize {
		return nil, fmt.Errorf("advert: %d bytes of JSON, more than %d", len(b), MaxJSONSize)
	}
	var j jsonAdvert
	if err := json.Unmarshal(b, &j); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return nil, fieldErr(te.Field, "want a JSON %s, got %s", te.Type, te.Value)
		}
		return nil, fmt.Errorf("advert: bad JSON: %w", err)
	}
	req := []struct {
		name    string
		missing bool
	}{
		{"version", j.Version == nil},
		{"hostname", j.Hostname == nil},
		{"ssh_user", j.SSHUser == nil},
		{"ssh_port", j.SSHPort == nil},
		{"protocol", j.Protocol == nil},
		{"host_key", j.HostKey == nil},
		{"systems", j.Systems == nil},
		{"max_jobs", j.MaxJobs == nil},
		{"speed_factor", j.SpeedFactor == nil},
		{"issued_at", j.IssuedAt == nil},
	}
	for _, r := range req {
		if r.missing {
			return nil, fieldErr(r.name, "missing")
		}
	}
	iat, err := time.Parse(time.RFC3339, *j.IssuedAt)
	if err != nil {
		return nil, fieldErr("issued_at", "%q is not an RFC 3339 time", clip(*j.IssuedAt))
	}
	a := &Advert{
		Version:           *j.Version,
		Hostname:          *j.Hostname,
		SSHUser:           *j.SSHUser,
		SSHPort:           *j.SSHPort,
		Protocol:          *j.Protocol,
		HostKey:           *j.HostKey,
		Systems:           nilIfEmpty(j.Systems),
		SupportedFeatures: nilIfEmpty(j.SupportedFeatures),
		MandatoryFeatures: nilIfEmpty(j.MandatoryFeatures),
		MaxJobs:           *j.MaxJobs,
		SpeedFactor:       *j.SpeedFactor,
		Draining:          j.Draining,
		Enroll:            j.Enroll,
		NixVersion:        j.NixVersion,
		AgentVersion:      j.AgentVersion,
		IssuedAt:          time.Unix(iat.Unix(), 0).UTC(),
	}
	if j.Capacity != nil {
		a.Capacity = Capacity(*j.Capacity)
	}
	if j.Signature != nil {
		if j.Signature.KeyID == nil {
			return nil, fieldErr("signature.key_id", "missing")
		}
		if j.Signature.Sig == nil {
			return nil, fieldErr("signature.sig", "missing")
		}
		a.Signature = &Signature{KeyID: *j.Signature.KeyID, Sig: j.Signature.Sig}
	}
	if err := a.Validate(); err != nil {
		return nil, err
	}
	return a, nil
}

// nonNil makes a nil list encode as [] rather than null.
func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// nilIfEmpty makes decoded empty lists nil, so that decoding is canonical.
func nilIfEmpty(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return s
}
