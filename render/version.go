package render

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Implementation is which Nix reads the machines file. Three are in wide
// use and each reads it by its own rules: CppNix (NixOS/nix), Determinate
// Nix (a distribution of CppNix with its own release numbers) and Lix (a
// fork of CppNix 2.18 with its own numbering from 2.90).
type Implementation uint8

// The implementations the client knows. The zero value is CppNix, so that
// NixVersion{Major: 2, Minor: 26} means CppNix 2.26.
const (
	CppNix Implementation = iota
	DeterminateNix
	Lix
)

// String returns the implementation's own name ("Nix" for CppNix, as
// `nix --version` says it).
func (i Implementation) String() string {
	switch i {
	case CppNix:
		return "Nix"
	case DeterminateNix:
		return "Determinate Nix"
	case Lix:
		return "Lix"
	}
	return "Implementation(" + strconv.Itoa(int(i)) + ")"
}

// Release is a version number such as 2.30.1. Pre is a pre-release
// suffix ("pre20250101_abcdef", "-dev-pre20250117-0d14c2b", "-beta.1"),
// empty for a release.
type Release struct {
	Major, Minor, Patch int
	Pre                 string
}

// String returns "2.30.1" (with the pre-release suffix, if any).
func (r Release) String() string {
	return fmt.Sprintf("%d.%d.%d%s", r.Major, r.Minor, r.Patch, r.Pre)
}

// atLeast reports whether r has every change of release major.minor. A
// pre-release of major.minor.0 is built before that release was cut, so
// it is taken to have only what major.(minor-1) has: the conservative
// reading, since a rule's change may not have landed yet in that build.
func (r Release) atLeast(major, minor int) bool {
	m := r.Minor
	if r.Pre != "" && r.Patch == 0 {
		m--
	}
	if r.Major != major {
		return r.Major > major
	}
	return m >= minor
}

// NixVersion is the Nix that will read the machines file: which
// implementation and which release. The zero value means "unknown":
// [Format] then writes what every Nix since 2.8 reads (whole speed
// factors, no port in URIs) and the parser applies the oldest rules.
//
// Every rule the client keys on the version is a method of NixVersion
// ([NixVersion.PortStyle], [NixVersion.FractionalSpeed],
// [NixVersion.CommentEndsAtNewline], [NixVersion.BuildsOnUntrustedDaemon],
// [NixVersion.SlotLockNames], [NixVersion.MinDaemonProtocol]), each with
// the source and release that decided it.
type NixVersion struct {
	// Impl is the implementation; zero is CppNix.
	Impl Implementation
	// Major, Minor, Patch and Pre are the implementation's own release:
	// CppNix 2.31.2, Determinate Nix 3.8.2, Lix 2.93.3.
	Major, Minor, Patch int
	Pre                 string
	// Upstream is, for Determinate Nix, the CppNix release it is built
	// on ("nix (Determinate Nix 3.8.2) 2.30.1": 2.30.1). It decides the
	// rules. Zero for the other implementations.
	Upstream Release
}

// CppNixVersion returns CppNix major.minor.patch.
func CppNixVersion(major, minor, patch int) NixVersion {
	return NixVersion{Impl: CppNix, Major: major, Minor: minor, Patch: patch}
}

// LixVersion returns Lix major.minor.patch.
func LixVersion(major, minor, patch int) NixVersion {
	return NixVersion{Impl: Lix, Major: major, Minor: minor, Patch: patch}
}

// DeterminateVersion returns Determinate Nix release, built on CppNix
// upstream.
func DeterminateVersion(release, upstream Release) NixVersion {
	return NixVersion{Impl: DeterminateNix, Major: release.Major, Minor: release.Minor, Patch: release.Patch,
		Pre: release.Pre, Upstream: upstream}
}

// Known reports whether the version is set.
func (v NixVersion) Known() bool { return v != NixVersion{} }

