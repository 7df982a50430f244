package tailnet_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/tailcfg"

	"github.com/nixrb-discover/nixrb-discover/advertise"
	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/nixrb-discover/nixrb-discover/discover/tailnet"
	"github.com/nixrb-discover/nixrb-discover/internal/headscaletest"
	"github.com/nixrb-discover/nixrb-discover/internal/tailnettest"
	"github.com/nixrb-discover/nixrb-discover/wire"
)

// TestHeadscale runs discovery and trust against a real headscale
// (headscaletest.Version), the control server many self-hosters run
// instead of Tailscale's: tags are the identity of tagged nodes, peer
// capabilities come from `app` grants, MagicDNS names are
// host.base_domain, and tags and nodes change at the server through its
// CLI and a policy reload.
func TestHeadscale(t *testing.T) {
	hs := headscaletest.Start(t, headscaletest.Options{})
	b1 := hs.AddNode(t, "b1", headscaletest.TagBuilder)
	b2 := hs.AddNode(t, "b2", headscaletest.TagBuilder)
	b3 := hs.AddNode(t, "b3", headscaletest.TagBuilder)
	u1 := hs.AddNode(t, "u1") // the owner's node: serves an advert, not tagged
	l1 := hs.AddNode(t, "l1") // the owner's laptop, running advertise by mistake
	c := hs.AddNode(t, "c1", headscaletest.TagClient)
	for _, n := range []*tailnettest.Node{b1, b2, b3, u1, l1, c} {
		tnServeAdvert(t, n)
	}
	all := []*tailnettest.Node{b1, b2, b3, u1, l1, c}
	for _, from := range all {
		for _, to := range all {
			if from != to {
				hs.WaitPeer(t, from, to)
			}
		}
	}
	const wait = 15 * time.Second

	// The tagged builders join, each under the name headscale gives it
	// (host.base_domain) or its tailnet IP; the untagged peer and the
	// untagged laptop that serves an advert stay out.
	for _, mode := range []string{tailnet.AddressMagicDNS, tailnet.AddressIP} {
		t.Run("tagged-builders-join-as-"+mode, func(t *testing.T) {
			run := tnStart(t, &tailnet.Source{LocalAPI: c.LocalClient, Dial: c.Server.Dial, Address: mode})
			snap, _ := run.wait(t, 0, wait, "b1, b2 and b3", tnHasExactly(b1, b2, b3))
			for _, got := range snap.Candidates {
				n := map[string]*tailnettest.Node{b1.Name: b1, b2.Name: b2, b3.Name: b3}[strings.TrimSuffix(got.Name, "."+headscaletest.BaseDomain)]
				if n == nil {
					t.Fatalf("candidate %q is not named <host>.%s", got.Name, headscaletest.BaseDomain)
				}
				want := n.Name + "." + headscaletest.BaseDomain
				if mode == tailnet.AddressIP {
					want = n.IPv4.String()
					if !netip.MustParsePrefix("100.64.0.0/10").Contains(n.IPv4) {
						t.Errorf("%s: address %s is not in headscale's prefix", n.Name, n.IPv4)
					}
				}
				if got.Address != want || !got.Trusted || got.TrustReason != "tailnet peer with "+tailnettest.TagBuilder ||
					got.Advert.Hostname != "advertised-"+n.Name {
					t.Errorf("candidate %+v, want address %s, trusted by tag", got, want)
				}
			}
		})
	}

	// The untagged laptop's own client sees the same builders, not itself
	// nor the other untagged node.
	t.Run("untagged-laptop-sees-builders-not-itself", func(t *testing.T) {
		run := tnStart(t, &tailnet.Source{LocalAPI: l1.LocalClient, Dial: l1.Server.Dial})
		run.wait(t, 0, wait, "b1, b2 and b3", tnHasExactly(b1, b2, b3))
	})

	// --builder names work with headscale's names, short and full.
	t.Run("named-builders-by-headscale-names", func(t *testing.T) {
		run := tnStart(t, &tailnet.Source{LocalAPI: c.LocalClient, Dial: c.Server.Dial,
			Builders: []string{"u1", "l1." + headscaletest.BaseDomain}})
		run.wait(t, 0, wait, "the builders, u1 and l1", tnHasExactly(b1, b2, b3, u1, l1))
	})

	// What a builder's WhoIs says of its callers, which every trust
	// decision rests on: a tagged node is owned by its tags (the
	// tagged-devices user, headscale >= 0.28), a user's node by the user.
	t.Run("whois-tags-are-the-identity", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		who, err := b1.LocalClient.WhoIs(ctx, c.IPv4.String())
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(who.Node.Tags, []string{headscaletest.TagClient}) || who.UserProfile.LoginName != "tagged-devices" {
			t.Errorf("WhoIs(c1): tags %v, user %q; want [%s] owned by tagged-devices", who.Node.Tags, who.UserProfile.LoginName, headscaletest.TagClient)
		}
		who, err = b1.LocalClient.WhoIs(ctx, u1.IPv4.String())
		if err != nil {
			t.Fatal(err)
		}
		if len(who.Node.Tags) != 0 || who.UserProfile.LoginName != headscaletest.User {
			t.Errorf("WhoIs(u1): tags %v, user %q; want untagged, owned by %s", who.Node.Tags, who.UserProfile.LoginName, headscaletest.User)
		}
	})

	// --allow-cap: the builder serves only callers the policy grants the
	// capability (an `app` grant, headscale >= 0.29); a reloaded policy
	// without the grant shuts the laptop out, the grant back lets it in.
	t.Run("allow-cap-gated-by-grant", func(t *testing.T) {
		_, body := hsAdvert(t, b1)
		s := &advertise.TailnetServer{
			LocalAPI:  b1.LocalClient,
			Listen:    b1.Server.Listen,
			Advert:    func() ([]byte, error) { return body, nil },
			Port:      wire.DefaultAdvertPort + 2,
			AllowCaps: []tailcfg.PeerCapability{headscaletest.CapNix},
		}
		hsServe(t, s)
		url := "http://" + net.JoinHostPort(b1.FQDN, strconv.Itoa(s.Port)) + wire.AdvertPath
		hsWaitStatus(t, c, url, http.StatusOK, "granted laptop")
		for _, n := range []*tailnettest.Node{u1, l1, b2} {
			if code := hsStatus(t, n, url); code != http.StatusForbidden {
				t.Errorf("%s (no grant): status %d, want 403", n.Name, code)
			}
		}
		start := time.Now()
		hs.SetPolicy(t, headscaletest.NoCapPolicy)
		t.Cleanup(func() { hs.SetPolicy(t, headscaletest.DefaultPolicy) })
		hsWaitStatus(t, c, url, http.StatusForbidden, "laptop after the grant is removed")
		t.Logf("laptop refused %v after the policy reload began", time.Since(start).Round(time.Millisecond))
		hs.SetPolicy(t, headscaletest.DefaultPolicy)
		hsWaitStatus(t, c, url, http.StatusOK, "laptop after the grant is back")
	})

	// --enroll-allow-cap: a granted laptop enrols its key, an ungranted
	// node is refused with the reason; the key stops being valid when a
	// policy reload removes the grant.
	t.Run("enroll-allow-cap-gated-by-grant", func(t *testing.T) {
		_, body := hsAdvert(t, b1)
		enr := &advertise.Enroller{
			AllowCaps: []tailcfg.PeerCapability{headscaletest.CapNix},
			StorePath: filepath.Join(t.TempDir(), "enrolled.json"),
			User:      "nix-ssh",
			LocalAPI:  b1.LocalClient,
			CacheFor:  time.Millisecond,
		}
		s := &advertise.TailnetServer{
			LocalAPI: b1.LocalClient,
			Listen:   b1.Server.Listen,
			Advert:   func() ([]byte, error) { return body, nil },
			Port:     wire.DefaultAdvertPort + 3,
		}
		s.Handle("POST "+wire.EnrollPath, enr.Handler())
		hsServe(t, s)
		cand := discover.Candidate{Name: b1.FQDN, Address: b1.FQDN}
		enrol := func(n *tailnettest.Node) error {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			e := &tailnet.Enroller{Dial: n.Server.Dial, AdvertPort: s.Port, PublicKey: hsKey(t)}
			var err error
			for range 50 { // until the listener is bound
				// gVisor's netstack says "connection was refused".
				if err = e.Enroll(ctx, cand); err == nil || !(strings.Contains(err.Error(), "connection refused") || strings.Contains(err.Error(), "connection was refused")) {
					return err
				}
				time.Sleep(100 * time.Millisecond)
			}
			return err
		}
		if err := enrol(c); err != nil {
			t.Fatalf("granted laptop: %v", err)
		}
		err := enrol(u1)
		if err == nil || !strings.Contains(err.Error(), "caller lacks capability "+string(headscaletest.CapNix)) {
			t.Fatalf("ungranted node: %v, want refused for lacking the capability", err)
		}
		hsWaitValid(t, enr, c, true)
		start := time.Now()
		hs.SetPolicy(t, headscaletest.NoCapPolicy)
		t.Cleanup(func() { hs.SetPolicy(t, headscaletest.DefaultPolicy) })
		hsWaitValid(t, enr, c, false)
		t.Logf("enrolled key invalid %v after the policy reload began", time.Since(start).Round(time.Millisecond))
		hs.SetPolicy(t, headscaletest.DefaultPolicy)
		hsWaitValid(t, enr, c, true)
	})

	// Retagging at the server (`headscale nodes tag`; headscale keeps a
	// tagged node tagged, so "untag" is a tag without meaning to us)
	// removes the builder; its tag back, it returns.
	t.Run("retag-at-server-removes", func(t *testing.T) {
		run := tnStart(t, &tailnet.Source{LocalAPI: c.LocalClient, Dial: c.Server.Dial})
		_, i := run.wait(t, 0, wait, "b1, b2 and b3", tnHasExactly(b1, b2, b3))
		start := time.Now()
		hs.SetTags(t, b2, headscaletest.TagRetired)
		_, i = run.wait(t, i, wait, "b1 and b3 after b2 is retagged", tnHasExactly(b1, b3))
		t.Logf("retagged b2 left the snapshot %v after the CLI call began", time.Since(start).Round(time.Millisecond))
		hs.SetTags(t, b2, headscaletest.TagBuilder)
		run.wait(t, i, wait, "b1, b2 and b3 again", tnHasExactly(b1, b2, b3))
	})

	// A node removed at the server (`headscale nodes delete`) leaves.
	t.Run("deleted-at-server-leaves", func(t *testing.T) {
		run := tnStart(t, &tailnet.Source{LocalAPI: c.LocalClient, Dial: c.Server.Dial})
		_, i := run.wait(t, 0, wait, "b1, b2 and b3", tnHasExactly(b1, b2, b3))
		start := time.Now()
		hs.Delete(t, b3)
		// First the laptop's tailscaled must drop b3 from its netmap.
		hs.WaitPeerStatus(t, c, b3, "gone", func(ps *ipnstate.PeerStatus) bool { return ps == nil || !ps.Online })
		t.Logf("deleted b3 gone from the laptop's status %v after the CLI call began", time.Since(start).Round(time.Millisecond))
		run.wait(t, i, wait, "b1 and b2 after b3 is deleted", tnHasExactly(b1, b2))
		t.Logf("deleted b3 left the snapshot %v after the CLI call began", time.Since(start).Round(time.Millisecond))
	})
}

