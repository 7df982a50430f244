package advertise

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/nixrb-discover/nixrb-discover/internal/unixhttp"
	"github.com/nixrb-discover/nixrb-discover/wire"
	"golang.org/x/crypto/ssh"
	"tailscale.com/client/local"
	"tailscale.com/client/tailscale/apitype"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/tailcfg"
)

// EnrollLocalAPI is the part of the tailscaled LocalAPI an Enroller uses
// to tell whether enrolled nodes are still on the tailnet with an allowed
// tag or capability. *local.Client satisfies it.
type EnrollLocalAPI interface {
	Status(ctx context.Context) (*ipnstate.Status, error)
	WhoIs(ctx context.Context, remoteAddr string) (*apitype.WhoIsResponse, error)
}

var _ EnrollLocalAPI = (*local.Client)(nil)

// AuthorizedKeysPath is the URL path of the valid-key list on the socket.
const AuthorizedKeysPath = "/v1/authorized-keys"

// maxAuthorizedKeysAnswer bounds the socket's answer as a client reads it.
const maxAuthorizedKeysAnswer = 4 << 20

// expiryAuditInterval is how often ServeSocket re-checks the enrolled
// nodes on its own.
const expiryAuditInterval = time.Minute

// AuthorizedKeys is the socket's answer: the builder user and the keys
// that may log in as it now.
type AuthorizedKeys struct {
	User string   `json:"user"`
	Keys []string `json:"keys"`
	// Entries are Keys again, each with the source addresses it may log
	// in from (its node's tailnet addresses, then ExtraFrom).
	Entries []AuthorizedEntry `json:"entries"`
}

// AuthorizedEntry is one key that may log in and where from.
type AuthorizedEntry struct {
	Key  string   `json:"key"`
	From []string `json:"from"`
}

// connKey carries the socket connection in a request's context (for its
// peer's credentials).
type connKey struct{}

// ValidKeys returns the stored keys whose node is on the tailnet now and
// carries an allowed tag or capability, reusing its answer for CacheFor.
// A key that stops being valid is logged as expired (once); it stays in
// the store and comes back if its node regains the tag. Without a
// LocalAPI, or when the LocalAPI fails, it returns an error (deny).
func (e *Enroller) ValidKeys(ctx context.Context) ([]EnrolledKey, error) {
	e.vmu.Lock()
	defer e.vmu.Unlock()
	cache := e.CacheFor
	if cache <= 0 {
		cache = DefaultEnrollCache
	}
	now := e.clock()
	if !e.validAt.IsZero() && now.Sub(e.validAt) < cache && !now.Before(e.validAt) && e.generation() == e.validGen {
		return e.validKeys, nil
	}
	if e.LocalAPI == nil {
		return nil, errors.New("enroll: no LocalAPI to check nodes with")
	}
	keys, gen, err := e.keysGen()
	if err != nil {
		return nil, err
	}
	st, err := e.LocalAPI.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("local api status: %w", err)
	}
	peers := map[tailcfg.StableNodeID]*ipnstate.PeerStatus{}
	for _, ps := range st.Peer {
		peers[ps.ID] = ps
	}
	// A public key two nodes hold (a store from before keys were unique)
	// is valid for neither: it would stay usable while either is tagged.
	holders := map[string][]EnrolledKey{}
	for _, k := range keys {
		holders[k.PublicKey] = append(holders[k.PublicKey], k)
	}
	log := e.logger()
	was := e.wasValid
	e.wasValid = map[tailcfg.StableNodeID]bool{}
	var valid []EnrolledKey
	invalidNow := map[tailcfg.StableNodeID]bool{} // the value: gone or expired
	for _, k := range keys {
		ps := peers[k.NodeID]
		reason := e.invalid(ctx, ps)
		if reason == "" && len(holders[k.PublicKey]) > 1 {
			var others []string
			for _, o := range holders[k.PublicKey] {
				if o.NodeID != k.NodeID {
					others = append(others, o.NodeName)
				}
			}
			reason = "the same key is enrolled by " + strings.Join(others, ", ")
		}
		ok := reason == ""
		e.wasValid[k.NodeID] = ok
		if ok {
			for _, a := range ps.TailscaleIPs {
				k.Addrs = append(k.Addrs, a.String())
			}
			valid = append(valid, k)
		} else {
			invalidNow[k.NodeID] = ps == nil || ps.Expired
		}
		prev, seen := was[k.NodeID]
		switch {
		case !ok && (prev || !seen):
			fp := ""
			if pk, err := wire.ParseEnrollKey(k.PublicKey); err == nil {
				fp = ssh.FingerprintSHA256(pk)
			}
			log.Warn("enrolled key expired", "node", k.NodeName, "node_id", k.NodeID, "fingerprint", fp, "reason", reason)
		case ok && seen && !prev:
			log.Info("enrolled key valid again", "node", k.NodeName, "node_id", k.NodeID)
		}
	}
	e.mu.Lock()
	since := e.invalidSince
	e.invalidSince = map[tailcfg.StableNodeID]time.Time{}
	e.gone = map[tailcfg.StableNodeID]bool{}
	for id, gone := range invalidNow {
		t, seen := since[id]
		if !seen {
			t = now
		}
		e.invalidSince[id], e.gone[id] = t, gone
	}
	e.mu.Unlock()
	e.prune(now)
	// Revoked keys end their open sessions too (a ControlMaster would
	// otherwise keep running nix-daemon over its open connection).
	validSet := map[tailcfg.StableNodeID]bool{}
	for _, k := range valid {
		validSet[k.NodeID] = true
	}
	killed, failed := e.sess.end(validSet)
	if len(killed) > 0 {
		log.Warn("ended sessions of revoked keys", "pids", killed)
	}
	if len(failed) > 0 {
		log.Error("cannot end sessions of revoked keys (the agent needs CAP_KILL)", "pids", failed)
	}
	e.validAt, e.validGen, e.validKeys = now, gen, valid
	return valid, nil
}

