package health

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"
)

// Remote commands, exactly as Nix runs them for a build.
const (
	workerCommand = "nix-daemon --stdio"
	serveCommand  = "nix-store --serve --write"
)

// maxKeptStderr is how much of the remote's stderr a check keeps.
const maxKeptStderr = 4 << 10

// nixHandshake starts the remote Nix program in a new session, runs the
// handshake, then closes its stdin so it exits as it does after a build.
// A watchdog closes the whole client if the step outlives the timeout or
// ctx: a hung remote cannot hang the check.
func (c *Checker) nixHandshake(ctx context.Context, cl *ssh.Client, t Target) Result {
	cmd, prog := workerCommand, "nix-daemon"
	if t.Protocol == ProtocolSSH {
		cmd, prog = serveCommand, "nix-store"
	}
	d := c.timeout()
	var cut atomic.Bool
	timer := time.AfterFunc(d, func() { cut.Store(true); _ = cl.Close() })
	defer timer.Stop()
	stop := context.AfterFunc(ctx, func() { cut.Store(true); _ = cl.Close() })
	defer stop()
	timedOut := func(what string) Result {
		if ctx.Err() != nil {
			return fail(ReasonTimeout, "check cancelled during %s: %v", what, ctx.Err())
		}
		return fail(ReasonTimeout, "%s on %s: no answer within %s", what, t.Addr, d)
	}

	sess, err := cl.NewSession()
	if err != nil {
		if cut.Load() {
			return timedOut("opening an SSH session")
		}
		return fail(ReasonUnreachable, "open SSH session on %s: %v", t.Addr, err)
	}
	defer sess.Close()
	stdin, err1 := sess.StdinPipe()
	stdout, err2 := sess.StdoutPipe()
	if err := errors.Join(err1, err2); err != nil {
		return fail(ReasonUnreachable, "set up SSH session on %s: %v", t.Addr, err)
	}
	stderr := &capBuffer{max: maxKeptStderr}
	sess.Stderr = stderr
	if err := sess.Start(cmd); err != nil {
		if cut.Load() {
			return timedOut("starting " + cmd)
		}
		return fail(ReasonUnreachable, "start %q on %s: %v", cmd, t.Addr, err)
	}

	var r Result
	var herr error
	if t.Protocol == ProtocolSSH {
		var h serveHello
		h, herr = serveHandshake(stdin, stdout)
		r.ProtocolVersion = formatProtoVersion(h.Version)
	} else {
		var h workerHello
		h, herr = workerHandshake(stdin, stdout)
		r.ProtocolVersion = formatProtoVersion(h.DaemonVersion)
		r.NixVersion = h.NixVersion
		r.Trusted = h.Trusted
	}
	if herr != nil {
		r.ProtocolVersion, r.NixVersion, r.Trusted = "", "", TrustedUnknown
	}
	// From here every wait has its own bound; a late watchdog must not
	// close the connection of a check that passed.
	timer.Stop()
	// EOF on stdin ends nix-daemon and nix-store --serve cleanly; wait
	// briefly for the exit status (it tells "command not found").
	_ = stdin.Close()
	grace := min(d, time.Second)
	rest := make(chan []byte, 1)
	go func() {
		// The next bytes complete a mismatch report; the rest is drained
		// so that the remote never blocks on a full window.
		buf := make([]byte, mismatchPrefix)
		n, _ := io.ReadFull(stdout, buf)
		rest <- buf[:n]
		_, _ = io.Copy(io.Discard, io.LimitReader(stdout, maxHelloBytes))
	}()
	if herr == nil {
		// The handshake proved what Nix needs; the exit status only
		// explains a failure, so a passed check does not wait for it:
		// the remote program ends on the EOF just sent, and the deferred
		// Close ends the session.
		if t.Protocol != ProtocolSSH && c.MinDaemonProtocol > 0 && !protoAtLeast(r.ProtocolVersion, c.MinDaemonProtocol) {
			r.Reason = ReasonDaemonError
			r.Detail = fmt.Sprintf("the nix-daemon on %s speaks worker protocol %s; the local Nix speaks ssh-ng only to 1.%d "+
				"and later: upgrade the builder's Nix, or have it advertise ssh:// (nix-store --serve)",
				t.Addr, r.ProtocolVersion, c.MinDaemonProtocol)
			return r
		}
		if r.Trusted == TrustedNo && !c.UntrustedBuilds {
			r.Reason = ReasonNotTrusted
			r.Detail = fmt.Sprintf("the nix-daemon on %s does not trust user %q: Nix cannot build "+
				"input-addressed derivations there; add %q to trusted-users in the builder's nix.conf",
				t.Addr, t.User, t.User)
		}
		return r
	}
	var me *mismatchError
	if errors.As(herr, &me) && len(me.Got) > 0 && len(me.Got) < mismatchPrefix {
		select {
		case more := <-rest:
			me.Got = append(me.Got, more[:min(len(more), mismatchPrefix-len(me.Got))]...)
		case <-time.After(grace):
		}
	}
	exit := waitExit(sess, grace)
	text := stderr.String()
	switch {
	case exit == 127 || commandNotFound(text, prog):
		return fail(ReasonNixNotFound, "%s is not on the non-interactive PATH of %s@%s%s: make Nix "+
			"available to non-interactive SSH sessions there (e.g. via the login environment or sshd SetEnv)",
			prog, t.User, t.Addr, stderrNote(text))
	case cut.Load():
		r := timedOut(cmd + " handshake")
		if strings.Contains(strings.ToLower(text), "tailscale ssh requires an additional check") {
			r.Detail += ": a Tailscale SSH \"check\" rule waits for an interactive login; " +
				"use an \"accept\" rule for this user"
		}
		r.Detail += stderrNote(text)
		return r
	}
	var re *remoteError
	switch {
	case errors.As(herr, &re):
		return fail(ReasonDaemonError, "%s on %s reported: %s", cmd, t.Addr, re.Msg)
	case errors.As(herr, &me) && len(me.Got) > 0:
		return fail(ReasonDaemonError, "%s on %s: %v (does a shell startup file print to stdout?)%s",
			cmd, t.Addr, herr, stderrNote(text))
	default:
		return fail(ReasonDaemonError, "%s on %s: %v%s%s", cmd, t.Addr, herr, exitNote(exit), stderrNote(text))
	}
}

