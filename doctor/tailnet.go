package doctor

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"tailscale.com/client/local"
	"tailscale.com/client/tailscale/apitype"
	"tailscale.com/ipn/ipnstate"
)

// TailnetAPI is the part of the tailscaled LocalAPI doctor uses to judge
// the tailnet's control server. *local.Client satisfies it.
type TailnetAPI interface {
	Status(ctx context.Context) (*ipnstate.Status, error)
	WhoIs(ctx context.Context, remoteAddr string) (*apitype.WhoIsResponse, error)
}

var _ TailnetAPI = (*local.Client)(nil)

// TaggedDevicesLogin is the login name Tailscale and headscale (from 0.28)
// give the owner of every tagged node: the tags are its identity.
const TaggedDevicesLogin = "tagged-devices"

// maxTaggedWhoIs bounds the WhoIs calls of checkTailnetControl.
const maxTaggedWhoIs = 16

// checkTailnetControl asks WhoIs about the tagged peers of the local
// tailscaled: a control server that still shows a user as the owner of a
// tagged node predates tags as identity (headscale before 0.28, whose
// tags were split into forced, valid and invalid ones with known bugs),
// so tags, on which builder discovery and enrolment rest, are not to be
// trusted to follow the server's changes. No check is recorded when
// tailscaled does not answer or is not running (a LAN-only laptop), or
// when no peer is tagged (nothing to tell from).
func checkTailnetControl(ctx context.Context, r *Report, opts Options) {
	if opts.Tailnet == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 2*opts.Timeout)
	defer cancel()
	st, err := opts.Tailnet.Status(ctx)
	if err != nil || st.BackendState != "Running" {
		return
	}
	var tagged []*ipnstate.PeerStatus
	for _, ps := range st.Peer {
		if ps != nil && ps.Tags != nil && ps.Tags.Len() > 0 && len(ps.TailscaleIPs) > 0 {
			tagged = append(tagged, ps)
		}
	}
	if len(tagged) == 0 {
		return
	}
	slices.SortFunc(tagged, func(a, b *ipnstate.PeerStatus) int { return strings.Compare(a.DNSName, b.DNSName) })
	if len(tagged) > maxTaggedWhoIs {
		tagged = tagged[:maxTaggedWhoIs]
	}
	const name = "tailnet control server makes tags the identity of tagged nodes (Tailscale, headscale >= 0.28)"
	asked := 0
	for _, ps := range tagged {
		who, err := opts.Tailnet.WhoIs(ctx, ps.TailscaleIPs[0].String())
		if err != nil || who == nil || who.Node == nil || who.UserProfile == nil {
			continue // gone meanwhile; the others tell
		}
		asked++
		if len(who.Node.Tags) == 0 || who.UserProfile.LoginName == TaggedDevicesLogin {
			continue
		}
		r.fail(name,
			fmt.Sprintf("WhoIs %s (%s) names user %q as its owner, not %s: the control server predates tags as identity (headscale before 0.28)",
				strings.TrimSuffix(who.Node.Name, "."), strings.Join(who.Node.Tags, ","), who.UserProfile.LoginName, TaggedDevicesLogin),
			"upgrade headscale to 0.28 or newer (0.29 or newer where builders use --allow-cap or --enroll-allow-cap: those need its app grants)")
		return
	}
	if asked == 0 {
		return
	}
	r.pass(name, fmt.Sprintf("WhoIs of %d tagged peer(s): owned by %s", asked, TaggedDevicesLogin))
}
