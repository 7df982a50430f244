package wire

import "time"

// WireVersion is the advert wire format version this code writes. Readers
// accept any version >= 1 and ignore fields they do not know.
const WireVersion = 1

// Protocols a builder can be reached with, as Nix store URI schemes.
const (
	ProtocolSSHNG = "ssh-ng" // nix-daemon --stdio over SSH
	ProtocolSSH   = "ssh"    // nix-store --serve --write over SSH
)

// Advert is what a builder says about itself: how to reach it, what it can
// build, and how busy it is. It is the same document on every transport
// (JSON over the tailnet, DNS-SD TXT over mDNS); docs/PROTOCOL.md is its
// specification.
type Advert struct {
	// Version is the wire format version (WireVersion when written here).
	Version int
	// Hostname is the builder's host name (the mDNS instance name).
	Hostname string
	// SSHUser is the user Nix logs in as.
	SSHUser string
	// SSHPort is the port sshd listens on (22 by default).
	SSHPort int
	// Protocol is ProtocolSSHNG or ProtocolSSH.
	Protocol string
	// HostKey is the builder's SSH host public key in authorized_keys form
	// without a comment, e.g. "ssh-ed25519 AAAA...".
	HostKey string
	// Systems this builder builds for, e.g. x86_64-linux, i686-linux.
	Systems []string
	// SupportedFeatures are Nix system features, e.g. kvm, big-parallel.
	SupportedFeatures []string
	// MandatoryFeatures are features a derivation must require to be sent here.
	MandatoryFeatures []string
	// MaxJobs is how many builds the builder runs at once.
	MaxJobs int
	// SpeedFactor ranks builders; higher is preferred.
	SpeedFactor float64
	// Capacity is the builder's live load.
	Capacity Capacity
	// Draining means: send no new builds here.
	Draining bool
	// Enroll means the builder accepts SSH key enrolment over the tailnet.
	Enroll bool
	// NixVersion is the builder's Nix version, e.g. "2.26.3".
	NixVersion string
	// AgentVersion is the nixrb-discover version that wrote the advert.
	AgentVersion string
	// IssuedAt is when the advert was made (signed adverts expire).
	IssuedAt time.Time
	// Signature is the fleet-key signature; nil when unsigned.
	Signature *Signature
}

// Capacity is a builder's live load, quantised so that noise does not
// change the advert.
type Capacity struct {
	Cores         int     // online CPUs
	Load1         float64 // 1-minute load average
	MemTotalMiB   int64
	MemAvailMiB   int64
	StoreFreeMiB  int64 // free space on the filesystem of /nix/store
	RunningBuilds int   // builds running now
}

// Signature is an ed25519 signature over the canonical encoding of an
// advert's other fields.
type Signature struct {
	// KeyID names the fleet key that signed (a short fingerprint).
	KeyID string
	// Sig is the raw 64-byte ed25519 signature.
	Sig []byte
}