// waitExit waits up to d for the remote command's exit status; -1 when
// unknown.
func waitExit(sess *ssh.Session, d time.Duration) int {
	done := make(chan error, 1)
	go func() { done <- sess.Wait() }()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case err := <-done:
		var ee *ssh.ExitError
		switch {
		case err == nil:
			return 0
		case errors.As(err, &ee):
			return ee.ExitStatus()
		}
		return -1
	case <-timer.C:
		return -1
	}
}

// commandNotFound recognises the shells' "command not found" for prog:
// bash ("bash: line 1: nix-daemon: command not found"), dash/sh
// ("sh: 1: nix-daemon: not found"), zsh ("zsh:1: command not found:
// nix-daemon"), fish ("Unknown command: nix-daemon"), tcsh.
func commandNotFound(stderr, prog string) bool {
	s := strings.ToLower(stderr)
	for _, pat := range []string{
		prog + ": command not found",
		prog + ": not found",
		"command not found: " + prog,
		"unknown command: " + prog,
	} {
		if strings.Contains(s, pat) {
			return true
		}
	}
	return false
}

func stderrNote(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return ""
	}
	const max = 512
	if len(s) > max {
		s = s[:max] + "…"
	}
	return fmt.Sprintf(" [remote stderr: %q]", s)
}

func exitNote(code int) string {
	if code < 0 {
		return ""
	}
	return fmt.Sprintf(" [exit status %d]", code)
}

// capBuffer keeps the first max bytes written to it and drops the rest.
// It is written by the SSH library's copy goroutine and read by the check.
type capBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (c *capBuffer) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if room := c.max - len(c.b); room > 0 {
		c.b = append(c.b, p[:min(len(p), room)]...)
	}
	return len(p), nil
}

func (c *capBuffer) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return string(c.b)
}

// protoAtLeast reports whether a "1.N" protocol version is 1.min or newer.
func protoAtLeast(v string, min int) bool {
	major, minor, ok := strings.Cut(v, ".")
	if !ok {
		return false
	}
	ma, err1 := strconv.Atoi(major)
	mi, err2 := strconv.Atoi(minor)
	if err1 != nil || err2 != nil {
		return false
	}
	return ma > 1 || ma == 1 && mi >= min
}
