//go:build linux

package advertise

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nixrb-discover/nixrb-discover/wire"
	"golang.org/x/sys/unix"
	"tailscale.com/tailcfg"
)

// SessionPath is the URL path ssh-gate asks, on the enrolment socket,
// whether the key its session logged in with is still valid. The agent
// remembers the asking process (ssh-gate, which then becomes nix-daemon
// or nix-store) and ends it once the key's node loses its tag or leaves.
const SessionPath = "/v1/session"

// maxSessions bounds the sessions the agent remembers.
const maxSessions = 4096

// session is one ssh-gate process the agent may have to end.
type session struct {
	node  tailcfg.StableNodeID
	pid   int
	start string // /proc/PID/stat starttime: the PID is not reused
}

// sessions are the live ssh-gate sessions, by PID.
type sessions struct {
	mu  sync.Mutex
	all map[int]session
}

// peerCred returns the unix socket peer's credentials, or nil.
func peerCred(c net.Conn) *unix.Ucred {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil
	}
	var cred *unix.Ucred
	raw.Control(func(fd uintptr) {
		cred, _ = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	return cred
}

// peerUID returns the unix socket peer's user.
func peerUID(c net.Conn) (uint32, bool) {
	if cred := peerCred(c); cred != nil {
		return cred.Uid, true
	}
	return 0, false
}

// procStart returns field 22 (starttime) of /proc/PID/stat, or "".
func procStart(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return ""
	}
	return f[19]
}

// serveSession answers ssh-gate: 200 if the key named by ?key= is valid
// now (and remembers the asking process for its node), 403 if not.
func (e *Enroller) serveSession(w http.ResponseWriter, r *http.Request) {
	fp := r.URL.Query().Get("key")
	var cred *unix.Ucred
	if c, ok := r.Context().Value(connKey{}).(net.Conn); ok {
		cred = peerCred(c)
	}
	log := e.logger()
	if fp == "" || len(fp) > 64 || cred == nil {
		writeJSONError(w, http.StatusBadRequest, "session: want ?key=FINGERPRINT over the unix socket")
		return
	}
	rctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	keys, err := e.ValidKeys(rctx)
	if err != nil {
		writeJSONError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	for _, k := range keys {
		pk, err := wire.ParseEnrollKey(k.PublicKey)
		if err != nil || KeyFingerprint(pk) != fp {
			continue
		}
		start := procStart(int(cred.Pid))
		if start == "" || !e.sess.add(session{node: k.NodeID, pid: int(cred.Pid), start: start}) {
			writeJSONError(w, http.StatusServiceUnavailable, "session: too many sessions")
			return
		}
		log.Debug("session admitted", "node", k.NodeName, "node_id", k.NodeID, "pid", cred.Pid)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, "{\"node\":%q}\n", k.NodeName)
		return
	}
	log.Warn("session refused", "fingerprint", "SHA256:"+fp, "pid", cred.Pid, "reason", "key not valid now")
	writeJSONError(w, http.StatusForbidden, "refused: this key is no longer valid (its node left the tailnet or lost its tag)")
}

// add remembers s, dropping sessions whose process is gone; false when
// full.
func (ss *sessions) add(s session) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.all == nil {
		ss.all = map[int]session{}
	}
	if len(ss.all) >= maxSessions {
		for pid, o := range ss.all {
			if procStart(pid) != o.start {
				delete(ss.all, pid)
			}
		}
		if len(ss.all) >= maxSessions {
			return false
		}
	}
	ss.all[s.pid] = s
	return true
}

// live reports whether any session is remembered.
func (ss *sessions) live() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return len(ss.all) > 0
}

// end kills the sessions of nodes valid does not hold (SIGKILL: the
// process is nix-daemon or nix-store by now, and the key is revoked) and
// forgets those whose process is gone. It returns the PIDs it killed and
// those it could not (without CAP_KILL, a process of the builder user).
func (ss *sessions) end(valid map[tailcfg.StableNodeID]bool) (killed []int, failed []string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for pid, s := range ss.all {
		if procStart(pid) != s.start {
			delete(ss.all, pid)
			continue
		}
		if valid[s.node] {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err == nil {
			killed = append(killed, pid)
		} else {
			failed = append(failed, fmt.Sprintf("%d: %v", pid, err))
		}
		delete(ss.all, pid)
	}
	return killed, failed
}
