package health

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"
)

// Check checks one builder and says whether Nix can use it and, if not,
// why. It returns within the per-step timeouts (or when ctx is done).
func (c *Checker) Check(ctx context.Context, t Target) Result {
	start := time.Now()
	r := c.check(ctx, t)
	r.OK = r.Reason == ReasonOK
	r.When = start
	r.Took = time.Since(start)
	log := c.logger()
	if r.Reason == ReasonHostKeyMismatch {
		log.Warn("host key mismatch", "builder", t.Key, "addr", t.Addr, "detail", r.Detail)
	}
	log.Debug("check", "builder", t.Key, "addr", t.Addr, "ok", r.OK, "reason", string(r.Reason),
		"detail", r.Detail, "rtt", r.RTT, "took", r.Took, "reused", r.Reused)
	return r
}

func (c *Checker) check(ctx context.Context, t Target) Result {
	switch {
	case c.Signer == nil:
		return fail(ReasonInvalid, "no SSH identity (Checker.Signer) configured")
	case t.User == "":
		return fail(ReasonInvalid, "no SSH user for %s", t.Addr)
	case t.HostKey == nil:
		return fail(ReasonInvalid, "no host key to pin for %s", t.Addr)
	case t.Protocol != ProtocolSSHNG && t.Protocol != ProtocolSSH:
		return fail(ReasonInvalid, "unknown protocol %q (want ssh-ng or ssh)", t.Protocol)
	}
	e := c.entry(t.Key)
	if e == nil {
		return fail(ReasonInvalid, "checker closed")
	}
	select {
	case e.sem <- struct{}{}:
		defer func() { <-e.sem }()
	case <-ctx.Done():
		return fail(ReasonTimeout, "check cancelled while waiting for the previous check: %v", ctx.Err())
	}

	// Nix connects afresh for every build, and an established connection
	// outlives a dead or hung sshd: so a check on a cached connection
	// first makes a new one as far as the SSH banner. A check that
	// connects afresh anyway needs no probe (nor does sshd count a
	// connection that closed without authenticating against our address,
	// see PerSourcePenalties).
	if cl, fp := e.reusable(t, c.Signer, c.RefreshChecks, c.refreshAfter()); cl != nil {
		if r, ok := c.probe(ctx, t.Addr); !ok {
			e.drop()
			return r
		}
		r := c.session(ctx, cl, t)
		r.Reused = true
		r.PresentedKeyFingerprint = fp
		if r.Reason == ReasonOK {
			return r
		}
		e.drop()
		if ctx.Err() != nil || r.Reason == ReasonNotTrusted || r.Reason == ReasonNixNotFound {
			return r // cancelled, or a verdict of the remote itself
		}
		// The cached connection may simply be stale (a NAT dropped it):
		// the verdict comes from a new connection.
		c.logger().Debug("check on reused connection failed, retrying on a new one",
			"builder", t.Key, "reason", string(r.Reason), "detail", r.Detail)
	}
	cl, r := c.connect(ctx, t)
	if cl == nil {
		return r
	}
	fp, watched := r.PresentedKeyFingerprint, r.watched
	// On a new connection the Nix handshake goes first, right after the
	// login: sshd answers the first request after authentication only
	// once its session setup is done (~45 ms here), so a keepalive first
	// would only add a round trip to the time a joining builder waits.
	// The keepalive after the handshake, on a connection now warm, is the
	// RTT. Both are bounded by Timeout.
	r = c.nixHandshake(ctx, cl, t)
	if r.Reason == ReasonOK {
		rtt, err := keepalive(ctx, cl, c.timeout())
		switch {
		case err == nil:
			r.RTT = rtt
		case isTimeout(err) || ctx.Err() != nil:
			r = fail(ReasonTimeout, "SSH connection to %s: %v", t.Addr, err)
		default:
			r = fail(ReasonUnreachable, "SSH connection to %s: %v", t.Addr, err)
		}
	}
	r.PresentedKeyFingerprint = fp
	if r.Reason != ReasonOK {
		_ = cl.Close()
		return r
	}
	e.keep(cl, t, c.Signer, fp)
	c.watch(t.Key, e, cl, watched)
	return r
}

func (c *Checker) refreshAfter() time.Duration {
	if c.RefreshAfter > 0 {
		return c.RefreshAfter
	}
	return DefaultRefreshAfter
}

func fail(reason Reason, format string, args ...any) Result {
	return Result{Reason: reason, Detail: fmt.Sprintf(format, args...)}
}

