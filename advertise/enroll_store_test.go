package advertise

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"tailscale.com/client/tailscale/apitype"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
	"tailscale.com/types/views"
)

// fakeEnrollAPI is a LocalAPI whose peers the test sets.
type fakeEnrollAPI struct {
	mu    sync.Mutex
	peers []*ipnstate.PeerStatus
	caps  map[string]tailcfg.PeerCapMap // by peer IP
	calls int
	err   error
}

func (f *fakeEnrollAPI) Status(ctx context.Context) (*ipnstate.Status, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.err != nil {
		return nil, f.err
	}
	st := &ipnstate.Status{Peer: map[key.NodePublic]*ipnstate.PeerStatus{}}
	for _, p := range f.peers {
		st.Peer[key.NewNode().Public()] = p
	}
	return st, nil
}

func (f *fakeEnrollAPI) WhoIs(ctx context.Context, addr string) (*apitype.WhoIsResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &apitype.WhoIsResponse{Node: &tailcfg.Node{}, CapMap: f.caps[addr]}, nil
}

func (f *fakeEnrollAPI) set(peers ...*ipnstate.PeerStatus) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.peers = peers
}

func peer(id string, ip string, tags ...string) *ipnstate.PeerStatus {
	ps := &ipnstate.PeerStatus{ID: tailcfg.StableNodeID(id), TailscaleIPs: []netip.Addr{netip.MustParseAddr(ip)}}
	if tags != nil {
		v := views.SliceOf(tags)
		ps.Tags = &v
	}
	return ps
}

func TestValidKeys(t *testing.T) {
	e, log, now := newTestEnroller(t)
	api := &fakeEnrollAPI{caps: map[string]tailcfg.PeerCapMap{}}
	e.LocalAPI = api
	e.AllowCaps = []tailcfg.PeerCapability{"example.com/cap/nix-enroll"}
	ka, kb, kc := testKey(t, "ed25519"), testKey(t, "ecdsa"), testKey(t, "ed25519")
	for _, c := range []struct{ id, key string }{{"nA", ka}, {"nB", kb}, {"nC", kc}} {
		if w := post(e, &Caller{Name: c.id + ".ts.net", NodeID: tailcfg.StableNodeID(c.id), Tags: []string{"tag:nix-client"}}, enrollBody(c.key)); w.Code != 200 {
			t.Fatalf("enrol %s: %d %s", c.id, w.Code, w.Body)
		}
	}
	// A tagged, B granted the capability instead, C gone.
	api.set(peer("nA", "100.64.0.1", "tag:nix-client"), peer("nB", "100.64.0.2"))
	api.caps["100.64.0.2"] = tailcfg.PeerCapMap{"example.com/cap/nix-enroll": nil}
	got := func() []string {
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
	if ids := strings.Join(got(), ","); ids != "nA,nB" {
		t.Fatalf("valid = %s, want nA,nB", ids)
	}
	if !strings.Contains(log.String(), "enrolled key expired") || !strings.Contains(log.String(), "node left the tailnet") {
		t.Fatalf("no expiry line for nC:\n%s", log)
	}

	// A loses its tag: still valid from the cache, then expired.
	api.set(peer("nA", "100.64.0.1"), peer("nB", "100.64.0.2"))
	if ids := strings.Join(got(), ","); ids != "nA,nB" {
		t.Fatalf("cached answer = %s, want nA,nB", ids)
	}
	*now = now.Add(DefaultEnrollCache)
	if ids := strings.Join(got(), ","); ids != "nB" {
		t.Fatalf("after the cache period valid = %s, want nB", ids)
	}
	if n := strings.Count(log.String(), "enrolled key expired"); n != 2 {
		t.Fatalf("%d expiry lines, want 2 (nC once, nA):\n%s", n, log)
	}

	// A new enrolment is seen at once, not after the cache period.
	api.set(peer("nA", "100.64.0.1"), peer("nB", "100.64.0.2"), peer("nD", "100.64.0.4", "tag:nix-client"))
	if w := post(e, &Caller{Name: "nD.ts.net", NodeID: "nD", Tags: []string{"tag:nix-client"}}, enrollBody(testKey(t, "ed25519"))); w.Code != 200 {
		t.Fatalf("enrol nD: %d %s", w.Code, w.Body)
	}
	if ids := strings.Join(got(), ","); ids != "nB,nD" {
		t.Fatalf("right after enrolling nD valid = %s, want nB,nD", ids)
	}

	// The LocalAPI failing denies everything.
	*now = now.Add(DefaultEnrollCache)
	api.mu.Lock()
	api.err = errors.New("tailscaled is down")
	api.mu.Unlock()
	if _, err := e.ValidKeys(context.Background()); err == nil {
		t.Fatal("no error with the LocalAPI down")
	}
}

func TestEnrollSocket(t *testing.T) {
	e, _, _ := newTestEnroller(t)
	api := &fakeEnrollAPI{}
	e.LocalAPI = api
	k := testKey(t, "ed25519")
	if w := post(e, &Caller{Name: "a", NodeID: "nA", Tags: []string{"tag:nix-client"}}, enrollBody(k)); w.Code != 200 {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	api.set(peer("nA", "100.64.0.1", "tag:nix-client"))
	dir, err := os.MkdirTemp("", "enr")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "run", "enroll.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.ServeSocket(ctx, sock) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("ServeSocket: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("ServeSocket did not stop")
		}
	})
	var ans *AuthorizedKeys
	deadline := time.Now().Add(30 * time.Second)
	for {
		fctx, fcancel := context.WithTimeout(context.Background(), 5*time.Second)
		ans, err = FetchAuthorizedKeys(fctx, sock)
		fcancel()
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	if ans.User != "nix-ssh" || len(ans.Keys) != 1 || ans.Keys[0] != k {
		t.Fatalf("answer = %+v", ans)
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o666 {
		t.Fatalf("socket mode: %v %v", fi, err)
	}
	if _, err := FetchAuthorizedKeys(context.Background(), filepath.Join(dir, "nope.sock")); err == nil {
		t.Fatal("no error from a missing socket")
	}
}

// storeVersion is the n-th key set the writer child saves.
func storeVersion(n int) []EnrolledKey {
	keys := make([]EnrolledKey, 0, n%50+1)
	for i := range n%50 + 1 {
		keys = append(keys, EnrolledKey{
			NodeID:    tailcfg.StableNodeID(fmt.Sprintf("n%04d-%d", i, n)),
			NodeName:  fmt.Sprintf("node-%d.ts.net", i),
			PublicKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKuQNWRb4HT2KmI1rmjbWoNeP/sfmom8RX9eHRIRYTVg",
			Enrolled:  time.Unix(int64(n), 0).UTC(),
		})
	}
	return keys
}

// TestEnrollStoreSurvivesSIGKILL kills a writer process at random points:
// the store must always load as one complete version.
func TestEnrollStoreSurvivesSIGKILL(t *testing.T) {
	if os.Getenv("ENROLL_TEST_WRITER") != "" {
		return
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "enrolled.json")
	if err := saveEnrolledKeys(path, storeVersion(0)); err != nil {
		t.Fatal(err)
	}
	for round := range 30 {
		cmd := exec.Command(os.Args[0], "-test.run", "^TestEnrollStoreWriterChild$")
		cmd.Env = append(os.Environ(), "ENROLL_TEST_WRITER="+path)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(5+rand.IntN(40)) * time.Millisecond)
		cmd.Process.Kill()
		cmd.Wait()
		keys, err := loadEnrolledKeys(path)
		if err != nil || len(keys) == 0 {
			t.Fatalf("round %d: after SIGKILL the store does not load: %v", round, err)
		}
		n := int(keys[0].Enrolled.Unix())
		if want := storeVersion(n); len(keys) != len(want) || !reflect.DeepEqual(keys[len(keys)-1], want[len(want)-1]) {
			t.Fatalf("round %d: the store is not a complete version (%d keys of version %d)", round, len(keys), n)
		}
	}
}

