package tailnet_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"tailscale.com/client/local"

	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/nixrb-discover/nixrb-discover/discover/tailnet"
	"github.com/nixrb-discover/nixrb-discover/internal/tailnettest"
)

// TestTailnetSource runs the source on a client node of an in-process
// tailnet with two tagged builders, one untagged node that also serves an
// advert, and checks membership, addressing, offline, naming and an
// outage of the LocalAPI.
func TestTailnetSource(t *testing.T) {
	tn := tailnettest.New(t)
	b1 := tnBuilder(t, tn, "b1", tailnettest.TagBuilder)
	b2 := tnBuilder(t, tn, "b2", tailnettest.TagBuilder)
	u1 := tnBuilder(t, tn, "u1") // serves an advert, but is not tagged
	c := tn.AddNode(t, "c1", tailnettest.TagClient)
	for _, n := range []*tailnettest.Node{b1, b2, u1} {
		tn.WaitPeer(t, c, n)
		tn.WaitPeer(t, n, c)
	}
	const wait = 10 * time.Second

	// Exactly the two tagged builders, each with its decoded advert, the
	// netmap's name and address (never the advert's hostname), trusted by tag.
	for _, mode := range []string{tailnet.AddressMagicDNS, tailnet.AddressIP} {
		t.Run("tagged-builders-"+mode, func(t *testing.T) {
			run := tnStart(t, &tailnet.Source{
				LocalAPI: c.LocalClient, Dial: c.Server.Dial, Address: mode,
			})
			snap, _ := run.wait(t, 0, wait, "b1 and b2", tnHasExactly(b1, b2))
			for i, n := range []*tailnettest.Node{b1, b2} {
				got := snap.Candidates[i]
				want := n.FQDN
				if mode == tailnet.AddressIP {
					want = n.IPv4.String()
				}
				if got.Name != n.FQDN || got.Address != want || !got.Trusted ||
					got.TrustReason != "tailnet peer with "+tailnettest.TagBuilder ||
					got.Advert.Hostname != "advertised-"+n.Name || got.Advert.SSHUser != "nix-builder" {
					t.Errorf("candidate %d = %+v, want name %s address %s", i, got, n.FQDN, want)
				}
			}
			if len(snap.Candidates) != 2 {
				t.Errorf("candidates %s, want only b1 and b2", tnDescribe(snap.Snapshot))
			}
		})
	}

	// A peer named in Builders is a candidate without the tag.
	t.Run("named-untagged-builder", func(t *testing.T) {
		run := tnStart(t, &tailnet.Source{
			LocalAPI: c.LocalClient, Dial: c.Server.Dial, Builders: []string{"u1"},
		})
		snap, _ := run.wait(t, 0, wait, "b1, b2 and u1", tnHasExactly(b1, b2, u1))
		for _, got := range snap.Candidates {
			if got.Name == u1.FQDN && got.TrustReason != "named by --builder" {
				t.Errorf("u1 trust reason %q", got.TrustReason)
			}
		}
	})

	// Control marking a builder offline removes it; back online, it returns.
	t.Run("offline-removes", func(t *testing.T) {
		run := tnStart(t, &tailnet.Source{LocalAPI: c.LocalClient, Dial: c.Server.Dial})
		_, i := run.wait(t, 0, wait, "b1 and b2", tnHasExactly(b1, b2))
		tn.SetOnline(t, b1, false)
		_, i = run.wait(t, i, wait, "only b2", tnHasExactly(b2))
		tn.SetOnline(t, b1, true)
		run.wait(t, i, wait, "b1 and b2 again", tnHasExactly(b1, b2))
	})

	// Retagging in control is followed: untagging b2 removes it.
	t.Run("untag-removes", func(t *testing.T) {
		run := tnStart(t, &tailnet.Source{LocalAPI: c.LocalClient, Dial: c.Server.Dial})
		_, i := run.wait(t, 0, wait, "b1 and b2", tnHasExactly(b1, b2))
		tn.SetTags(t, b2)
		_, i = run.wait(t, i, wait, "only b1", tnHasExactly(b1))
		tn.SetTags(t, b2, tailnettest.TagBuilder)
		run.wait(t, i, wait, "b1 and b2 again", tnHasExactly(b1, b2))
	})

	// The LocalAPI going away (its connections cut, new ones refused, as
	// when tailscaled restarts) is an Err snapshot; when it is back, the
	// source re-subscribes by itself and emits the builders again.
	t.Run("localapi-outage", func(t *testing.T) {
		sw := &tnSwitchDial{dial: c.LocalClient.Dial}
		run := tnStart(t, &tailnet.Source{
			LocalAPI: &local.Client{Dial: sw.Dial}, Dial: c.Server.Dial,
		})
		_, i := run.wait(t, 0, wait, "b1 and b2", tnHasExactly(b1, b2))
		sw.setDown(true)
		_, i = run.wait(t, i, wait, "an error", func(s discover.Snapshot) bool { return s.Err != nil })
		sw.setDown(false)
		run.wait(t, i, wait, "b1 and b2 after recovery", tnHasExactly(b1, b2))
	})
}

