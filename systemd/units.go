package systemd

import (
	"bytes"
	"embed"
	"fmt"
	"path"
	"strings"
	"unicode"
)

// The unit files, as installed.
const (
	// AdvertiseUnit runs the builder agent (nixrb-discover advertise).
	AdvertiseUnit = "nixrb-discover-advertise.service"
	// ClientUnit runs the client (nixrb-discover client).
	ClientUnit = "nixrb-discover-client.service"
	// DefaultBinary is the program ExecStart= runs in the embedded units.
	DefaultBinary = "/usr/bin/nixrb-discover"
)

//go:embed nixrb-discover-advertise.service nixrb-discover-client.service
var unitFiles embed.FS

// UnitNames returns the names of the embedded unit files, sorted.
func UnitNames() []string {
	return []string{AdvertiseUnit, ClientUnit}
}

// Units returns the embedded unit files by name (see [UnitNames]). Each
// call returns fresh copies that the caller may change.
func Units() map[string][]byte {
	m := make(map[string][]byte)
	for _, name := range UnitNames() {
		b, err := unitFiles.ReadFile(name)
		if err != nil {
			panic("systemd: embedded unit missing: " + name) // a build error, not a runtime one
		}
		m[name] = b
	}
	return m
}

// WithBinary returns unit with its ExecStart= lines running bin instead
// of [DefaultBinary], for a binary installed elsewhere (go install puts
// it in $GOBIN). bin must be a clean absolute path that needs no quoting
// in a unit file: no whitespace, quotes, backslash or '%'.
func WithBinary(unit []byte, bin string) ([]byte, error) {
	if bin == DefaultBinary {
		return unit, nil
	}
	if !path.IsAbs(bin) || path.Clean(bin) != bin {
		return nil, fmt.Errorf("binary %q: want a clean absolute path", bin)
	}
	if i := strings.IndexFunc(bin, func(r rune) bool {
		return unicode.IsSpace(r) || unicode.IsControl(r) || strings.ContainsRune(`"'\%;`, r)
	}); i >= 0 {
		return nil, fmt.Errorf("binary %q: %q would need quoting in a unit file", bin, bin[i:i+1])
	}
	const prefix = "ExecStart=" + DefaultBinary + " "
	lines := bytes.SplitAfter(unit, []byte("\n"))
	n := 0
	for i, l := range lines {
		if bytes.HasPrefix(l, []byte(prefix)) {
			lines[i] = append([]byte("ExecStart="+bin+" "), l[len(prefix):]...)
			n++
		}
	}
	if n == 0 {
		return nil, fmt.Errorf("no ExecStart=%s line to change", DefaultBinary)
	}
	return bytes.Join(lines, nil), nil
}
