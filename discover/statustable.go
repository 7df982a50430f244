package discover

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// WriteTable writes the status as `nixrb-discover list` shows it: an
// aligned table of builders (only those in the machines file unless all
// is set) with why each is or is not used, then sources that are down,
// a failed write, and the file and client key.
func (s *Status) WriteTable(w io.Writer, all bool) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "BUILDER\tSTATE\tSOURCE\tSYSTEMS\tJOBS\tSPEED\tRTT\tIN FILE\tSLOTS\tWHY")
	hidden := 0
	for _, b := range s.Builders {
		if !all && !b.InFile {
			hidden++
			continue
		}
		rtt := "-"
		if b.RTTMillis > 0 {
			rtt = fmt.Sprintf("%.1fms", b.RTTMillis)
		}
		why := b.Reason
		if !b.Trusted {
			why = b.Trust
			if b.TrustHint != "" {
				why += " (trust it with " + b.TrustHint + ")"
			}
		}
		if why == "" {
			why = b.Trust
		}
		in := "no"
		if b.InFile {
			in = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%g\t%s\t%s\t%s\t%s\n", b.Name, b.State, b.Source,
			strings.Join(b.Systems, ","), b.MaxJobs, b.SpeedFactor, rtt, in, slotsColumn(b.Slots), why)
	}
	tw.Flush()
	if hidden > 0 {
		fmt.Fprintf(w, "(%d more not in the file: list --all shows them and why)\n", hidden)
	}
	for _, src := range s.Sources {
		switch {
		case src.State == SourceStarting:
			fmt.Fprintf(w, "source %s is starting: nothing heard from it yet\n", src.Name)
		case !src.OK:
			fmt.Fprintf(w, "source %s is down: %s (its last builders are kept)\n", src.Name, src.Error)
		}
	}
	if s.ConfigError != "" {
		fmt.Fprintf(w, "config not applied, running on the previous one: %s\n", s.ConfigError)
	}
	if s.WriteError != "" {
		fmt.Fprintf(w, "cannot write %s: %s\n", s.MachinesFile, s.WriteError)
	}
	nix := s.Nix
	if nix == "" { // a status from a client before the implementation was named
		nix = "Nix " + s.NixVersion
	}
	fmt.Fprintf(w, "machines file: %s (written for %s); client key %s %s\n", s.MachinesFile, nix, s.ClientKey, s.ClientKeyFingerprint)
}

// slotsColumn shows a builder's slots: "-" when none is held or used,
// else how many are held and why, and how many the local Nix builds on.
func slotsColumn(s *SlotsStatus) string {
	if s == nil {
		return "-"
	}
	var parts []string
	if s.Held > 0 {
		parts = append(parts, fmt.Sprintf("%d/%d held (%s)", s.Held, s.Max, s.Reason))
	}
	if s.NixRunning > 0 {
		parts = append(parts, fmt.Sprintf("%d/%d building here", s.NixRunning, s.Max))
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ", ")
}
