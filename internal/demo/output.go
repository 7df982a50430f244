package demo

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
)

// banner says what the demo is and, plainly, what in it is real and what
// is simulated.
func (d *demo) banner() {
	fmt.Fprint(d.out, `nixrb-demo: nixrb-discover's main job, in one process, on 127.0.0.1 only

  real       the tailnet: Tailscale's tsnet nodes, testcontrol coordination
             server, DERP and STUN (WireGuard between the nodes, MagicDNS names)
  real       each builder's advertise agent (package advertise), serving
             GET /v1/advert on its tailnet address
  real       the client (package discover): the tailnet source on the
             LocalAPI, SSH + Nix handshake health checks, membership, and the
             machines file it writes
  simulated  the builders' facts (systems, features, jobs) are given, not
             read from a nix installation
  simulated  each builder's SSH endpoint on port 22 is an in-process SSH
             server: it answers the Nix daemon handshake (nix-daemon --stdio,
             worker protocol 1.37) but it cannot build

`)
}

// show prints the client's state as `nixrb-discover list --all` does and,
// with handshakes, what each builder's Nix handshake said.
func (d *demo) show(ctx context.Context, handshakes bool) error {
	sctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	st, err := d.client.Status(sctx)
	if err != nil {
		return fmt.Errorf("client status: %w", err)
	}
	fmt.Fprintln(d.out, "$ nixrb-discover list --all")
	st.WriteTable(d.out, true)
	if handshakes {
		for _, b := range st.Builders {
			if b.InFile {
				fmt.Fprintf(d.out, "  %s: SSH login as %s with the client key, host key as advertised, "+
					"nix-daemon --stdio handshake: Nix %q, user %s\n", b.Name, b.SSHUser, b.RemoteNix, b.TrustedUser)
			}
		}
	}
	fmt.Fprintln(d.out)
	return nil
}

// showPeers prints every peer the client's node sees, from its LocalAPI,
// and whether the tailnet source takes it as a candidate: a peer without
// the builder tag is never fetched nor checked, so `list --all` does not
// show it at all.
func (d *demo) showPeers(ctx context.Context, from *node) error {
	sctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	st, err := from.lc.Status(sctx)
	if err != nil {
		return fmt.Errorf("laptop status: %w", err)
	}
	type row struct{ name, tags, verdict string }
	var rows []row
	for _, p := range st.Peer {
		tags := "no tags"
		cand := "candidate: advert fetched, SSH + Nix handshake checked"
		if p.Tags == nil || !slices.Contains(p.Tags.AsSlice(), TagBuilder) {
			cand = "NOT a candidate (no " + TagBuilder + "): never fetched, never checked, never in the file"
		}
		if p.Tags != nil && p.Tags.Len() > 0 {
			tags = strings.Join(p.Tags.AsSlice(), ",")
		}
		rows = append(rows, row{strings.TrimSuffix(p.DNSName, "."), tags, cand})
	}
	slices.SortFunc(rows, func(a, b row) int { return strings.Compare(a.name, b.name) })
	fmt.Fprintln(d.out, "Why the untagged peer is not in that table: the peers laptop's tailnet node sees")
	fmt.Fprintln(d.out, "(its LocalAPI status), and what the tailnet source makes of each:")
	tw := tabwriter.NewWriter(d.out, 0, 0, 2, ' ', 0)
	for _, r := range rows {
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", r.name, r.tags, r.verdict)
	}
	tw.Flush()
	fmt.Fprintln(d.out)
	return nil
}

// cat prints the machines file as Nix reads it.
func (d *demo) cat() error {
	b, err := os.ReadFile(d.machines)
	if err != nil {
		return fmt.Errorf("read the machines file: %w", err)
	}
	fmt.Fprintf(d.out, "$ cat %s\n%s\n", d.machines, b)
	return nil
}