// TestTailnetSourceDeadBuilder shows a tagged peer that does not serve an
// advert as a trusted candidate with a Problem, not as a usable builder.
func TestTailnetSourceDeadBuilder(t *testing.T) {
	tn := tailnettest.New(t)
	dead := tn.AddNode(t, "dead", tailnettest.TagBuilder) // no advert server
	c := tn.AddNode(t, "c1")
	tn.WaitPeer(t, c, dead)
	run := tnStart(t, &tailnet.Source{
		LocalAPI: c.LocalClient, Dial: c.Server.Dial, FetchTimeout: 500 * time.Millisecond,
	})
	snap, _ := run.wait(t, 0, 10*time.Second, "dead with a problem", func(s discover.Snapshot) bool {
		return len(s.Candidates) == 1 && s.Candidates[0].Problem != ""
	})
	got := snap.Candidates[0]
	if got.Advert != nil || got.Address != dead.FQDN || got.Key != "tailnet:"+string(dead.StableID) {
		t.Errorf("candidate = %+v", got)
	}
	t.Logf("problem: %s", got.Problem)
}

// tnSwitchDial wraps a LocalAPI dialer; while down it cuts every
// connection it made and refuses new ones.
type tnSwitchDial struct {
	mu    sync.Mutex
	down  bool
	conns []net.Conn
	dial  func(ctx context.Context, network, addr string) (net.Conn, error)
}

func (s *tnSwitchDial) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.down {
		return nil, errors.New("connection refused (test: tailscaled down)")
	}
	c, err := s.dial(ctx, network, addr)
	if err == nil {
		s.conns = append(s.conns, c)
	}
	return c, err
}

func (s *tnSwitchDial) setDown(down bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.down = down
	if down {
		for _, c := range s.conns {
			c.Close()
		}
		s.conns = nil
	}
}

// TestTailnetSourceShortNameSkipsSharedInNode: a node shared in from
// another tailnet keeps that tailnet's MagicDNS name
// (ward.attacker-tailnet.ts.net). `--builder ward` must not make it a
// builder: a short name names only a peer of this tailnet. Its full name,
// given on purpose, still does (which also shows the node is visible and
// serves an advert, so the first half can fail).
func TestTailnetSourceShortNameSkipsSharedInNode(t *testing.T) {
	tn := tailnettest.New(t)
	ward := tnBuilder(t, tn, "ward") // untagged, serves an advert
	local := tnBuilder(t, tn, "b1")  // untagged, of this tailnet
	c := tn.AddNode(t, "c1")
	tn.WaitPeer(t, c, ward)
	tn.WaitPeer(t, c, local)
	const shared = "ward.attacker-tailnet.ts.net."
	cn := tn.Control.Node(ward.Key)
	cn.Name = shared // how control names a node shared in from another tailnet
	tn.Control.UpdateNode(cn)
	ctx, cancel := context.WithTimeout(context.Background(), tailnettest.Timeout)
	defer cancel()
	for {
		st, err := c.LocalClient.Status(ctx)
		if err == nil && st.Peer[ward.Key] != nil && st.Peer[ward.Key].DNSName == shared {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("c1 never saw ward renamed %s", shared)
		case <-time.After(20 * time.Millisecond):
		}
	}

	run := tnStart(t, &tailnet.Source{LocalAPI: c.LocalClient, Dial: c.Server.Dial, Builders: []string{"ward", "b1"}})
	snap, _ := run.wait(t, 0, 10*time.Second, "b1 in a settled snapshot", func(s discover.Snapshot) bool {
		return !s.Partial && tnHas(local)(s)
	})
	for _, got := range snap.Candidates {
		if got.Key == "tailnet:"+string(ward.StableID) {
			t.Fatalf("--builder ward made the shared-in node %s a candidate: %+v", shared, got)
		}
	}

	run = tnStart(t, &tailnet.Source{LocalAPI: c.LocalClient, Dial: c.Server.Dial, Builders: []string{shared}})
	snap, _ = run.wait(t, 0, 10*time.Second, "ward by its full name", tnHas(ward))
	if got := snap.Candidates[0]; got.Name != strings.TrimSuffix(shared, ".") && got.Name != shared {
		t.Errorf("ward by full name: candidate name %q", got.Name)
	}
}