// TestEnrollStoreWriterChild is the writer of TestEnrollStoreSurvivesSIGKILL.
func TestEnrollStoreWriterChild(t *testing.T) {
	path := os.Getenv("ENROLL_TEST_WRITER")
	if path == "" {
		t.Skip("run only as the child of TestEnrollStoreSurvivesSIGKILL")
	}
	for i := 1; ; i = i%1999 + 1 {
		if err := saveEnrolledKeys(path, storeVersion(i)); err != nil {
			t.Fatal(err)
		}
	}
}

// TestEnrollConcurrent enrols and lists at once (run with -race).
func TestEnrollConcurrent(t *testing.T) {
	e, _, _ := newTestEnroller(t)
	e.now = nil
	api := &fakeEnrollAPI{}
	e.LocalAPI = api
	var peers []*ipnstate.PeerStatus
	for i := range 8 {
		peers = append(peers, peer(fmt.Sprintf("n%d", i), fmt.Sprintf("100.64.0.%d", i+1), "tag:nix-client"))
	}
	api.set(peers...)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			c := &Caller{Name: fmt.Sprintf("n%d", i), NodeID: tailcfg.StableNodeID(fmt.Sprintf("n%d", i)), Tags: []string{"tag:nix-client"}}
			if w := post(e, c, enrollBody(testKey(t, "ed25519"))); w.Code != 200 {
				t.Errorf("enrol n%d: %d %s", i, w.Code, w.Body)
			}
		}()
		go func() {
			defer wg.Done()
			if _, err := e.ValidKeys(context.Background()); err != nil {
				t.Errorf("ValidKeys: %v", err)
			}
		}()
	}
	wg.Wait()
	keys, err := e.ValidKeys(context.Background())
	if err != nil || len(keys) != 8 {
		t.Fatalf("after 8 enrolments %d valid keys (%v)", len(keys), err)
	}
}