// Release returns the implementation's own release number.
func (v NixVersion) Release() Release {
	return Release{Major: v.Major, Minor: v.Minor, Patch: v.Patch, Pre: v.Pre}
}

// String names the implementation and release the file is written for:
// "Nix 2.26.3", "Lix 2.93.3", "Determinate Nix 3.8.2 (Nix 2.30.1)", or
// "an unknown Nix". [ParseNixVersion] reads it back (but the unknown one).
func (v NixVersion) String() string {
	switch {
	case !v.Known():
		return "an unknown Nix"
	case v.Impl == DeterminateNix:
		return fmt.Sprintf("%s %s (Nix %s)", v.Impl, v.Release(), v.Upstream)
	}
	return v.Impl.String() + " " + v.Release().String()
}

// Token is the version as one word without spaces or commas, the form an
// advert's nix_version carries (wire refuses both): "2.26.3" for CppNix
// (as adverts always said), "lix-2.93.3", "determinate-3.8.2-nix-2.30.1",
// or "" when unknown. [ParseNixVersion] reads it back.
func (v NixVersion) Token() string {
	switch {
	case !v.Known():
		return ""
	case v.Impl == Lix:
		return "lix-" + v.Release().String()
	case v.Impl == DeterminateNix:
		return "determinate-" + v.Release().String() + "-nix-" + v.Upstream.String()
	}
	return v.Release().String()
}

// cppNix returns the CppNix release whose machines-file code v runs:
// CppNix itself, or the one Determinate Nix is built on. ok is false for
// Lix and for an unknown version.
func (v NixVersion) cppNix() (Release, bool) {
	switch {
	case !v.Known():
		return Release{}, false
	case v.Impl == CppNix:
		return v.Release(), true
	case v.Impl == DeterminateNix:
		return v.Upstream, v.Upstream != Release{}
	}
	return Release{}, false
}

func (v NixVersion) lixAtLeast(major, minor int) bool {
	return v.Impl == Lix && v.Release().atLeast(major, minor)
}

func (v NixVersion) cppAtLeast(major, minor int) bool {
	r, ok := v.cppNix()
	return ok && r.atLeast(major, minor)
}

// PortStyle is how a machines-file store URI names an SSH port other
// than 22.
type PortStyle uint8

// The ways a port can reach Nix.
const (
	// PortAlias: the URI cannot carry a port; the host must be an
	// ssh_config Host alias that sets it.
	PortAlias PortStyle = iota
	// PortInHost: ssh://user@host:port (IPv6 as [addr]:port).
	PortInHost
	// PortParam: a store parameter, ssh://user@host?port=N.
	PortParam
)

// String names the style as list and doctor show it.
func (p PortStyle) String() string {
	switch p {
	case PortInHost:
		return "host:port"
	case PortParam:
		return "?port="
	}
	return "ssh_config alias"
}

// PortStyle says how this Nix reads an SSH port in a store URI.
//
//   - CppNix 2.31 and Determinate Nix on 2.31: host:port. NixOS/nix
//     doc/manual/source/release-notes/rl-2.31.md, "Add support for
//     user@address:port syntax in store URIs" (#7044, #3425): before, Nix
//     passed "host:port" to ssh as the host name. Checked by the real
//     lanes: 2.8 and 2.26 fail on "127.0.0.1:2222".
//   - Lix 2.93: the store parameter ?port=N. lix-project/lix
//     doc/manual/src/release-notes/rl-2.93.md, "Allow specifying ports
//     for remote ssh[-ng] stores" (cl/2432); lix/libstore
//     CommonSSHStoreConfig gains the "port" setting, which ssh-store.cc
//     passes to SSH. Lix's URI code stays that of CppNix 2.18, which
//     reads host:port as a host name, so host:port is never written for
//     Lix.
//   - Everything else, and an unknown version: no port in the URI, an
//     ssh_config alias (the conservative choice, which every Nix reads).
func (v NixVersion) PortStyle() PortStyle {
	switch {
	case v.cppAtLeast(2, 31):
		return PortInHost
	case v.lixAtLeast(2, 93):
		return PortParam
	}
	return PortAlias
}