// reusable returns the cached client if it may serve this check, and
// closes it if it may not.
func (e *cachedConn) reusable(t Target, id ssh.Signer, maxUses int, maxAge time.Duration) (*ssh.Client, string) {
	if maxUses == 0 {
		maxUses = DefaultRefreshChecks
	}
	e.mu.Lock()
	cl := e.client
	if cl == nil {
		e.mu.Unlock()
		return nil, ""
	}
	same := e.addr == t.Addr && e.user == t.User &&
		e.hostKey == string(t.HostKey.Marshal()) &&
		e.identity == string(id.PublicKey().Marshal())
	if !same || e.uses >= maxUses || time.Since(e.created) >= maxAge {
		e.client = nil
		e.mu.Unlock()
		_ = cl.Close()
		return nil, ""
	}
	e.uses++
	fp := e.presented
	e.mu.Unlock()
	return cl, fp
}

// keep caches a client that passed a full check.
func (e *cachedConn) keep(cl *ssh.Client, t Target, id ssh.Signer, presented string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.gone {
		_ = cl.Close()
		return
	}
	if e.client != nil && e.client != cl {
		_ = e.client.Close()
	}
	e.client, e.watched = cl, false
	e.addr, e.user = t.Addr, t.User
	e.hostKey = string(t.HostKey.Marshal())
	e.identity = string(id.PublicKey().Marshal())
	e.presented = presented
	e.created = time.Now()
	e.uses = 0
}

// probeIdent is what the probe says before reading the server's banner,
// so that sshd logs a client that went away rather than a protocol error.
const probeIdent = "SSH-2.0-nixrb-discover_probe\r\n"

// probe makes a fresh TCP connection and reads the SSH banner: cheap, and
// exactly what stalls Nix when sshd is dead or hung.
func (c *Checker) probe(ctx context.Context, addr string) (Result, bool) {
	dctx, cancel := context.WithTimeout(ctx, c.timeout())
	defer cancel()
	conn, err := c.dial(dctx, addr)
	if err != nil {
		return dialFailure(ctx, dctx, addr, c.timeout(), err), false
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { expire(conn) })
	defer stop()
	bt := c.bannerTimeout()
	_ = conn.SetDeadline(time.Now().Add(bt))
	_, _ = conn.Write([]byte(probeIdent))
	banner, err := readBanner(conn)
	switch {
	case err == nil:
		return Result{}, true
	case ctx.Err() != nil:
		return fail(ReasonTimeout, "check cancelled: %v", ctx.Err()), false
	case isTimeout(err):
		r := Result{}
		r.Reason, r.Detail = bannerTimeout(addr, bt)
		return r, false
	case banner != "":
		return fail(ReasonUnreachable, "%s is not an SSH server: it sent %q", addr, banner), false
	default:
		return fail(ReasonUnreachable, "%s closed the connection before the SSH banner: %v", addr, err), false
	}
}

// readBanner reads up to the "SSH-" identification line (RFC 4253 4.2
// allows other lines before it), bounded in lines and bytes. On a
// non-SSH answer it returns what it read and an error.
func readBanner(conn net.Conn) (string, error) {
	br := bufio.NewReaderSize(conn, 256)
	var first string
	for range 16 {
		line, err := br.ReadSlice('\n')
		if bytes.HasPrefix(line, []byte("SSH-")) && err == nil {
			return string(bytes.TrimRight(line, "\r\n")), nil
		}
		if first == "" {
			first = string(line)
		}
		if err != nil {
			return first, err
		}
	}
	return first, errors.New("no SSH identification line")
}

// expire sets a deadline in the past: pending I/O on conn fails at once.
func expire(conn net.Conn) { _ = conn.SetDeadline(time.Unix(1, 0)) }

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

func dialFailure(ctx, dctx context.Context, addr string, d time.Duration, err error) Result {
	switch {
	case ctx.Err() != nil:
		return fail(ReasonTimeout, "check cancelled: %v", ctx.Err())
	case dctx.Err() != nil || isTimeout(err):
		return fail(ReasonTimeout, "connect to %s: no answer within %s", addr, d)
	default:
		return fail(ReasonUnreachable, "connect to %s: %v", addr, err)
	}
}

func bannerTimeout(addr string, d time.Duration) (Reason, string) {
	return ReasonTimeout, fmt.Sprintf("%s accepted the connection but sent no SSH banner within %s (sshd hung or overloaded)", addr, d)
}

// bannerConn gives the server BannerTimeout to start talking (set by the
// caller) and, from its first byte, until deadline for the rest of the
// SSH handshake.
type bannerConn struct {
	net.Conn
	ctx      context.Context // once done, the deadline stays in the past
	deadline time.Time
	started  atomic.Bool
}

func (b *bannerConn) Read(p []byte) (int, error) {
	n, err := b.Conn.Read(p)
	if n > 0 && b.started.CompareAndSwap(false, true) && b.ctx.Err() == nil {
		_ = b.Conn.SetDeadline(b.deadline)
	}
	return n, err
}

var errHostKeyMismatch = errors.New("host key mismatch")