// hsAdvert is node's test advert and its JSON.
func hsAdvert(t *testing.T, n *tailnettest.Node) (*wire.Advert, []byte) {
	t.Helper()
	a := tnAdvertFor("advertised-" + n.Name)
	body, err := wire.EncodeJSON(a)
	if err != nil {
		t.Fatal(err)
	}
	return a, body
}

// hsServe runs s until the test ends.
func hsServe(t *testing.T, s *advertise.TailnetServer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// hsStatus is the status of GET url from node n, or 0 when the request
// fails (not bound yet).
func hsStatus(t *testing.T, n *tailnettest.Node, url string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := n.Server.HTTPClient().Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// hsWaitStatus waits (bounded) until GET url from n answers code.
func hsWaitStatus(t *testing.T, n *tailnettest.Node, url string, code int, who string) {
	t.Helper()
	deadline := time.Now().Add(headscaletest.Timeout)
	for {
		got := hsStatus(t, n, url)
		if got == code {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: status %d, want %d within %v", who, got, code, headscaletest.Timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// hsWaitValid waits (bounded) until n's enrolled key is valid or not.
func hsWaitValid(t *testing.T, e *advertise.Enroller, n *tailnettest.Node, want bool) {
	t.Helper()
	deadline := time.Now().Add(headscaletest.Timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		keys, err := e.ValidKeys(ctx)
		cancel()
		has := slices.ContainsFunc(keys, func(k advertise.EnrolledKey) bool { return k.NodeID == n.StableID })
		if err == nil && has == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s's enrolled key valid = %v (err %v), want %v within %v", n.Name, has, err, want, headscaletest.Timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// hsKey is a fresh SSH public key in authorized_keys form.
func hsKey(t *testing.T) string {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return advertise.AuthorizedKey(pk)
}
