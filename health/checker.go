package health

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// Defaults for the zero fields of a Checker.
const (
	// DefaultCheckTimeout bounds each step of a check: the TCP connect,
	// the authenticated SSH handshake, and the Nix handshake.
	DefaultCheckTimeout = 3 * time.Second
	// DefaultBannerTimeout bounds the wait for the SSH banner on each new
	// connection (a probe, or a full check's login). A hung sshd accepts
	// TCP (the kernel does) but never sends its banner; this is how fast
	// we notice. A ping on the kept connection reads no banner.
	DefaultBannerTimeout = 500 * time.Millisecond
	// DefaultRefreshChecks is how many checks may reuse one authenticated
	// connection before a check makes a new one.
	DefaultRefreshChecks = 10
	// DefaultRefreshAfter is how old a reused connection may get before a
	// check makes a new one.
	DefaultRefreshAfter = 5 * time.Minute
)

// Checker checks builders the way Nix will use them: over SSH with the
// same key and user, then with the real Nix handshake (`nix-daemon
// --stdio` for ssh-ng, `nix-store --serve --write` for ssh).
//
// Nix opens a new SSH connection for every build, and an established
// connection outlives a dead or hung listening sshd. So every Check
// reaches the SSH banner on a new TCP connection, within BannerTimeout:
// a hung sshd (TCP accepted by the kernel, no banner) fails in about
// BannerTimeout, a dead one at once.
//
// The authenticated connection is kept per Target.Key. A check that can
// reuse it makes the new connection only as far as the banner (the
// probe), then sends keepalive@openssh.com on the kept connection (its
// round trip is the RTT) and runs a new Nix handshake in a new session.
// A check that cannot reuse it makes a full new connection (which reads
// the banner anyway: no probe) and keeps it if the check passes. The
// kept connection is replaced after RefreshChecks checks, after
// RefreshAfter, when the Target's address, user or host key (or the
// Signer) changes, and whenever a check fails. A check that fails on a
// reused connection is retried once on a new one (unless the remote
// itself answered: not trusted, Nix not found), so a connection that
// went stale (a NAT timeout) does not fail a healthy builder.
//
// sshd (OpenSSH 9.8 and later, PerSourcePenalties) counts each probe, a
// connection closed without authenticating, as one second of "noauth"
// penalty for the source address, enforced only once 15 s have built up:
// a source must probe the same builder more than once a second for that
// to happen (many clients behind one NAT). Set RefreshChecks to -1 to
// make every check a full authenticated connection (no probes, about
// twice the cost), or exempt the clients with PerSourcePenaltyExemptList.
//
// Set the fields before the first Check. A Checker is safe for
// concurrent use; checks of the same Key run one at a time.
type Checker struct {
	// Signer is the client identity: the key Nix uses (the key file in
	// field 3 of the machines file). Required.
	Signer ssh.Signer
	// Dial opens TCP connections; nil uses a net.Dialer. A tsnet node's
	// Server.Dial fits.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Timeout bounds each step (connect, SSH handshake, keepalive, Nix
	// handshake); zero means DefaultCheckTimeout.
	Timeout time.Duration
	// BannerTimeout bounds the wait for the SSH banner after connecting;
	// zero means DefaultBannerTimeout (never more than Timeout).
	BannerTimeout time.Duration
	// RefreshChecks is how many checks may reuse a connection; zero means
	// DefaultRefreshChecks, negative means never reuse.
	RefreshChecks int
	// RefreshAfter is how long a connection may be reused; zero means
	// DefaultRefreshAfter.
	RefreshAfter time.Duration
	// UntrustedBuilds says the local Nix builds on a daemon that does not
	// trust its SSH user: it sees from the handshake that it is not
	// trusted and sends the .drv by path, which an untrusted user may
	// build. A "not trusted" answer then passes the check
	// (Result.Trusted stays TrustedNo, so `list` still says so). Which
	// Nix does is the local implementation's rule
	// (render.NixVersion.BuildsOnUntrustedDaemon: CppNix 2.16, every
	// Lix); older Nix gets "not privileged to build input-addressed
	// derivations": leave it false.
	UntrustedBuilds bool
	// MinDaemonProtocol is the oldest worker protocol minor (1.N) the
	// local Nix still speaks over ssh-ng (render.NixVersion
	// .MinDaemonProtocol: 35 for Lix 2.94); a daemon announcing less
	// fails the check with ReasonDaemonError, since Nix could not use it.
	// Zero: no limit. ssh:// (nix-store --serve) is not affected.
	MinDaemonProtocol int
	// Logger gets a debug line per check and a warning per host key
	// mismatch; nil discards.
	Logger *slog.Logger

	mu     sync.Mutex
	conns  map[string]*cachedConn
	closed bool
	onLost func(key string, r Result)
}

// Target is one builder to check, as Nix would reach it.
type Target struct {
	// Key is the builder's membership key; connections are reused per Key.
	Key string
	// Addr is the host:port to dial.
	Addr string
	// User is the SSH user Nix logs in as (from the machines URI; without
	// one, Nix uses the user its build hook runs as, root for a
	// nix-daemon). Required.
	User string
	// Protocol is "ssh-ng" (nix-daemon --stdio) or "ssh" (nix-store
	// --serve --write).
	Protocol string
	// HostKey is the pinned or advertised host key; the key the server
	// presents must equal it. Required.
	HostKey ssh.PublicKey
}

// Protocol names accepted in Target.Protocol.
const (
	ProtocolSSHNG = "ssh-ng"
	ProtocolSSH   = "ssh"
)

// Reason says why a check failed; ReasonOK when it passed.
type Reason string

