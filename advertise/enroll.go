package advertise

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nixrb-discover/nixrb-discover/wire"
	"golang.org/x/crypto/ssh"
	"tailscale.com/tailcfg"
)

// Enrolment defaults.
const (
	// DefaultEnrollMaxKeys bounds the enrolled keys (one per node).
	DefaultEnrollMaxKeys = 1000
	// DefaultEnrollStore is the key store of a system agent.
	DefaultEnrollStore = "/var/lib/nixrb-discover/enrolled.json"
	// DefaultEnrollSocket is where the agent answers authorized-keys: in
	// the advertise unit's RuntimeDirectory (the client's is another).
	DefaultEnrollSocket = "/run/nixrb-discover-advertise/enroll.sock"
	// DefaultEnrollCache is how long the valid-key list is reused.
	DefaultEnrollCache = 5 * time.Second
	// DefaultEnrollPruneAfter is how long a key of a node that left the
	// tailnet (or whose node key expired) is kept before it is deleted:
	// ephemeral nodes would otherwise fill the store for good.
	DefaultEnrollPruneAfter = 24 * time.Hour
	// DefaultEnrollRateEvery and DefaultEnrollRateBurst make the per-node
	// rate limit: a burst of 3 requests, then one per 10 s.
	DefaultEnrollRateEvery = 10 * time.Second
	DefaultEnrollRateBurst = 3
)

// Enroller accepts SSH public keys from tailnet peers that carry an
// allowed tag or capability (POST /v1/enroll, mounted on the
// TailnetServer, which has identified the caller), keeps one key per node
// in a JSON store, and tells sshd, through [Enroller.ServeSocket], which
// stored keys still belong to nodes that are on the tailnet with an
// allowed tag or capability. With neither AllowTags nor AllowCaps set,
// every enrolment is refused.
//
// Set the fields before the first request; an Enroller is then safe for
// concurrent use.
type Enroller struct {
	// AllowTags admits callers with one of these ACL tags.
	AllowTags []string
	// AllowCaps admits callers granted one of these peer capabilities.
	AllowCaps []tailcfg.PeerCapability
	// StorePath is the JSON key store, written atomically with mode 0600.
	StorePath string
	// User is the builder's SSH user the keys are for.
	User string
	// MaxKeys bounds the enrolled nodes; 0 means DefaultEnrollMaxKeys.
	// When it is reached, a new node's key replaces the key that has been
	// invalid longest; only MaxKeys valid keys refuse a new node.
	MaxKeys int
	// PruneAfter is how long the key of a node gone from the netmap or
	// expired is kept (it may come back); 0 means DefaultEnrollPruneAfter.
	PruneAfter time.Duration
	// RateEvery and RateBurst limit each node's requests; 0 means the
	// defaults (1 per 10 s, burst 3).
	RateEvery time.Duration
	RateBurst int
	// ExtraFrom are source addresses (sshd from= patterns) every key may
	// also log in from besides its node's tailnet addresses: for a
	// tailscaled in userspace-networking mode, whose connections reach
	// sshd from 127.0.0.1. Empty: only the node's own addresses.
	ExtraFrom []string
	// LocalAPI tells which enrolled nodes are still on the tailnet, with
	// which tags and capabilities (for ValidKeys and ServeSocket).
	LocalAPI EnrollLocalAPI
	// CacheFor is how long ValidKeys reuses its answer; 0 means
	// DefaultEnrollCache.
	CacheFor time.Duration
	// Logger receives the audit lines; nil discards.
	Logger *slog.Logger
	// now is time.Now, replaced in tests.
	now func() time.Time

	mu      sync.Mutex
	store   *keyStore
	gen     uint64 // bumped by every stored change
	buckets map[tailcfg.StableNodeID]*bucket
	sess    sessions // ssh-gate sessions to end on revocation
	// invalidSince is when ValidKeys first saw each stored key invalid;
	// gone marks those whose node left the netmap or expired (pruned
	// after PruneAfter).
	invalidSince map[tailcfg.StableNodeID]time.Time
	gone         map[tailcfg.StableNodeID]bool

	vmu       sync.Mutex // serialises ValidKeys (one LocalAPI call at a time); taken before mu
	validAt   time.Time
	validGen  uint64
	validKeys []EnrolledKey
	wasValid  map[tailcfg.StableNodeID]bool
}

// EnrolledKey is one node's enrolled key as the store keeps it.
type EnrolledKey struct {
	// NodeID is the enrolling node's stable ID.
	NodeID tailcfg.StableNodeID `json:"node_id"`
	// NodeName is its MagicDNS name when it enrolled.
	NodeName string `json:"node_name"`
	// PublicKey is the key in authorized_keys form, without a comment.
	PublicKey string `json:"public_key"`
	// Enrolled is when the key was stored.
	Enrolled time.Time `json:"enrolled"`
	// Addrs are the node's tailnet addresses now (set by ValidKeys only,
	// never stored): sshd accepts the key only from them.
	Addrs []string `json:"-"`
}

// KeyFingerprint is the fingerprint ssh-gate names a key by: the SHA256
// one without its "SHA256:" prefix (base64 letters only, safe unquoted in
// a forced command).
func KeyFingerprint(k ssh.PublicKey) string {
	return strings.TrimPrefix(ssh.FingerprintSHA256(k), "SHA256:")
}

