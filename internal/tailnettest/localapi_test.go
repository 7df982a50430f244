package tailnettest

import (
	"context"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"tailscale.com/client/local"
	"tailscale.com/ipn"
	"tailscale.com/tailcfg"
)

// TestServeLocalAPI: a plain local.Client on the socket, as a separate
// process would make it from --tailscale-socket, gets the node's status
// and a stream on the IPN bus that carries a later peer change.
func TestServeLocalAPI(t *testing.T) {
	tn := New(t)
	c := tn.AddNode(t, "c1")
	b := tn.AddNode(t, "b1", TagBuilder)
	tn.WaitPeer(t, c, b)
	sock := filepath.Join(t.TempDir(), "tailscaled.sock")
	c.ServeLocalAPI(t, sock)
	lc := &local.Client{Socket: sock, UseSocketOnly: true}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := lc.Status(ctx)
	if err != nil {
		t.Fatalf("Status through the socket: %v", err)
	}
	if st.Self == nil || st.Self.ID != c.StableID {
		t.Fatalf("Status: self = %+v, want %s", st.Self, c.StableID)
	}
	if ps := st.Peer[b.Key]; ps == nil || !ps.Online {
		t.Fatalf("Status: peer b1 = %+v, want online", ps)
	}

	w, err := lc.WatchIPNBus(ctx, ipn.NotifyInitialStatus|ipn.NotifyPeerChanges|ipn.NotifyPeerPatches)
	if err != nil {
		t.Fatalf("WatchIPNBus through the socket: %v", err)
	}
	defer w.Close()
	n, err := w.Next()
	if err != nil || n.InitialStatus == nil {
		t.Fatalf("first notification: %+v, %v; want the initial status", n, err)
	}
	// A change after subscribing arrives on the open stream.
	tn.SetOnline(t, b, false)
	start := time.Now()
	for {
		n, err := w.Next()
		if err != nil {
			t.Fatalf("waiting for b1 offline on the bus: %v", err)
		}
		if offline(n, b.StableID, tn.Control.Node(b.Key).ID) {
			break
		}
	}
	t.Logf("b1 offline on the bus through the socket after %v", time.Since(start))
}

// offline reports whether n says the node went offline, whole or patched.
func offline(n ipn.Notify, stable tailcfg.StableNodeID, id tailcfg.NodeID) bool {
	for _, p := range n.PeersChanged {
		if p.StableID == stable && p.Online != nil && !*p.Online {
			return true
		}
	}
	for _, p := range n.PeerChangedPatch {
		if p.NodeID == id && p.Online != nil && !*p.Online {
			return true
		}
	}
	return false
}

// TestServeLocalAPICredential: the loopback LocalAPI refuses a request
// without the credential the socket adds, so the socket is what makes it
// usable.
func TestServeLocalAPICredential(t *testing.T) {
	tn := New(t)
	c := tn.AddNode(t, "c1")
	addr, _, _, err := c.Server.Loopback()
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", "http://"+addr+"/localapi/v0/status", nil)
	req.Host = "local-tailscaled.sock"
	req.Header.Set("Sec-Tailscale", "localapi")
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("status without the credential: %s, want 401", resp.Status)
	}
}
