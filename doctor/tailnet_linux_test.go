package doctor

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"tailscale.com/client/local"

	"github.com/nixrb-discover/nixrb-discover/internal/headscaletest"
	"github.com/nixrb-discover/nixrb-discover/internal/tailnettest"
)

// TestTailnetControlTagsAsIdentity: doctor tells from WhoIs whether the
// control server makes tags the owner of tagged nodes. A real headscale
// (>= 0.28) does: the check passes. testcontrol, like headscale before
// 0.28, keeps a user as the owner of a tagged node: the check fails and
// says to upgrade headscale.
func TestTailnetControlTagsAsIdentity(t *testing.T) {
	opts := Options{Timeout: 5 * time.Second}
	opts.defaults()
	run := func(t *testing.T, lapi TailnetAPI) Report {
		var r Report
		o := opts
		o.Tailnet = lapi
		checkTailnetControl(context.Background(), &r, o)
		return r
	}

	t.Run("headscale-owns-tagged-nodes-by-tags", func(t *testing.T) {
		hs := headscaletest.Start(t, headscaletest.Options{})
		b := hs.AddNode(t, "b1", headscaletest.TagBuilder)
		l := hs.AddNode(t, "laptop")
		hs.WaitPeer(t, l, b)
		r := run(t, l.LocalClient)
		if len(r.Checks) != 1 || !r.Checks[0].OK || !strings.Contains(r.Checks[0].Detail, "1 tagged peer(s): owned by tagged-devices") {
			t.Fatalf("checks %+v, want one passing check", r.Checks)
		}
	})

	t.Run("user-owned-tagged-node-means-too-old", func(t *testing.T) {
		tn := tailnettest.New(t)
		b := tn.AddNode(t, "b1", tailnettest.TagBuilder)
		l := tn.AddNode(t, "laptop")
		tn.WaitPeer(t, l, b)
		r := run(t, l.LocalClient)
		if len(r.Checks) != 1 || r.Checks[0].OK {
			t.Fatalf("checks %+v, want one failing check", r.Checks)
		}
		c := r.Checks[0]
		if !strings.Contains(c.Detail, "WhoIs "+b.FQDN+" ("+tailnettest.TagBuilder+") names user") ||
			!strings.Contains(c.Detail, "not tagged-devices") || !strings.Contains(c.Fix, "upgrade headscale to 0.28 or newer") {
			t.Fatalf("check %+v", c)
		}
		t.Logf("✘ %s: %s — fix: %s", c.Name, c.Detail, c.Fix)
	})

	// No tagged peer, or no tailscaled: nothing to tell, no check.
	t.Run("no-tagged-peer-no-check", func(t *testing.T) {
		tn := tailnettest.New(t)
		u := tn.AddNode(t, "u1")
		l := tn.AddNode(t, "laptop")
		tn.WaitPeer(t, l, u)
		if r := run(t, l.LocalClient); len(r.Checks) != 0 {
			t.Fatalf("no tagged peer: checks %+v, want none", r.Checks)
		}
		gone := &local.Client{Socket: filepath.Join(t.TempDir(), "tailscaled.sock"), UseSocketOnly: true}
		if r := run(t, gone); len(r.Checks) != 0 {
			t.Fatalf("no tailscaled: checks %+v, want none", r.Checks)
		}
	})
}