// Reasons a check reports.
const (
	ReasonOK              Reason = ""
	ReasonUnreachable     Reason = "unreachable"
	ReasonTimeout         Reason = "timeout"
	ReasonAuthRefused     Reason = "auth refused"
	ReasonHostKeyMismatch Reason = "host key mismatch"
	ReasonNixNotFound     Reason = "nix not on PATH"
	ReasonDaemonError     Reason = "daemon error"
	// ReasonNotTrusted: the handshake worked but the daemon (protocol
	// 1.35 and later) says it does not trust the SSH user. Nix then
	// refuses to build input-addressed derivations there ("you are not
	// privileged to build input-addressed derivations"), which is nearly
	// every build, so such a builder is not healthy.
	ReasonNotTrusted Reason = "not trusted"
	// ReasonInvalid: the check could not run (no Signer, no user, no
	// host key, unknown protocol, Checker closed).
	ReasonInvalid Reason = "invalid"
	// ReasonEnrollRefused: the builder's enrolment endpoint refused the
	// client's key before the check (the reason it gave is in the
	// Detail). The client reports it; the Checker never does.
	ReasonEnrollRefused Reason = "enrolment refused"
)

// Trusted is the daemon's answer to "do you trust this client?".
type Trusted int

// Trust states. Daemons before protocol 1.35 (Nix 2.15) do not say, and
// neither does the serve protocol: TrustedUnknown, never a guess.
const (
	TrustedUnknown Trusted = iota
	TrustedYes
	TrustedNo
)

// String returns "unknown", "trusted" or "not trusted".
func (t Trusted) String() string {
	switch t {
	case TrustedYes:
		return "trusted"
	case TrustedNo:
		return "not trusted"
	default:
		return "unknown"
	}
}

// Result is the outcome of one Check.
type Result struct {
	// OK is true when Nix can use the builder.
	OK bool
	// Reason says why not; ReasonOK when OK.
	Reason Reason
	// Detail is a human sentence: what failed, what the remote said,
	// and where there is one, the fix.
	Detail string
	// RTT is the round trip of a keepalive@openssh.com request on the
	// authenticated connection (zero if the check did not get that far).
	RTT time.Duration
	// NixVersion is the remote's Nix version, when its protocol says it
	// (worker protocol 1.33 and later).
	NixVersion string
	// ProtocolVersion is the protocol version the remote announced:
	// "1.34" for Nix 2.8's daemon, "1.38" for Nix 2.26's, "2.7" for
	// nix-store --serve.
	ProtocolVersion string
	// Trusted is whether the daemon trusts the SSH user.
	Trusted Trusted
	// PresentedKeyFingerprint is the SHA256 fingerprint of the host key
	// the server presented, when it got that far.
	PresentedKeyFingerprint string
	// Reused says the check ran on a reused authenticated connection.
	Reused bool
	// ConnectionLost says the cached connection died on its own: the
	// kernel's TCP keepalive got no answer (packets dropped, host down).
	ConnectionLost bool
	// When is when the check started.
	When time.Time
	// Took is how long the check took.
	Took time.Duration

	// watched: connect turned on kernel TCP keepalive for the connection.
	watched bool
}

// Forget closes and drops the cached connection for key, if any. Call it
// when a builder leaves.
func (c *Checker) Forget(key string) {
	c.mu.Lock()
	e := c.conns[key]
	delete(c.conns, key)
	c.mu.Unlock()
	if e != nil {
		e.forget()
	}
}

// Close closes every cached connection. Later checks fail with
// ReasonInvalid. Close always returns nil.
func (c *Checker) Close() error {
	c.mu.Lock()
	conns := c.conns
	c.conns = nil
	c.closed = true
	c.mu.Unlock()
	for _, e := range conns {
		e.forget()
	}
	return nil
}

// cachedConn is the reusable SSH connection of one Key. sem serialises
// the checks of the Key; mu guards the fields, which Forget may clear
// while a check runs.
type cachedConn struct {
	sem chan struct{}

	mu        sync.Mutex
	gone      bool // forgotten: do not keep a new client
	client    *ssh.Client
	addr      string
	user      string
	hostKey   string // marshalled
	identity  string // marshalled client public key
	created   time.Time
	uses      int
	presented string // fingerprint of the key the server presented
	watched   bool   // kernel TCP keepalive watches client
}

// entry returns the cachedConn of key, creating it; nil once closed.
func (c *Checker) entry(key string) *cachedConn {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	if c.conns == nil {
		c.conns = make(map[string]*cachedConn)
	}
	e := c.conns[key]
	if e == nil {
		e = &cachedConn{sem: make(chan struct{}, 1)}
		c.conns[key] = e
	}
	return e
}

// forget closes the client and marks the entry gone.
func (e *cachedConn) forget() {
	e.mu.Lock()
	cl := e.client
	e.client = nil
	e.gone = true
	e.mu.Unlock()
	if cl != nil {
		_ = cl.Close()
	}
}

// drop closes the client after a failure; the entry stays usable.
func (e *cachedConn) drop() {
	e.mu.Lock()
	cl := e.client
	e.client = nil
	e.mu.Unlock()
	if cl != nil {
		_ = cl.Close()
	}
}

func (c *Checker) timeout() time.Duration {
	if c.Timeout > 0 {
		return c.Timeout
	}
	return DefaultCheckTimeout
}

func (c *Checker) bannerTimeout() time.Duration {
	d := c.BannerTimeout
	if d <= 0 {
		d = DefaultBannerTimeout
	}
	return min(d, c.timeout())
}

func (c *Checker) logger() *slog.Logger {
	if c.Logger != nil {
		return c.Logger
	}
	return slog.New(slog.DiscardHandler)
}

func (c *Checker) dial(ctx context.Context, addr string) (net.Conn, error) {
	if c.Dial != nil {
		return c.Dial(ctx, "tcp", addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}
