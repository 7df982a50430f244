package advertise

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"tailscale.com/ipn/ipnstate"
	"tailscale.com/tailcfg"
)

func validIDs(t *testing.T, e *Enroller) []string {
	t.Helper()
	keys, err := e.ValidKeys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, k := range keys {
		ids = append(ids, string(k.NodeID))
	}
	return ids
}

// TestEnrollFullStoreOfDepartedNodesAdmitsNewOnes: MaxKeys ephemeral CI
// nodes enrol and leave the tailnet; a new tagged node enrols a day later
// (the review saw "507 key store is full" with 0 valid keys). An invalid
// key is evicted for it at once, and departed nodes' keys are pruned
// after PruneAfter even when nobody enrols. Only MaxKeys valid keys
// refuse a new node.
func TestEnrollFullStoreOfDepartedNodesAdmitsNewOnes(t *testing.T) {
	e, log, now := newTestEnroller(t)
	api := &fakeEnrollAPI{}
	e.LocalAPI = api
	e.MaxKeys = 3
	var ci []*ipnstate.PeerStatus
	for i := range 3 {
		id := fmt.Sprintf("ci%d", i)
		if w := post(e, &Caller{Name: id, NodeID: tailcfg.StableNodeID(id), Tags: []string{"tag:nix-client"}}, enrollBody(testKey(t, "ed25519"))); w.Code != http.StatusOK {
			t.Fatalf("enrol %s: %d %s", id, w.Code, w.Body)
		}
		ci = append(ci, peer(id, fmt.Sprintf("100.64.0.%d", i+1), "tag:nix-client"))
	}
	api.set(ci...)
	if got := validIDs(t, e); len(got) != 3 {
		t.Fatalf("valid = %v, want the 3 CI nodes", got)
	}
	// A 4th valid node: full for real.
	if w := post(e, &Caller{Name: "extra", NodeID: "extra", Tags: []string{"tag:nix-client"}}, enrollBody(testKey(t, "ed25519"))); w.Code != http.StatusInsufficientStorage {
		t.Fatalf("a 4th node while 3 keys are valid: %d %s, want 507", w.Code, w.Body)
	}

	// The CI nodes leave; a day later a laptop enrols.
	api.set()
	*now = now.Add(time.Hour)
	validIDs(t, e)
	*now = now.Add(time.Hour)
	api.set(peer("laptop", "100.64.0.9", "tag:nix-client"))
	if w := post(e, &Caller{Name: "laptop", NodeID: "laptop", Tags: []string{"tag:nix-client"}}, enrollBody(testKey(t, "ed25519"))); w.Code != http.StatusOK {
		t.Fatalf("a new node in a store full of departed nodes: %d %s, want 200", w.Code, w.Body)
	}
	if !strings.Contains(log.String(), "evicted an invalid key for a new node") {
		t.Errorf("no audit line for the eviction:\n%s", log)
	}
	if got := validIDs(t, e); !slices.Equal(got, []string{"laptop"}) {
		t.Fatalf("valid = %v, want laptop", got)
	}
	keys, _ := e.Keys()
	if len(keys) != 3 {
		t.Fatalf("%d stored keys, want 3 (two departed CI nodes, the laptop)", len(keys))
	}

	// PruneAfter later the departed nodes' keys are gone from the store.
	*now = now.Add(DefaultEnrollPruneAfter)
	validIDs(t, e)
	keys, _ = e.Keys()
	if len(keys) != 1 || keys[0].NodeID != "laptop" {
		t.Fatalf("after PruneAfter the store holds %v, want only the laptop", keys)
	}
	if !strings.Contains(log.String(), "pruned the key of a departed node") {
		t.Errorf("no audit line for pruning:\n%s", log)
	}
	// A node that lost its tag but is still on the tailnet is kept: it
	// may get the tag back.
	api.set(peer("laptop", "100.64.0.9"))
	*now = now.Add(DefaultEnrollCache)
	validIDs(t, e)
	*now = now.Add(2 * DefaultEnrollPruneAfter)
	validIDs(t, e)
	if keys, _ = e.Keys(); len(keys) != 1 {
		t.Fatalf("an untagged node's key was pruned: %v", keys)
	}
}

// TestValidKeysExpiredNodeAndSharedKey: a peer whose node key expired
// (Expired=true) is invalid; a key another node enrolled already is
// refused (409); a store where two nodes hold one key (from before) makes
// that key valid for neither; valid keys carry the node's tailnet
// addresses for sshd's from=.
func TestValidKeysExpiredNodeAndSharedKey(t *testing.T) {
	e, log, now := newTestEnroller(t)
	api := &fakeEnrollAPI{}
	e.LocalAPI = api
	ka, kb := testKey(t, "ed25519"), testKey(t, "ed25519")
	for _, c := range []struct{ id, key string }{{"nA", ka}, {"nB", kb}} {
		if w := post(e, &Caller{Name: c.id, NodeID: tailcfg.StableNodeID(c.id), Tags: []string{"tag:nix-client"}}, enrollBody(c.key)); w.Code != http.StatusOK {
			t.Fatalf("enrol %s: %d %s", c.id, w.Code, w.Body)
		}
	}
	if w := post(e, &Caller{Name: "nC", NodeID: "nC", Tags: []string{"tag:nix-client"}}, enrollBody(ka)); w.Code != http.StatusConflict || !strings.Contains(w.Body.String(), "enrolled by another node") {
		t.Fatalf("enrolling nA's key from nC: %d %s, want 409", w.Code, w.Body)
	}
	expired := peer("nB", "100.64.0.2", "tag:nix-client")
	expired.Expired = true
	a := peer("nA", "100.64.0.1", "tag:nix-client")
	a.TailscaleIPs = append(a.TailscaleIPs, mustAddr("fd7a:115c:a1e0::1"))
	api.set(a, expired)
	keys, err := e.ValidKeys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0].NodeID != "nA" || !slices.Equal(keys[0].Addrs, []string{"100.64.0.1", "fd7a:115c:a1e0::1"}) {
		t.Fatalf("valid = %+v, want nA with its two tailnet addresses", keys)
	}
	if !strings.Contains(log.String(), "node key expired") {
		t.Errorf("no audit line for the expired node:\n%s", log)
	}

	// A store written before keys were unique: nB holds nA's key too.
	e.mu.Lock()
	k := e.store.keys["nB"]
	k.PublicKey = ka
	e.store.keys["nB"] = k
	e.gen++
	e.mu.Unlock()
	api.set(a, peer("nB", "100.64.0.2"))
	*now = now.Add(DefaultEnrollCache)
	if got := validIDs(t, e); len(got) != 0 {
		t.Fatalf("valid = %v, want none: the shared key must not stay valid through nA while nB is untagged", got)
	}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
