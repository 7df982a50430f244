package tailnet

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"syscall"
	"time"
)

// Retrying a failed advert fetch. Two failures cost very differently:
//
//   - quick: the peer answered at once without an advert (TCP reset or
//     connection refused, or a connection closed before any answer). The
//     peer is up and its agent is not listening yet: a builder booting
//     (tailscaled first, then the agent) or an agent restarting. Asking
//     again costs one SYN and one RST over the tailnet and a few
//     microseconds of CPU, so it is asked again every 250–500 ms for
//     tnFastWindow after the peer came online, its agent went away (a
//     fetch or long poll that worked, then failed), its node restarted
//     (a new disco key in the netmap) or the local tailscaled came back.
//     An agent that starts in that window is seen within ~0.5 s.
//   - slow: a timeout (the peer is unreachable: packets are dropped), or
//     an answer that is not an advert. Each attempt holds a fetch slot for
//     up to FetchTimeout, so these back off (1 s doubling to 60 s) in a
//     small share of the pool, as do quick failures after the window;
//     a builder that answered before backs off to at most Refresh, and
//     to 1 s within tnFastWindow of its agent going away (a suspended
//     laptop resuming, a builder rebooting).
//
// The window bounds what a tagged peer without an agent costs: per window
// about 60 s / 375 ms = 160 connection attempts, that is ~320 packets
// (SYN out, RST back; ~30 KB with WireGuard framing), then the slow
// backoff's one attempt per minute.
const (
	tnFastRetryMin = 250 * time.Millisecond
	tnFastRetryMax = 500 * time.Millisecond
	// tnFastWindow is how long quick failures are retried fast after the
	// peer came online or its agent went away. It covers a systemd
	// restart of the agent (RestartSec=5s) and an agent that starts well
	// after its tailscaled on boot.
	tnFastWindow = time.Minute
	// tnStaleFor: a candidate with a good advert gets a Problem only
	// after tnStaleAfter failures in a row over at least this long, so that
	// fast retries through an agent restart do not flag it.
	tnStaleFor = 3 * time.Second
)

// tnFastRetry is the wait before the next fetch after a quick failure in
// the fast window: uniform in [250 ms, 500 ms), so that many peers that
// came online together do not retry in step.
func tnFastRetry() time.Duration {
	return tnFastRetryMin + rand.N(tnFastRetryMax-tnFastRetryMin)
}

// tnQuickFailure reports whether a fetch error says the peer answered at
// once without an advert (see the constants above): connection refused or
// reset, by the kernel (ECONNREFUSED, ECONNRESET) or by a userspace
// netstack (gVisor's "connection was refused", as tsnet and tailscaled's
// userspace mode report a RST), or the connection closed before any
// answer (EOF). A timeout is never quick.
func tnQuickFailure(err error) bool {
	if err == nil || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return true
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil && strings.Contains(op.Err.Error(), "connection was refused") {
		return true
	}
	// net/http's unexported errServerClosedIdle: the peer closed a fresh
	// connection before answering (which of it or io.EOF the transport
	// reports depends on timing).
	return strings.Contains(err.Error(), "http: server closed idle connection")
}

// openFastWindow makes e's quick failures retry fast from now on, for
// tnFastWindow, and its next fetch due at once (unless one is running).
func (e *tnEntry) openFastWindow(now time.Time) {
	e.fastUntil = now.Add(tnFastWindow)
	e.slowFails = 0
	if !e.inflight && !e.polling {
		e.due = now
	}
}
