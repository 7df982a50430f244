package tailnet

import (
	"net/netip"
	"slices"
	"strings"

	"tailscale.com/ipn"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// tnPeer is what the tailnet source needs to know about one peer, from the
// IPN bus (an initial ipnstate.Status, then whole tailcfg.Nodes and
// per-field patches).
type tnPeer struct {
	nodeID   tailcfg.NodeID
	stableID tailcfg.StableNodeID
	name     string       // MagicDNS FQDN without the trailing dot; may be empty
	addrs    []netip.Addr // tailnet addresses, IPv4 first as control sends them
	tags     []string     // nil when untagged
	online   bool
	// disco is the peer's disco key, which its tailscaled makes anew on
	// every start; zero when unknown (the initial status has none).
	disco key.DiscoPublic
}

// tnPeers is the peer table, keyed by node ID. It is only touched by the
// source's loop.
type tnPeers map[tailcfg.NodeID]*tnPeer

// apply folds one IPN bus notification into the table and reports whether
// any peer was added, removed or changed. An InitialStatus replaces the
// whole table; PeersChanged upserts whole nodes (tailscaled repeats
// unchanged ones), and with SelfChange (a full netmap) it is the whole
// peer set: peers missing from it are removed; PeerChangedPatch changes Online or the disco key of a
// known peer; PeersRemoved deletes. A whole node without a disco key keeps
// the one known.
func (p tnPeers) apply(n *ipn.Notify) (changed bool) {
	if st := n.InitialStatus; st != nil {
		old := p.clone()
		clear(p)
		for _, ps := range st.Peer {
			if ps == nil || ps.NodeID == 0 {
				continue
			}
			np := peerFromStatus(ps)
			if op := old[ps.NodeID]; op != nil {
				np.disco = op.disco // the status has none
			}
			p[ps.NodeID] = np
		}
		changed = !tnPeersEqual(old, p)
	}
	if n.SelfChange != nil && n.InitialStatus == nil && len(n.PeersChanged) > 0 {
		// A full netmap: tailscaled sends it as SelfChange with every
		// peer in PeersChanged and no PeersRemoved (headscale sends full
		// maps, e.g. after `headscale nodes delete`). A known peer not in
		// it is gone. An empty list is not trusted to mean "no peers".
		in := make(map[tailcfg.NodeID]bool, len(n.PeersChanged))
		for _, node := range n.PeersChanged {
			if node != nil {
				in[node.ID] = true
			}
		}
		for id := range p {
			if !in[id] {
				delete(p, id)
				changed = true
			}
		}
	}
	for _, node := range n.PeersChanged {
		if node == nil || node.ID == 0 {
			continue
		}
		np := peerFromNode(node)
		op := p[node.ID]
		if op != nil && np.disco.IsZero() {
			np.disco = op.disco
		}
		if op == nil || !op.equal(np) {
			p[node.ID] = np
			changed = true
		}
	}
	for _, pc := range n.PeerChangedPatch {
		if pc == nil {
			continue
		}
		op := p[pc.NodeID]
		if op == nil {
			continue
		}
		if pc.Online != nil && op.online != *pc.Online {
			op.online = *pc.Online
			changed = true
		}
		if pc.DiscoKey != nil && op.disco != *pc.DiscoKey {
			// Copy on write: the loop compares the entry's old peer.
			np := *op
			np.disco = *pc.DiscoKey
			p[pc.NodeID] = &np
			changed = true
		}
	}
	for _, id := range n.PeersRemoved {
		if _, ok := p[id]; ok {
			delete(p, id)
			changed = true
		}
	}
	return changed
}

func (p tnPeers) clone() tnPeers {
	out := make(tnPeers, len(p))
	for k, v := range p {
		c := *v
		out[k] = &c
	}
	return out
}

func tnPeersEqual(a, b tnPeers) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || !v.equal(w) {
			return false
		}
	}
	return true
}

func (a *tnPeer) equal(b *tnPeer) bool {
	return a.nodeID == b.nodeID && a.stableID == b.stableID && a.name == b.name &&
		a.online == b.online && a.disco == b.disco && slices.Equal(a.addrs, b.addrs) && slices.Equal(a.tags, b.tags)
}

func peerFromStatus(ps *ipnstate.PeerStatus) *tnPeer {
	p := &tnPeer{
		nodeID:   ps.NodeID,
		stableID: ps.ID,
		name:     strings.TrimSuffix(ps.DNSName, "."),
		addrs:    slices.Clone(ps.TailscaleIPs),
		online:   ps.Online,
	}
	if ps.Tags != nil && ps.Tags.Len() > 0 {
		p.tags = ps.Tags.AsSlice()
	}
	return p
}

func peerFromNode(n *tailcfg.Node) *tnPeer {
	p := &tnPeer{
		nodeID:   n.ID,
		stableID: n.StableID,
		name:     strings.TrimSuffix(n.Name, "."),
		online:   n.Online != nil && *n.Online,
		disco:    n.DiscoKey,
	}
	for _, pfx := range n.Addresses {
		if pfx.IsSingleIP() {
			p.addrs = append(p.addrs, pfx.Addr())
		}
	}
	if len(n.Tags) > 0 {
		p.tags = slices.Clone(n.Tags)
	}
	return p
}

// fetchAddr is the tailnet IP the advert is fetched from: the first IPv4
// address, else the first address.
func (p *tnPeer) fetchAddr() (netip.Addr, bool) {
	for _, a := range p.addrs {
		if a.Is4() {
			return a, true
		}
	}
	if len(p.addrs) > 0 {
		return p.addrs[0], true
	}
	return netip.Addr{}, false
}

// tnNameMatches reports whether a user-given builder name ("b1",
// "b1.tail1234.ts.net" or "b1.tail1234.ts.net.") names the peer with
// MagicDNS FQDN fqdn. A full name must equal fqdn; a short name matches
// only a peer of this tailnet, whose FQDN is the name then suffix (this
// tailnet's MagicDNS suffix, "tail1234.ts.net"): a node shared in from
// another tailnet ("ward.attacker.ts.net") never answers to "ward". With
// no suffix known, a short name matches nothing. Case does not matter.
func tnNameMatches(want, fqdn, suffix string) bool {
	want = strings.ToLower(strings.TrimSuffix(want, "."))
	fqdn = strings.ToLower(strings.TrimSuffix(fqdn, "."))
	suffix = strings.ToLower(strings.Trim(suffix, "."))
	if want == "" || fqdn == "" {
		return false
	}
	if want == fqdn {
		return true
	}
	return suffix != "" && !strings.Contains(want, ".") && fqdn == want+"."+suffix
}

// tnMagicDNSSuffix is this tailnet's MagicDNS suffix ("tail1234.ts.net")
// as a status says: its CurrentTailnet, else the legacy field, else the
// local node's own name less its first label; "" when none says.
func tnMagicDNSSuffix(st *ipnstate.Status) string {
	if st == nil {
		return ""
	}
	if st.CurrentTailnet != nil && st.CurrentTailnet.MagicDNSSuffix != "" {
		return strings.Trim(st.CurrentTailnet.MagicDNSSuffix, ".")
	}
	if st.MagicDNSSuffix != "" {
		return strings.Trim(st.MagicDNSSuffix, ".")
	}
	if st.Self != nil {
		if _, rest, ok := strings.Cut(strings.Trim(st.Self.DNSName, "."), "."); ok {
			return rest
		}
	}
	return ""
}