// FractionalSpeed reports whether this Nix reads a speed factor such as
// 2.5; otherwise it reads only unsigned integers and the file gets the
// factor rounded.
//
//   - CppNix (and Determinate Nix on) 2.20 and later parse the field as a
//     float (src/libstore/machines.cc; 2.19 and before use
//     parseUnsignedIntField, "failed to convert column #4 ... to
//     'unsigned int'"). Checked by the real lanes: 2.8 rejects "1.5",
//     2.26 accepts it.
//   - Lix: lix/libstore/machines.cc on main parses it with
//     string2Float<float>, but the first Lix release that does is not
//     established here, so Lix gets whole numbers (conservative: every
//     Lix reads an integer).
func (v NixVersion) FractionalSpeed() bool {
	return v.cppAtLeast(2, 20)
}

// CommentEndsAtNewline reports whether a '#' comment runs to the end of
// the line. Otherwise the text is first split on newlines and ';', and a
// comment ends at the next ';' ("# a; b" still lists machine b).
//
//   - CppNix 2.29 (and Determinate Nix on it): NixOS/nix#12984 "Fix ';'
//     and '#' bug in machine file parsing" (src/libstore/machines.cc
//     expandBuilderLines: tokenize on "\n", erase from '#', then split on
//     ';'). The PR was also marked for backport to 2.28; a 2.28 point
//     release may have it, but 2.28 is read here by the old rule.
//   - Lix: every release up to main splits on "\n;" before erasing from
//     '#' (lix/libstore/machines.cc expandBuilderLines, kept as
//     machines_legacy_parsing on main): the old rule.
//
// The writer never depends on it: a header line may not contain ';' and
// no machine line contains '#', so both rules read what Format writes.
func (v NixVersion) CommentEndsAtNewline() bool {
	return v.cppAtLeast(2, 29)
}

// BuildsOnUntrustedDaemon reports whether this Nix, as the client, can
// build input-addressed derivations on a remote daemon that does not
// trust its SSH user: it sees from the handshake that it is not trusted
// and copies the .drv closure and builds it by path, which an untrusted
// user may do, instead of sending a bare BasicDerivation ("you are not
// privileged to build input-addressed derivations").
//
//   - CppNix 2.16 (and Determinate Nix, whose 3.0 is on 2.26):
//     NixOS/nix#3921 "Trustless remote building for input-addressed
//     drvs" (src/build-remote/build-remote.cc), which needs the trust bit
//     of the 2.15 handshake (rl-2.15.md: "Nix when used as a client now
//     checks whether the store trusts the client"); nix-community/infra
//     #735 dropped trusted-users for its builders on that basis for "nix
//     >= 2.16". Checked here by the real lanes: 2.8 fails, 2.26 builds.
//   - Lix: every release (lix/legacy/build-remote.cc, trustedOrLegacy:
//     the same code, inherited from CppNix 2.18).
//   - Unknown: no (conservative: an untrusted builder is left out).
func (v NixVersion) BuildsOnUntrustedDaemon() bool {
	return v.cppAtLeast(2, 16) || v.Impl == Lix && v.Known()
}

// SlotLockNaming is how this Nix's build hook names its slot lock files
// in current-load/.
type SlotLockNaming uint8

// The slot lock namings.
const (
	// SlotLocksUnknown: not known here; hold no locks.
	SlotLocksUnknown SlotLockNaming = iota
	// SlotLocksLegacy: the machines file's URI string, '/' escaped (CppNix
	// before 2.21).
	SlotLocksLegacy
	// SlotLocksRendered: the URI as Nix renders its parsed store
	// reference (CppNix 2.21 and later).
	SlotLocksRendered
)