// AuthorizedKey returns k in authorized_keys form without a comment.
func AuthorizedKey(k ssh.PublicKey) string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
}

// Handler serves POST /v1/enroll for callers the TailnetServer identified.
func (e *Enroller) Handler() http.Handler {
	return http.HandlerFunc(e.serveEnroll)
}

func (e *Enroller) serveEnroll(w http.ResponseWriter, r *http.Request) {
	log := e.logger()
	c, ok := CallerFromContext(r.Context())
	if !ok {
		log.Warn("enrolment refused", "remote", r.RemoteAddr, "reason", "caller not identified")
		writeJSONError(w, http.StatusForbidden, "enrolment refused: caller not identified")
		return
	}
	if wait, ok := e.allow(c.NodeID); !ok {
		log.Warn("enrolment refused", "node", c.Name, "node_id", c.NodeID, "reason", "rate limited")
		w.Header().Set("Retry-After", strconv.Itoa(int(wait.Seconds())+1))
		writeJSONError(w, http.StatusTooManyRequests, "enrolment refused: too many requests from this node")
		return
	}
	if !e.admits(c.Tags, c.Caps) {
		reason := "caller lacks " + e.wanted()
		log.Warn("enrolment refused", "node", c.Name, "node_id", c.NodeID, "tags", c.Tags, "reason", reason)
		writeJSONError(w, http.StatusForbidden, "enrolment refused: "+reason)
		return
	}
	k, err := wire.DecodeEnrollRequest(r.Body)
	if err != nil {
		log.Warn("enrolment refused", "node", c.Name, "node_id", c.NodeID, "reason", err.Error())
		code := http.StatusBadRequest
		if errors.Is(err, wire.ErrEnrollTooLarge) {
			code = http.StatusRequestEntityTooLarge
		}
		writeJSONError(w, code, "enrolment refused: "+err.Error())
		return
	}
	fp := ssh.FingerprintSHA256(k)
	if e.full() {
		// Learn which stored keys are invalid now: put evicts those.
		vctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		e.refreshValidity(vctx)
		cancel()
	}
	old, err := e.put(EnrolledKey{NodeID: c.NodeID, NodeName: c.Name, PublicKey: AuthorizedKey(k), Enrolled: e.clock().UTC()})
	if err != nil {
		log.Error("enrolment failed", "node", c.Name, "node_id", c.NodeID, "fingerprint", fp, "err", err)
		code := http.StatusInternalServerError
		switch {
		case errors.Is(err, errStoreFull):
			code = http.StatusInsufficientStorage
		case errors.Is(err, errKeyTaken):
			code = http.StatusConflict
		}
		writeJSONError(w, code, "enrolment failed: "+err.Error())
		return
	}
	args := []any{"node", c.Name, "node_id", c.NodeID, "fingerprint", fp, "user", e.User}
	if old != "" {
		args = append(args, "replaced", old)
	}
	log.Info("enrolled key", args...)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(wire.EnrollResponse{User: e.User})
}

// wanted names what a caller must carry: "tag:a or tag:b or cap X".
func (e *Enroller) wanted() string {
	var w []string
	w = append(w, e.AllowTags...)
	for _, c := range e.AllowCaps {
		w = append(w, "capability "+string(c))
	}
	if len(w) == 0 {
		return "an allowed tag or capability (none configured)"
	}
	return strings.Join(w, " or ")
}

// admits reports whether tags or caps carry an allowed tag or capability.
func (e *Enroller) admits(tags []string, caps tailcfg.PeerCapMap) bool {
	for _, t := range tags {
		if slices.Contains(e.AllowTags, t) {
			return true
		}
	}
	for _, c := range e.AllowCaps {
		if caps.HasCapability(c) {
			return true
		}
	}
	return false
}

func writeJSONError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

func (e *Enroller) logger() *slog.Logger {
	if e.Logger == nil {
		return slog.New(slog.DiscardHandler).With("component", "enroll")
	}
	return e.Logger.With("component", "enroll")
}

func (e *Enroller) clock() time.Time {
	if e.now != nil {
		return e.now()
	}
	return time.Now()
}

// bucket is one node's token bucket.
type bucket struct {
	tokens float64
	last   time.Time
}

// maxBuckets bounds the rate limiter's memory; past it, it starts over.
const maxBuckets = 10000

// allow takes a token from node's bucket, or says how long until one.
func (e *Enroller) allow(node tailcfg.StableNodeID) (time.Duration, bool) {
	every, burst := e.RateEvery, e.RateBurst
	if every <= 0 {
		every = DefaultEnrollRateEvery
	}
	if burst <= 0 {
		burst = DefaultEnrollRateBurst
	}
	now := e.clock()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.buckets == nil || len(e.buckets) >= maxBuckets {
		e.buckets = map[tailcfg.StableNodeID]*bucket{}
	}
	b := e.buckets[node]
	if b == nil {
		b = &bucket{tokens: float64(burst), last: now}
		e.buckets[node] = b
	}
	b.tokens = min(float64(burst), b.tokens+float64(now.Sub(b.last))/float64(every))
	b.last = now
	if b.tokens < 1 {
		return time.Duration((1 - b.tokens) * float64(every)), false
	}
	b.tokens--
	return 0, true
}
