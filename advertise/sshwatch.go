package advertise

import (
	"fmt"
	"time"
)

// DefaultSSHWatchInterval is how often an [SSHWatch] looks at sshd.
const DefaultSSHWatchInterval = 250 * time.Millisecond

// SSHWatch watches this builder's own sshd, cheaply, so that the agent can
// publish a draining advert the moment sshd stops accepting connections
// (Nix stalls on a builder whose sshd is hung, and waits once per build on
// one that is dead) instead of each client finding out by probing.
//
// It asks the kernel for the listening sockets (by sock_diag netlink, or
// from NetDir/tcp and tcp6 when NetDir or ProcRoot is set): no connection
// is made, so sshd forks nothing. A check costs ~35 us (hot) to ~300 us
// (an idle process waking cold); see BenchmarkSSHWatchCheck and
// e2e.BenchmarkSSHWatchIdle. Three failures are seen:
//
//   - not listening: no socket in state LISTEN on Port (sshd died);
//   - stopped: the process holding the listening socket is stopped
//     (SIGSTOP, or stopped by a tracer), so nothing accepts;
//   - stalled: the listening socket's accept queue (rx_queue) stayed
//     above zero across two consecutive checks: connections arrive and
//     nobody takes them (sshd hung in some other way).
//
// The owner of the listening socket is found by scanning ProcRoot/*/fd for
// the socket's inode, once per new inode (sshd restarted), and cached. That
// needs ptrace-read access to sshd: root with its capabilities, or
// CAP_SYS_PTRACE. Root without capabilities (CapabilityBoundingSet= empty,
// as the shipped systemd unit runs the agent) is refused: the stopped check
// is then off ([SSHState].PIDErr says why) and a stopped sshd is seen as
// stalled once a client's connection waits in its accept queue.
//
// sshd must listen in the agent's network namespace (NetDir aside).
//
// The zero value (with Port set) watches this machine. Set the fields
// before the first Check; an SSHWatch is not safe for concurrent use.
// It is implemented on Linux; elsewhere Check reports [SSHUnknown].
type SSHWatch struct {
	// Port is sshd's TCP port (DefaultSSHPort when 0).
	Port int
	// ProcRoot is the procfs mount ("/proc").
	ProcRoot string
	// NetDir is where the tcp and tcp6 tables are read (ProcRoot+"/net",
	// which is this process's network namespace). Tests may point it at
	// /proc/<pid>/net of a process in another namespace.
	NetDir string
	// Interval is how often the agent calls Check
	// (DefaultSSHWatchInterval when 0).
	Interval time.Duration
	// PidFile is sshd's pid file, used to find its process when the fds
	// of other processes cannot be read (DefaultSSHPidFile when empty;
	// "-" turns the fallback off).
	PidFile string

	state sshWatchState // OS-specific cache: owners, previous queues
}

// DefaultSSHPidFile is where Debian's and NixOS's sshd write their PID.
const DefaultSSHPidFile = "/run/sshd.pid"

func (w *SSHWatch) pidFile() string {
	switch w.PidFile {
	case "":
		return DefaultSSHPidFile
	case "-":
		return ""
	}
	return w.PidFile
}

// SSHStatus is what an [SSHWatch] found out about sshd.
type SSHStatus int

// The states of sshd an SSHWatch tells apart.
const (
	// SSHUp: sshd listens on the port, its process runs, it accepts.
	SSHUp SSHStatus = iota
	// SSHNotListening: nothing listens on the port.
	SSHNotListening
	// SSHStopped: the process holding the listening socket is stopped.
	SSHStopped
	// SSHStalled: connections wait in the accept queue and are not taken.
	SSHStalled
	// SSHUnknown: the socket tables cannot be read (see SSHState.Err).
	// It counts as healthy: the watch only speeds up what clients find
	// out by probing, and must not take a working builder out.
	SSHUnknown
)