// connect makes a new authenticated SSH connection. On failure the client
// is nil and the Result says why.
func (c *Checker) connect(ctx context.Context, t Target) (*ssh.Client, Result) {
	d := c.timeout()
	dctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	conn, err := c.dial(dctx, t.Addr)
	if err != nil {
		return nil, dialFailure(ctx, dctx, t.Addr, d, err)
	}
	stop := context.AfterFunc(ctx, func() { expire(conn) })
	defer stop()
	bt := c.bannerTimeout()
	bc := &bannerConn{Conn: conn, ctx: ctx, deadline: time.Now().Add(d)}
	_ = conn.SetDeadline(time.Now().Add(bt))

	var presented atomic.Pointer[string]
	want := t.HostKey.Marshal()
	cfg := &ssh.ClientConfig{
		User: t.User,
		Auth: []ssh.AuthMethod{ssh.PublicKeys(c.Signer)},
		HostKeyCallback: func(_ string, _ net.Addr, key ssh.PublicKey) error {
			fp := ssh.FingerprintSHA256(key)
			presented.Store(&fp)
			if !bytes.Equal(key.Marshal(), want) {
				return errHostKeyMismatch
			}
			return nil
		},
		HostKeyAlgorithms: hostKeyAlgorithms(t.HostKey),
		ClientVersion:     "SSH-2.0-nixrb-discover",
	}
	sc, chans, reqs, err := ssh.NewClientConn(bc, t.Addr, cfg)
	var r Result
	if fp := presented.Load(); fp != nil {
		r.PresentedKeyFingerprint = *fp
	}
	if err != nil {
		_ = conn.Close()
		switch {
		case isTimeout(err) && ctx.Err() == nil && !bc.started.Load():
			r.Reason, r.Detail = bannerTimeout(t.Addr, bt)
		default:
			r.Reason, r.Detail = c.classifySSHError(ctx, t, d, r.PresentedKeyFingerprint, err)
		}
		return nil, r
	}
	_ = conn.SetDeadline(time.Time{})
	r.watched = watchTCP(conn)
	return ssh.NewClient(sc, chans, reqs), r
}

func (c *Checker) classifySSHError(ctx context.Context, t Target, d time.Duration, presented string, err error) (Reason, string) {
	msg := err.Error()
	switch {
	case errors.Is(err, errHostKeyMismatch):
		return ReasonHostKeyMismatch, fmt.Sprintf(
			"%s presented host key %s but the pinned key is %s: the builder was re-keyed, or this is not the builder",
			t.Addr, presented, ssh.FingerprintSHA256(t.HostKey))
	case ctx.Err() != nil:
		return ReasonTimeout, fmt.Sprintf("check cancelled: %v", ctx.Err())
	case isTimeout(err):
		return ReasonTimeout, fmt.Sprintf("SSH handshake with %s did not finish within %s", t.Addr, d)
	case strings.Contains(msg, "unable to authenticate"):
		return ReasonAuthRefused, fmt.Sprintf(
			"%s refused key %s for user %q: add it to that user's authorized keys on the builder",
			t.Addr, ssh.FingerprintSHA256(c.Signer.PublicKey()), t.User)
	default:
		return ReasonUnreachable, fmt.Sprintf("SSH handshake with %s: %v", t.Addr, err)
	}
}

// hostKeyAlgorithms asks the server for the pinned key's type, as OpenSSH
// does for a host in known_hosts (and so Nix, which writes field 8 into a
// known_hosts file): a server with several host keys presents that one.
func hostKeyAlgorithms(k ssh.PublicKey) []string {
	if k.Type() == ssh.KeyAlgoRSA {
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
	}
	return []string{k.Type()}
}

// keepalive sends keepalive@openssh.com and returns its round trip. On
// timeout or cancellation it closes the client, which unblocks the request.
func keepalive(ctx context.Context, cl *ssh.Client, d time.Duration) (time.Duration, error) {
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		_, _, err := cl.SendRequest("keepalive@openssh.com", true, nil)
		done <- err
	}()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case err := <-done:
		return time.Since(start), err
	case <-timer.C:
		_ = cl.Close()
		<-done
		return 0, fmt.Errorf("no keepalive reply within %s: %w", d, context.DeadlineExceeded)
	case <-ctx.Done():
		_ = cl.Close()
		<-done
		return 0, ctx.Err()
	}
}

// session measures the RTT with a keepalive and runs the Nix handshake in
// a new session of cl.
func (c *Checker) session(ctx context.Context, cl *ssh.Client, t Target) Result {
	rtt, err := keepalive(ctx, cl, c.timeout())
	if err != nil {
		if isTimeout(err) || ctx.Err() != nil {
			return fail(ReasonTimeout, "SSH connection to %s: %v", t.Addr, err)
		}
		return fail(ReasonUnreachable, "SSH connection to %s: %v", t.Addr, err)
	}
	r := c.nixHandshake(ctx, cl, t)
	r.RTT = rtt
	return r
}
