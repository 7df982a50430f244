package render

import (
	"fmt"
	"regexp"
	"strconv"
)

// NixVersion is the version of the Nix that will read the machines file.
// The zero value means "unknown": [Format] then writes what every Nix
// since 2.8 reads (whole speed factors, no port in URIs) and the parser
// applies the oldest comment rule.
type NixVersion struct {
	Major, Minor, Patch int
}

var versionRE = regexp.MustCompile(`(\d+)\.(\d+)(?:\.(\d+))?`)

// ParseNixVersion reads a version such as "2.26.3" or the output of
// `nix --version` ("nix (Nix) 2.8.0").
func ParseNixVersion(s string) (NixVersion, error) {
	m := versionRE.FindStringSubmatch(s)
	if m == nil {
		return NixVersion{}, fmt.Errorf("parse nix version %q: no version number", s)
	}
	var v NixVersion
	v.Major, _ = strconv.Atoi(m[1])
	v.Minor, _ = strconv.Atoi(m[2])
	if m[3] != "" {
		v.Patch, _ = strconv.Atoi(m[3])
	}
	return v, nil
}

// Known reports whether the version is set.
func (v NixVersion) Known() bool { return v != NixVersion{} }

// AtLeast reports whether v is major.minor or newer. An unknown version is
// older than every version.
func (v NixVersion) AtLeast(major, minor int) bool {
	if v.Major != major {
		return v.Major > major
	}
	return v.Minor >= minor
}

// String returns "2.26.3", or "unknown".
func (v NixVersion) String() string {
	if !v.Known() {
		return "unknown"
	}
	return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Patch)
}
