package discover

import (
	"context"

	"github.com/nixrb-discover/nixrb-discover/render"
	"github.com/nixrb-discover/nixrb-discover/wire"
)

// The sources' names (Source.Name, Snapshot.Source, the SOURCE column of
// list).
const (
	SourceTailnet = "tailnet"
	SourceMDNS    = "mdns"
	SourceStatic  = "static"
)

// Source is one way of finding builders (tailnet, mDNS, static file).
//
// Run blocks until ctx is done, calling emit with the whole current set of
// candidates each time it changes (a snapshot, not a delta). When the source
// itself fails (tailscaled restarting), it emits a Snapshot with Err set and
// no candidates: membership then keeps that source's last good set. Run
// returns nil when ctx is cancelled. emit must not be called concurrently.
type Source interface {
	// Name is the source's kind: "tailnet", "mdns" or "static".
	Name() string
	Run(ctx context.Context, emit func(Snapshot)) error
}

// Snapshot is the whole set of candidates one source sees now.
type Snapshot struct {
	// Source is the emitting source's Name.
	Source string
	// Candidates is every builder the source sees, trusted or not.
	Candidates []Candidate
	// Err, when set, means the source is down; Candidates is then ignored
	// and the last good snapshot is kept.
	Err error
	// Recheck lists candidate Keys to health-check at once (an mDNS
	// goodbye is a hint, never proof, that a builder left).
	Recheck []string
	// Partial means the source's first discovery round is not over (the
	// mDNS answers to its first queries are still arriving): the
	// candidates are checked, but the client writes no machines file
	// until every source has sent a snapshot that is not partial, so a
	// restart never shrinks the file to the builders heard first.
	Partial bool
}

// Candidate is one builder as a source sees it.
type Candidate struct {
	// Key is the stable identity: "tailnet:<StableNodeID>",
	// "mdns:<SHA256 fingerprint of the trusted host key>" (or
	// "mdns-untrusted:<instance>"), "static:<host>".
	Key string
	// Name is what users call it: the MagicDNS name, mDNS instance or host.
	Name string
	// Address is the host written into the machines URI and dialled by
	// the health check: a MagicDNS name, a tailnet IP, or a LAN address.
	Address string
	// Advert is the builder's advert; nil for static entries.
	Advert *wire.Advert
	// Machine is a static entry's line as the user wrote it; nil for
	// discovered builders.
	Machine *render.Machine
	// Trusted says whether this candidate may reach the machines file.
	Trusted bool
	// TrustReason explains the trust decision ("tailnet peer with
	// tag:nix-builder", "signed by fleet key ab12…", "unsigned advert").
	TrustReason string
	// TrustHint is the exact flag that would trust an untrusted candidate.
	TrustHint string
	// Problem, when set, says why the candidate cannot be used even if
	// trusted ("advert fetch failed: …", "advert invalid: field systems: …").
	Problem string
}
