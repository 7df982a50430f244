package render

import (
	"bytes"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// FormatOptions say which Nix the file is written for.
type FormatOptions struct {
	// NixVersion selects what Nix can read (see [NixVersion]); unknown
	// writes what every Nix since 2.8 reads.
	NixVersion NixVersion
	// Header is written first, each line as a '#' comment. It must not
	// contain ';' (before Nix 2.29 a comment ends there) or control
	// characters.
	Header string
}

// Format validates each machine and writes the file: the header, then one
// line per machine in the order given. It fails on the first invalid
// machine, with a *FieldError; nothing is written for a bad machine.
func Format(machines []Machine, opts FormatOptions) ([]byte, error) {
	var b bytes.Buffer
	if opts.Header != "" {
		for _, l := range strings.Split(strings.TrimRight(opts.Header, "\n"), "\n") {
			if strings.ContainsRune(l, ';') || strings.IndexFunc(l, isControl) >= 0 {
				return nil, fmt.Errorf("format header: %q contains ';' or a control character", l)
			}
			b.WriteString(strings.TrimRight("# "+l, " "))
			b.WriteByte('\n')
		}
	}
	for _, m := range machines {
		line, err := m.Line(opts.NixVersion)
		if err != nil {
			return nil, err
		}
		b.WriteString(line)
		b.WriteByte('\n')
	}
	return b.Bytes(), nil
}

// Line validates m and returns its machines-file line for Nix version v,
// without a newline.
func (m Machine) Line(v NixVersion) (string, error) {
	if err := m.Validate(); err != nil {
		return "", err
	}
	line, err := m.line(v)
	if err != nil {
		return "", err
	}
	if strings.ContainsAny(line, "\n\r;#") {
		// Validate makes this impossible; refuse rather than corrupt.
		return "", errors.New("render: internal error: line would split")
	}
	return line, nil
}

// Merge combines a user's static machines with discovered ones: a static
// entry wins over a discovered one for the same host (compared without
// case), and of two discovered entries for one host the first in sort
// order is kept. The result is sorted by host, then line, so that equal
// sets always format to equal bytes.
func Merge(static, discovered []Machine) []Machine {
	byHost := make(map[string]Machine, len(static)+len(discovered))
	for _, m := range static {
		k := hostKey(m)
		if old, ok := byHost[k]; !ok || m.String() < old.String() {
			byHost[k] = m
		}
	}
	staticHosts := make(map[string]bool, len(byHost))
	for k := range byHost {
		staticHosts[k] = true
	}
	for _, m := range discovered {
		k := hostKey(m)
		if staticHosts[k] {
			continue
		}
		if old, ok := byHost[k]; !ok || m.String() < old.String() {
			byHost[k] = m
		}
	}
	out := make([]Machine, 0, len(byHost))
	for _, m := range byHost {
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool {
		ki, kj := hostKey(out[i]), hostKey(out[j])
		if ki != kj {
			return ki < kj
		}
		return out[i].String() < out[j].String()
	})
	return out
}

func hostKey(m Machine) string { return strings.ToLower(m.Name()) }
