package health

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
)

// Probe is the cheap check between full ones: a fresh TCP connection and
// the SSH banner, nothing more. It catches exactly what stalls Nix (a dead
// or hung sshd, dropped packets) without starting a Nix process on the
// builder. OK means the banner came.
func (c *Checker) Probe(ctx context.Context, t Target) Result {
	start := time.Now()
	r, ok := c.probe(ctx, t.Addr)
	r.OK = ok
	r.When = start
	r.Took = time.Since(start)
	if ok {
		r.RTT = r.Took
	} else {
		c.Forget(t.Key)
	}
	return r
}

// Ping sends keepalive@openssh.com on the authenticated connection a full
// check left for t.Key: one encrypted round trip, the cheapest proof that
// the builder's host and the path to it are up (no TCP handshake, no sshd
// fork on the builder). ok is false when there is no usable connection or
// it was closed: then Probe. A ping that times out is a failure (packets
// dropped, host down) and drops the connection.
//
// A ping cannot see a dead or hung listening sshd (the session's own sshd
// process outlives it): the builder's agent reports that in its advert,
// and Probe, run less often, is the backstop.
func (c *Checker) Ping(ctx context.Context, t Target) (r Result, ok bool) {
	start := time.Now()
	e := c.entry(t.Key)
	if e == nil {
		return Result{}, false
	}
	e.mu.Lock()
	cl := e.client
	same := cl != nil && e.addr == t.Addr && e.user == t.User && t.HostKey != nil && e.hostKey == string(t.HostKey.Marshal())
	e.mu.Unlock()
	if !same {
		return Result{}, false
	}
	rtt, err := keepalive(ctx, cl, c.bannerTimeout())
	switch {
	case err == nil:
		return Result{OK: true, RTT: rtt, Reused: true, When: start, Took: time.Since(start)}, true
	case errors.Is(err, context.DeadlineExceeded):
		e.drop()
		r = fail(ReasonTimeout, "%s: no reply to an SSH keepalive within %s (packets dropped or host down)", t.Addr, c.bannerTimeout())
		r.When, r.Took = start, time.Since(start)
		return r, true
	default:
		// Closed: the builder or a middlebox ended the session; only a
		// fresh connection can tell.
		e.drop()
		return Result{}, false
	}
}

// SetOnLost registers f to be told, from another goroutine, when a cached
// connection that kernel TCP keepalive watches dies on its own; r says
// why (ConnectionLost when the keepalive got no answer). Call it before
// the first Check.
func (c *Checker) SetOnLost(f func(key string, r Result)) {
	c.mu.Lock()
	c.onLost = f
	c.mu.Unlock()
}

// Watched reports whether key has a cached connection that kernel TCP
// keepalive watches: then nothing needs to ping it, and its loss is
// reported to the SetOnLost function.
func (c *Checker) Watched(key string) bool {
	c.mu.Lock()
	e := c.conns[key]
	c.mu.Unlock()
	if e == nil {
		return false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.client != nil && e.watched
}

// watch waits for cl to end; if it ended on its own (not dropped or
// replaced by us), it reports the loss. keepalive says kernel TCP
// keepalive watches cl's socket (Watched); without it (a userspace
// connection) a closed session is still reported at once, and a silent
// one only at the next check.
func (c *Checker) watch(key string, e *cachedConn, cl *ssh.Client, keepalive bool) {
	e.mu.Lock()
	if e.client == cl {
		e.watched = keepalive
	}
	e.mu.Unlock()
	go func() {
		err := cl.Wait()
		e.mu.Lock()
		ours := e.client == cl
		if ours {
			e.client, e.watched = nil, false
		}
		e.mu.Unlock()
		c.mu.Lock()
		f := c.onLost
		c.mu.Unlock()
		if !ours || f == nil {
			return
		}
		_ = cl.Close()
		r := Result{When: time.Now(), Reason: ReasonUnreachable, Detail: fmt.Sprintf("SSH connection ended: %v", err)}
		if errors.Is(err, syscall.ETIMEDOUT) {
			r.Reason, r.ConnectionLost = ReasonTimeout, true
			r.Detail = "no answer to TCP keepalive for " + keepaliveUserTimeout.String() + " (packets dropped or host down)"
		}
		f(key, r)
	}()
}