// SSHState is the outcome of one [SSHWatch.Check].
type SSHState struct {
	Status SSHStatus
	// Port is the port that was checked.
	Port int
	// PID is the process holding the listening socket, 0 when unknown.
	PID int
	// PIDErr says why PID is 0 while sshd listens (the stopped check is
	// then off), nil otherwise.
	PIDErr error
	// Err says why Status is SSHUnknown.
	Err error
}

// Healthy reports whether clients may send builds here as far as sshd is
// concerned: up, or unknown.
func (s SSHState) Healthy() bool { return s.Status == SSHUp || s.Status == SSHUnknown }

// String says the state in words, as the agent logs it.
func (s SSHState) String() string {
	switch s.Status {
	case SSHUp:
		if s.PID > 0 {
			return fmt.Sprintf("sshd (pid %d) is listening on port %d", s.PID, s.Port)
		}
		return fmt.Sprintf("sshd is listening on port %d", s.Port)
	case SSHNotListening:
		return fmt.Sprintf("sshd is not listening on port %d", s.Port)
	case SSHStopped:
		return fmt.Sprintf("sshd (pid %d) is stopped", s.PID)
	case SSHStalled:
		return "sshd is not accepting connections"
	default:
		return fmt.Sprintf("cannot tell whether sshd is up: %v", s.Err)
	}
}

func (w *SSHWatch) port() int {
	if w.Port > 0 {
		return w.Port
	}
	return DefaultSSHPort
}

func (w *SSHWatch) interval() time.Duration {
	if w.Interval > 0 {
		return w.Interval
	}
	return DefaultSSHWatchInterval
}

// sshHealth is the agent's view of its SSHWatch: whether sshd is
// unhealthy (the advert then says draining) and which notes were logged.
// It decides what the agent logs; the agent only wires it in.
//
// The watch arms once something has been seen listening on the port:
// until then "not listening" is not held against the builder, because
// SSH may be served without a listening socket in this namespace
// (Tailscale SSH answers port 22 inside tailscaled, a container's sshd
// listens in its own namespace), and a watch that drained such a builder
// forever would take a working builder out. A builder whose sshd is
// still starting is found dead by the clients' probes, as without the
// watch.
type sshHealth struct {
	watch   *SSHWatch
	armed   bool // something listened on the port once
	bad     bool // sshd unhealthy: the advert says draining
	pidErr  bool // the "owner unknown" note was logged
	unknown bool // the "cannot tell" note was logged
	waiting bool // the "nothing listens yet" note was logged
}

// draining is the advertised draining flag: the user's, or sshd's
// (nil h: no watch).
func (h *sshHealth) draining(user bool) bool { return user || h != nil && h.bad }

// check runs one Check and reports whether the health (bad) changed, with
// a log line for the change or for a note worth saying once.
func (h *sshHealth) check(log logger) (changed bool) {
	st := h.watch.Check()
	if st.Status == SSHUnknown && !h.unknown {
		log.Warn("cannot watch sshd: clients find a dead sshd by probing only", "err", st.Err)
	}
	h.unknown = st.Status == SSHUnknown
	if st.Status == SSHUp && st.PIDErr != nil && !h.pidErr {
		log.Warn("cannot find sshd's process: a stopped sshd is seen only once clients connect", "err", st.PIDErr)
		h.pidErr = true
	}
	switch {
	case st.Status == SSHUp || st.Status == SSHStopped || st.Status == SSHStalled:
		h.armed = true
	case st.Status == SSHNotListening && !h.armed:
		if !h.waiting {
			log.Warn("nothing listens on the SSH port yet: watching sshd from when it does (with Tailscale SSH, use --watch-sshd=false)", "port", st.Port)
			h.waiting = true
		}
		return false
	}
	bad := !st.Healthy()
	if bad == h.bad {
		return false
	}
	h.bad = bad
	if bad {
		log.Warn("sshd unhealthy, draining: " + st.String())
	} else {
		log.Info("sshd healthy again", "sshd", st.String())
	}
	return true
}

// logger is the part of *slog.Logger that sshHealth uses.
type logger interface {
	Warn(msg string, args ...any)
	Info(msg string, args ...any)
}
