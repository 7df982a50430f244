package launchd

import (
	_ "embed"
	"fmt"
	"path"
	"strings"
	"unicode"
)

// The client's launchd job, as installed.
const (
	// ClientLabel is the job's label and its plist's base name.
	ClientLabel = "org.nixrb-discover.client"
	// ClientPlist is the file name under /Library/LaunchDaemons.
	ClientPlist = ClientLabel + ".plist"
	// DefaultDir is where launchd reads system daemons from at boot.
	DefaultDir = "/Library/LaunchDaemons"
	// DefaultBinary is the program the embedded plist runs: /usr/bin is
	// read-only on macOS (SIP), /usr/local/bin is where installs go.
	DefaultBinary = "/usr/local/bin/nixrb-discover"
	// LogFile takes the client's stdout and stderr (its slog lines).
	LogFile = "/var/log/nixrb-discover-client.log"
	// StateDir holds the SSH key and the machines file: the same path as
	// on Linux, so the machines lines, nix.conf's builders = @FILE and
	// the docs are one. /var is /private/var, writable and kept across
	// reboots (unlike /run, which macOS does not have, and the read-only
	// system volume).
	StateDir = "/var/lib/nixrb-discover"
)

//go:embed org.nixrb-discover.client.plist
var clientPlist []byte

// Client returns the client's plist, running bin (a clean absolute path
// that needs no escaping in XML: no whitespace, control characters or
// any of <>&'"). Each call returns a fresh copy.
func Client(bin string) ([]byte, error) {
	if !path.IsAbs(bin) || path.Clean(bin) != bin {
		return nil, fmt.Errorf("binary %q: want a clean absolute path", bin)
	}
	if i := strings.IndexFunc(bin, func(r rune) bool {
		return unicode.IsSpace(r) || unicode.IsControl(r) || strings.ContainsRune(`<>&'"`, r)
	}); i >= 0 {
		return nil, fmt.Errorf("binary %q: %q would need escaping in a plist", bin, bin[i:i+1])
	}
	const old = "<string>" + DefaultBinary + "</string>"
	s := string(clientPlist)
	if strings.Count(s, old) != 1 {
		return nil, fmt.Errorf("embedded plist: want one %s", old) // a build error, not a runtime one
	}
	return []byte(strings.Replace(s, old, "<string>"+bin+"</string>", 1)), nil
}