// SlotLockNames says how this Nix names its build hook's slot locks, so
// that the client can hold them for a failing builder.
//
//   - CppNix before 2.21: the URI string; from 2.21, the rendered store
//     reference (src/build-remote/build-remote.cc openSlotLock; see
//     discover/slots for the escaping). Determinate Nix: its upstream's.
//   - Lix: lix/legacy/build-remote.cc makeLockFilename names a lock by
//     the first 48 bytes of the escaped URI and 16 characters of its
//     SHA-256; the release that introduced it is not established here,
//     so no locks are held for Lix (conservative: a failing builder then
//     leaves the file at once, as without a state directory).
//   - Unknown: the oldest rule, legacy.
func (v NixVersion) SlotLockNames() SlotLockNaming {
	r, ok := v.cppNix()
	switch {
	case !v.Known():
		return SlotLocksLegacy // the oldest rules, as everywhere
	case !ok:
		return SlotLocksUnknown
	case r.atLeast(2, 21):
		return SlotLocksRendered
	}
	return SlotLocksLegacy
}

// MinDaemonProtocol is the oldest worker protocol (1.N: the minor N)
// this Nix still speaks to a remote daemon over ssh-ng; 0 means no limit
// that matters for the builders the client meets (CppNix 2.8 speaks
// 1.32).
//
//   - Lix 2.94: 35. lix-project/lix rl-2.94.md "Remove support for daemon
//     protocols before 2.18" (cl/3249): remote builders with an older
//     daemon are reachable only through ssh://;
//     lix/libstore/worker-protocol.hh
//     MIN_SUPPORTED_MINOR_WORKER_PROTO_VERSION 35.
//   - CppNix, Determinate Nix, older Lix: 0.
func (v NixVersion) MinDaemonProtocol() int {
	if v.lixAtLeast(2, 94) {
		return 35
	}
	return 0
}

// MaxVersionInput bounds what ParseNixVersion reads.
const MaxVersionInput = 4096

var (
	// number: a release, e.g. 2.26.3, 2.31, 2.27.0pre20250205_9df2d7b,
	// 2.92.0-dev-pre20250117-0d14c2b, 2.90.0-beta.1.
	numberPart = `(\d{1,4})\.(\d{1,4})(?:\.(\d{1,4}))?((?:pre|-)[A-Za-z0-9_.+-]{1,64})?`
	plainRE    = regexp.MustCompile(`^` + numberPart + `$`)
	// nix (Nix) 2.26.3; nix-env (Nix) 2.8.0; nix (Lix, like Nix) 2.93.3;
	// nix (Determinate Nix 3.8.2) 2.30.1.
	nixVersionRE = regexp.MustCompile(`^nix(?:-[a-z-]{1,16})? \(([^()]{1,64})\) ` + numberPart + `$`)
	// Our own String(): Nix 2.26.3, Lix 2.93.3, Determinate Nix 3.8.2 (Nix 2.30.1).
	ownRE = regexp.MustCompile(`^(Nix|Lix|Determinate Nix) ` + numberPart + `(?: \(Nix ` + numberPart + `\))?$`)
	// The implementation inside the parentheses.
	determinateRE = regexp.MustCompile(`^Determinate Nix ` + numberPart + `$`)
	// Token(): lix-2.93.3, determinate-3.8.2-nix-2.30.1.
	lixTokenRE         = regexp.MustCompile(`^lix-` + numberPart + `$`)
	determinateTokenRE = regexp.MustCompile(`^determinate-` + numberPart + `-nix-` + numberPart + `$`)
)

// ErrNixVersion is wrapped by every error of ParseNixVersion.
var ErrNixVersion = errors.New(`want the output of nix --version ("nix (Nix) 2.26.3", ` +
	`"nix (Determinate Nix 3.8.2) 2.30.1", "nix (Lix, like Nix) 2.93.3") or a CppNix version such as 2.26.3`)

