package discover

import (
	"github.com/nixrb-discover/nixrb-discover/render"
	"time"

	"github.com/nixrb-discover/nixrb-discover/wire"
)

// StatusVersion is the version of the Status JSON document. Fields are
// only added within a version; a removal or change of meaning bumps it.
const StatusVersion = 1

// Status is the client's state as `list --json` prints it and the status
// socket serves it.
type Status struct {
	Version      int       `json:"version"`
	Generated    time.Time `json:"generated"`
	MachinesFile string    `json:"machines_file"`
	// SSHConfig is the ssh_config alias file the client writes (its
	// --ssh-config), empty when it writes none.
	SSHConfig  string     `json:"ssh_config,omitempty"`
	LastWrite  *time.Time `json:"last_write,omitempty"`
	WriteError string     `json:"write_error,omitempty"`
	// NixVersion is the local Nix the file is written for as one word
	// (render.NixVersion.Token: "2.26.3" for CppNix, "lix-2.93.3",
	// "determinate-3.8.2-nix-2.30.1"), "unknown" for the oldest rules.
	NixVersion string `json:"nix_version"`
	// Nix names it for people: "Nix 2.26.3", "Lix 2.93.3",
	// "Determinate Nix 3.8.2 (Nix 2.30.1)", "an unknown Nix".
	Nix                  string `json:"nix"`
	ClientKey            string `json:"client_key,omitempty"`
	ClientKeyFingerprint string `json:"client_key_fingerprint,omitempty"`
	Ready                bool   `json:"ready"`
	// ConfigError, when set, says why a changed configuration was
	// refused: the client runs on the configuration it started with.
	ConfigError string          `json:"config_error,omitempty"`
	Sources     []SourceStatus  `json:"sources"`
	Builders    []BuilderStatus `json:"builders"`
}

