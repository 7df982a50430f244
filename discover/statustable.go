package discover

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"unicode"
	"unicode/utf8"
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
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%g\t%s\t%s\t%s\t%s\n", TerminalSafe(b.Name), TerminalSafe(string(b.State)), TerminalSafe(b.Source),
			TerminalSafe(strings.Join(b.Systems, ",")), b.MaxJobs, b.SpeedFactor, rtt, in, TerminalSafe(slotsColumn(b.Slots)), TerminalSafe(why))
	}
	tw.Flush()
	if hidden > 0 {
		fmt.Fprintf(w, "(%d more not in the file: list --all shows them and why)\n", hidden)
	}
	for _, src := range s.Sources {
		switch {
		case src.State == SourceStarting:
			fmt.Fprintf(w, "source %s is starting: nothing heard from it yet\n", TerminalSafe(src.Name))
		case !src.OK:
			fmt.Fprintf(w, "source %s is down: %s (its last builders are kept)\n", TerminalSafe(src.Name), TerminalSafe(src.Error))
		}
	}
	if s.ConfigError != "" {
		fmt.Fprintf(w, "config not applied, running on the previous one: %s\n", TerminalSafe(s.ConfigError))
	}
	if s.WriteError != "" {
		fmt.Fprintf(w, "cannot write %s: %s\n", TerminalSafe(s.MachinesFile), TerminalSafe(s.WriteError))
	}
	nix := s.Nix
	if nix == "" { // a status from a client before the implementation was named
		nix = "Nix " + s.NixVersion
	}
	fmt.Fprintf(w, "machines file: %s (written for %s); client key %s %s\n", TerminalSafe(s.MachinesFile), TerminalSafe(nix),
		TerminalSafe(s.ClientKey), TerminalSafe(s.ClientKeyFingerprint))
}

// TerminalSafe returns s as it is when every rune of it is printable
// (unicode.IsPrint: no control characters such as ESC, tab or newline,
// no format characters such as bidi overrides, valid UTF-8), else quoted
// and escaped as strconv.Quote does, as log/slog's text handler quotes
// values. Builder names, reasons and errors come from adverts and peers:
// printed raw, a name holding escape sequences could redraw the table
// (a forged "healthy" row) or a hint to copy and paste.
func TerminalSafe(s string) string {
	if !utf8.ValidString(s) {
		return strconv.Quote(s)
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
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
