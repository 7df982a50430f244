package nixtest

import (
	"fmt"
	"runtime"
)

// Version selects the Nix release a builder or client runs.
type Version int

const (
	// V28 is Nix 2.8.0, Debian bookworm's nix-bin, run from the host.
	V28 Version = iota + 1
	// V226 is Nix 2.26, Debian trixie's nix-bin, run from a chroot
	// (see [EnsureTrixie]).
	V226
)

// Versions lists every available lane, oldest first. Tests range over it
// and name subtests by [Version.String].
var Versions = []Version{V28, V226}

// String returns the lane name used for subtests: "nix-2.8" or "nix-2.26".
func (v Version) String() string {
	switch v {
	case V28:
		return "nix-2.8"
	case V226:
		return "nix-2.26"
	}
	return fmt.Sprintf("nix-version(%d)", int(v))
}

func (v Version) valid() bool { return v == V28 || v == V226 }

// System is the Nix system double of this machine, such as "x86_64-linux".
var System = func() string {
	switch runtime.GOARCH {
	case "amd64":
		return "x86_64-linux"
	case "arm64":
		return "aarch64-linux"
	case "386":
		return "i686-linux"
	}
	return runtime.GOARCH + "-linux"
}()