// SourceStatus says whether a source is working.
type SourceStatus struct {
	Name string `json:"name"`
	// State is SourceStarting (nothing heard from it yet), SourceOK or
	// SourceDown (Error says why; its last builders are kept).
	State string `json:"state"`
	// OK is State == SourceOK.
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

// The states of a source in SourceStatus.
const (
	SourceStarting = "starting"
	SourceOK       = "ok"
	SourceDown     = "down"
)

// BuilderStatus is one builder as the client sees it.
type BuilderStatus struct {
	Key               string         `json:"key"`
	Name              string         `json:"name"`
	Source            string         `json:"source"`
	Address           string         `json:"address,omitempty"`
	State             State          `json:"state"`
	Reason            string         `json:"reason,omitempty"`
	InFile            bool           `json:"in_file"`
	Trusted           bool           `json:"trusted"`
	Trust             string         `json:"trust,omitempty"`
	TrustHint         string         `json:"trust_hint,omitempty"`
	Protocol          string         `json:"protocol,omitempty"`
	SSHUser           string         `json:"ssh_user,omitempty"`
	SSHPort           int            `json:"ssh_port,omitempty"`
	Systems           []string       `json:"systems,omitempty"`
	SupportedFeatures []string       `json:"supported_features,omitempty"`
	MandatoryFeatures []string       `json:"mandatory_features,omitempty"`
	MaxJobs           int            `json:"max_jobs,omitempty"`
	SpeedFactor       float64        `json:"speed_factor,omitempty"`
	Capacity          *wire.Capacity `json:"capacity,omitempty"`
	Draining          bool           `json:"draining,omitempty"`
	LastCheck         *time.Time     `json:"last_check,omitempty"`
	RTTMillis         float64        `json:"rtt_ms,omitempty"`
	RemoteNix         string         `json:"remote_nix,omitempty"`
	// BuilderNix is the Nix the builder's advert names (its nix_version
	// read by render.ParseNixVersion: "Nix 2.26.3", "Lix 2.93.3"), empty
	// when it names none or one not known.
	BuilderNix  string `json:"builder_nix,omitempty"`
	TrustedUser string `json:"trusted_user,omitempty"`
	// Slots is what the client holds of the builder's Nix build slots
	// (nil when it holds none and the local Nix uses none, or does not
	// hold slots at all).
	Slots *SlotsStatus `json:"slots,omitempty"`
}

// SlotsStatus is a builder's Nix build slots (one per job of its line) as
// the client sees them in Nix's current-load directory.
type SlotsStatus struct {
	// Max is the builder's max-jobs: how many slots Nix has for it.
	Max int `json:"max"`
	// Held is how many the client holds, and Reason why: HoldDown,
	// HoldDraining, HoldPending (Nix skips the builder when all are
	// held) or HoldLoad (builds of other clients fill them).
	Held   int    `json:"held"`
	Reason string `json:"reason,omitempty"`
	// NixRunning is how many the local Nix's builds use.
	NixRunning int `json:"nix_running"`
}

// status builds the current Status (called by the loop only).
func (l *loop) status(now time.Time) *Status {
	s := &Status{
		Version:              StatusVersion,
		Generated:            now,
		MachinesFile:         l.c.MachinesPath,
		SSHConfig:            l.c.SSHConfigPath,
		NixVersion:           nixToken(l.c.NixVersion),
		Nix:                  l.c.NixVersion.String(),
		ClientKey:            l.c.SSHKeyPath,
		ClientKeyFingerprint: l.c.ClientKeyFingerprint,
		Ready:                l.ready,
		Sources:              []SourceStatus{},
		Builders:             []BuilderStatus{},
	}
	if !l.lastWrite.IsZero() {
		t := l.lastWrite
		s.LastWrite = &t
	}
	if l.writeErr != nil {
		s.WriteError = l.writeErr.Error()
	}
	errs := l.mem.sourceErrors()
	for _, src := range l.c.Sources {
		ss := SourceStatus{Name: src.Name(), State: SourceOK, OK: true}
		if err, down := errs[src.Name()]; down {
			ss.State, ss.OK, ss.Error = SourceDown, false, err.Error()
		} else if !l.heard[src.Name()] {
			ss.State, ss.OK = SourceStarting, false
		}
		s.Sources = append(s.Sources, ss)
	}
	for _, m := range l.mem.all() {
		b := BuilderStatus{
			Key: m.Key, Name: m.Name, Source: m.Source, Address: m.Address,
			State: m.State, Reason: m.Reason, InFile: m.InFile,
			Trusted: m.Trusted, Trust: m.TrustReason, TrustHint: m.TrustHint,
		}
		if p := m.renderProblem; p != "" && m.InFile {
			b.InFile, b.Reason = false, "not written: "+p
		}
		if a := m.Advert; a != nil {
			b.Protocol, b.SSHUser, b.SSHPort = a.Protocol, a.SSHUser, a.SSHPort
			b.Systems, b.SupportedFeatures, b.MandatoryFeatures = a.Systems, a.SupportedFeatures, a.MandatoryFeatures
			b.MaxJobs, b.SpeedFactor, b.Draining = a.MaxJobs, a.SpeedFactor, a.Draining
			c := a.Capacity
			b.Capacity = &c
		} else if mm := m.Machine; mm != nil {
			b.Protocol, b.SSHUser, b.SSHPort = mm.URI.Scheme, mm.URI.User, mm.URI.Port
			b.Systems, b.SupportedFeatures, b.MandatoryFeatures = mm.Systems, mm.SupportedFeatures, mm.MandatoryFeatures
			b.MaxJobs, b.SpeedFactor = int(mm.MaxJobs), mm.SpeedFactor
		}
		if sl := m.slots; sl.uri != "" && (sl.held > 0 || sl.nixRunning > 0) {
			b.Slots = &SlotsStatus{Max: sl.max, Held: sl.held, Reason: sl.reason, NixRunning: sl.nixRunning}
		}
		if m.Advert != nil && m.Advert.NixVersion != "" {
			if v, err := render.ParseNixVersion(m.Advert.NixVersion); err == nil {
				b.BuilderNix = v.String()
			}
		}
		if !m.Last.When.IsZero() {
			t := m.Last.When
			b.LastCheck = &t
			b.RTTMillis = float64(m.Last.RTT.Microseconds()) / 1000
			b.RemoteNix = m.Last.NixVersion
			b.TrustedUser = m.Last.Trusted.String()
		}
		s.Builders = append(s.Builders, b)
	}
	return s
}

// nixToken is v as status's nix_version gives it.
func nixToken(v render.NixVersion) string {
	if !v.Known() {
		return "unknown"
	}
	return v.Token()
}