// ParseNixVersion reads what `nix --version` prints (its first line:
// Lix 2.92 and later print more) or a plain CppNix version "2.26.3":
//
//	nix (Nix) 2.31.2                     CppNix 2.31.2
//	nix (Determinate Nix 3.8.2) 2.30.1   Determinate Nix 3.8.2 on CppNix 2.30.1
//	nix (Lix, like Nix) 2.93.3           Lix 2.93.3
//	2.26.3                               CppNix 2.26.3
//
// It also reads what [NixVersion.String] and [NixVersion.Token] write.
// Anything else is an
// error wrapping [ErrNixVersion]; so is a Lix release below 2.90 or a
// Determinate Nix without its upstream version.
func ParseNixVersion(s string) (NixVersion, error) {
	in := s
	if len(s) > MaxVersionInput {
		s = s[:MaxVersionInput]
	}
	s, _, _ = strings.Cut(strings.TrimLeft(s, " \t\r\n"), "\n")
	s = strings.TrimSpace(s)
	bad := func(why string) (NixVersion, error) {
		if len(in) > 80 {
			in = in[:80] + "…"
		}
		return NixVersion{}, fmt.Errorf("parse nix version %q: %s: %w", in, why, ErrNixVersion)
	}
	if m := plainRE.FindStringSubmatch(s); m != nil {
		return checked(NixVersion{Impl: CppNix}, release(m[1:5]), Release{}, bad)
	}
	if m := lixTokenRE.FindStringSubmatch(s); m != nil {
		return checked(NixVersion{Impl: Lix}, release(m[1:5]), Release{}, bad)
	}
	if m := determinateTokenRE.FindStringSubmatch(s); m != nil {
		return checked(NixVersion{Impl: DeterminateNix}, release(m[1:5]), release(m[5:9]), bad)
	}
	if m := ownRE.FindStringSubmatch(s); m != nil {
		impl := map[string]Implementation{"Nix": CppNix, "Lix": Lix, "Determinate Nix": DeterminateNix}[m[1]]
		var up Release
		if m[6] != "" {
			if impl != DeterminateNix {
				return bad("only Determinate Nix names an upstream Nix")
			}
			up = release(m[6:10])
		}
		return checked(NixVersion{Impl: impl}, release(m[2:6]), up, bad)
	}
	m := nixVersionRE.FindStringSubmatch(s)
	if m == nil {
		return bad("not a version")
	}
	name, last := m[1], release(m[2:6])
	switch {
	case name == "Nix":
		return checked(NixVersion{Impl: CppNix}, last, Release{}, bad)
	case name == "Lix" || strings.HasPrefix(name, "Lix,"):
		return checked(NixVersion{Impl: Lix}, last, Release{}, bad)
	}
	if d := determinateRE.FindStringSubmatch(name); d != nil {
		return checked(NixVersion{Impl: DeterminateNix}, release(d[1:5]), last, bad)
	}
	return bad(fmt.Sprintf("unknown Nix implementation %q", name))
}

// checked fills v with its release (and upstream) and refuses what no
// implementation has released.
func checked(v NixVersion, r, up Release, bad func(string) (NixVersion, error)) (NixVersion, error) {
	v.Major, v.Minor, v.Patch, v.Pre = r.Major, r.Minor, r.Patch, r.Pre
	v.Upstream = up
	switch {
	case v.Impl == Lix && (r.Major != 2 || r.Minor < 90):
		return bad("Lix numbers its releases from 2.90")
	case v.Impl == DeterminateNix && up == Release{}:
		return bad("Determinate Nix without the Nix version it is built on")
	case v.Impl == DeterminateNix && (up.Major != 2 || up.Minor < 8):
		return bad("Determinate Nix on a Nix before 2.8")
	case r.Major == 0:
		return bad("version 0")
	}
	return v, nil
}

// release reads the 4 submatches of numberPart.
func release(m []string) Release {
	var r Release
	r.Major, _ = strconv.Atoi(m[0])
	r.Minor, _ = strconv.Atoi(m[1])
	if m[2] != "" {
		r.Patch, _ = strconv.Atoi(m[2])
	}
	r.Pre = m[3]
	return r
}
