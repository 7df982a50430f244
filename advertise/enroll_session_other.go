//go:build !linux

package advertise

import (
	"net"
	"net/http"

	"tailscale.com/tailcfg"
)

// SessionPath is the URL path ssh-gate asks on the enrolment socket (the
// session check needs Linux's SO_PEERCRED: elsewhere it refuses).
const SessionPath = "/v1/session"

type sessions struct{}

func (ss *sessions) live() bool                                          { return false }
func (ss *sessions) end(map[tailcfg.StableNodeID]bool) ([]int, []string) { return nil, nil }
func peerUID(net.Conn) (uint32, bool)                                    { return 0, false }
func (e *Enroller) serveSession(w http.ResponseWriter, r *http.Request) {
	writeJSONError(w, http.StatusNotImplemented, "session checks need Linux")
}