// refreshValidity re-checks every stored key now, whatever the cache.
func (e *Enroller) refreshValidity(ctx context.Context) {
	e.vmu.Lock()
	e.validAt = time.Time{}
	e.vmu.Unlock()
	e.ValidKeys(ctx)
}

// invalid says why ps cannot use its enrolled key, or "" if it can.
func (e *Enroller) invalid(ctx context.Context, ps *ipnstate.PeerStatus) string {
	if ps == nil {
		return "node left the tailnet"
	}
	if ps.Expired {
		return "node key expired"
	}
	var tags []string
	if ps.Tags != nil {
		tags = ps.Tags.AsSlice()
	}
	if e.admits(tags, nil) {
		return ""
	}
	if len(e.AllowCaps) > 0 && len(ps.TailscaleIPs) > 0 {
		wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		who, err := e.LocalAPI.WhoIs(wctx, ps.TailscaleIPs[0].String())
		cancel()
		if err == nil && who != nil && e.admits(nil, who.CapMap) {
			return ""
		}
	}
	return "node lacks " + e.wanted()
}

// ServeSocket answers on a unix socket at path (mode 0666, its directory
// created 0755) until ctx is done: GET /v1/authorized-keys, the list
// `nixrb-discover authorized-keys` prints for sshd, only to root or this
// process's user (SO_PEERCRED); GET /v1/session?key=FP to anyone, for
// ssh-gate, which runs as the builder user at the start of every SSH
// session. It re-checks the enrolled nodes every minute, so that expiry
// is logged without logins, and every CacheFor while sessions are open,
// ending those of keys no longer valid.
func (e *Enroller) ServeSocket(ctx context.Context, path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("enroll socket: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode().Type() == os.ModeSocket {
		os.Remove(path) // left by an agent that died
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("enroll socket: %w", err)
	}
	defer os.Remove(path)
	if err := os.Chmod(path, 0o666); err != nil {
		ln.Close()
		return fmt.Errorf("enroll socket: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+AuthorizedKeysPath, func(w http.ResponseWriter, r *http.Request) {
		rctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		if c, ok := r.Context().Value(connKey{}).(net.Conn); ok {
			if uid, ok := peerUID(c); !ok || uid != 0 && int(uid) != os.Geteuid() {
				writeJSONError(w, http.StatusForbidden, "authorized-keys: only root or the agent's user may ask")
				return
			}
		}
		keys, err := e.ValidKeys(rctx)
		if err != nil {
			e.logger().Warn("cannot list valid keys", "err", err)
			writeJSONError(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		ans := AuthorizedKeys{User: e.User, Keys: []string{}, Entries: []AuthorizedEntry{}}
		for _, k := range keys {
			ans.Keys = append(ans.Keys, k.PublicKey)
			ans.Entries = append(ans.Entries, AuthorizedEntry{Key: k.PublicKey, From: append(slices.Clone(k.Addrs), e.ExtraFrom...)})
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(ans)
	})
	mux.HandleFunc("GET "+SessionPath, e.serveSession)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 10 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context { return context.WithValue(ctx, connKey{}, c) }}
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Re-check now and then, so that key expiry is audited even
		// when nobody logs in.
		every := e.CacheFor
		if every <= 0 {
			every = DefaultEnrollCache
		}
		t := time.NewTicker(min(every, expiryAuditInterval))
		defer t.Stop()
		last := time.Now()
		for {
			select {
			case <-ctx.Done():
				srv.Close()
				return
			case <-t.C:
				if !e.sess.live() && time.Since(last) < expiryAuditInterval {
					continue
				}
				last = time.Now()
				rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				e.ValidKeys(rctx)
				cancel()
			}
		}
	}()
	err = srv.Serve(ln)
	<-done
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// FetchAuthorizedKeys asks the agent's socket at path for the keys that
// may log in now, within ctx (callers bound it; sshd waits on them).
func FetchAuthorizedKeys(ctx context.Context, path string) (*AuthorizedKeys, error) {
	var ans AuthorizedKeys
	if err := unixhttp.GetJSON(ctx, path, AuthorizedKeysPath, maxAuthorizedKeysAnswer, &ans); err != nil {
		return nil, fmt.Errorf("enroll socket %s: %w", path, err)
	}
	return &ans, nil
}

// CheckSession asks the agent's socket at path whether the key with
// fingerprint fp (KeyFingerprint) may run a session now; the agent
// remembers the calling process and ends it if the key is revoked. An
// error means no (deny).
func CheckSession(ctx context.Context, path, fp string) error {
	var ans struct {
		Node string `json:"node"`
	}
	if err := unixhttp.GetJSON(ctx, path, SessionPath+"?key="+url.QueryEscape(fp), 4096, &ans); err != nil {
		return fmt.Errorf("enroll socket %s: %w", path, err)
	}
	return nil
}
