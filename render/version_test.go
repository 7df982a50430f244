package render

import (
	"errors"
	"strings"
	"testing"
)

// recordedVersions are `nix --version` outputs as users' machines print
// them (CppNix 2.8 is Debian's nix-bin; the Determinate Nix and Lix lines
// are copied from public setup notes and Lix's release notes), with what
// each one is.
var recordedVersions = []struct {
	out  string
	want NixVersion
}{
	{"nix (Nix) 2.8.0", CppNixVersion(2, 8, 0)},
	{"nix (Nix) 2.13.6", CppNixVersion(2, 13, 6)},
	{"nix (Nix) 2.15.3", CppNixVersion(2, 15, 3)},
	{"nix (Nix) 2.16.2", CppNixVersion(2, 16, 2)},
	{"nix (Nix) 2.18.1", CppNixVersion(2, 18, 1)},
	{"nix (Nix) 2.19.3", CppNixVersion(2, 19, 3)},
	{"nix (Nix) 2.20.9", CppNixVersion(2, 20, 9)},
	{"nix (Nix) 2.24.10", CppNixVersion(2, 24, 10)},
	{"nix (Nix) 2.26.3", CppNixVersion(2, 26, 3)},
	{"nix (Nix) 2.28.4", CppNixVersion(2, 28, 4)},
	{"nix (Nix) 2.29.1", CppNixVersion(2, 29, 1)},
	{"nix (Nix) 2.30.2", CppNixVersion(2, 30, 2)},
	{"nix (Nix) 2.31.2", CppNixVersion(2, 31, 2)},
	{"nix (Nix) 2.33.1", CppNixVersion(2, 33, 1)},
	{"nix (Nix) 2.35.1\n", CppNixVersion(2, 35, 1)},
	{"nix-env (Nix) 2.8.0", CppNixVersion(2, 8, 0)},
	{"nix (Nix) 2.31.0pre20250712_b1b6ec35", NixVersion{Impl: CppNix, Major: 2, Minor: 31, Pre: "pre20250712_b1b6ec35"}},
	{"nix (Determinate Nix 3.4.1) 2.28.2", DeterminateVersion(Release{Major: 3, Minor: 4, Patch: 1}, Release{Major: 2, Minor: 28, Patch: 2})},
	{"nix (Determinate Nix 3.8.2) 2.30.1", DeterminateVersion(Release{Major: 3, Minor: 8, Patch: 2}, Release{Major: 2, Minor: 30, Patch: 1})},
	{"nix (Determinate Nix 3.17.3) 2.33.3", DeterminateVersion(Release{Major: 3, Minor: 17, Patch: 3}, Release{Major: 2, Minor: 33, Patch: 3})},
	{"nix (Determinate Nix 3.22.1) 2.35.2", DeterminateVersion(Release{Major: 3, Minor: 22, Patch: 1}, Release{Major: 2, Minor: 35, Patch: 2})},
	{"nix (Lix, like Nix) 2.90.0", LixVersion(2, 90, 0)},
	{"nix (Lix, like Nix) 2.91.1", LixVersion(2, 91, 1)},
	{"nix (Lix, like Nix) 2.92.0", LixVersion(2, 92, 0)},
	{"nix (Lix, like Nix) 2.93.3", LixVersion(2, 93, 3)},
	{"nix (Lix, like Nix) 2.94.0", LixVersion(2, 94, 0)},
	// Lix 2.92 and later print details after the first line.
	{"nix (Lix, like Nix) 2.92.0-dev-pre20250117-0d14c2b\nSystem type: x86_64-linux\nAdditional system types: i686-linux, x86_64-v1-linux\n" +
		"Data directory: /nix/store/rliimcnqkplrqdgm4z6yqclpr6c32wh6-lix-2.92.0-dev-pre20250117-0d14c2b/share\n",
		NixVersion{Impl: Lix, Major: 2, Minor: 92, Pre: "-dev-pre20250117-0d14c2b"}},
	{"nix (Lix, like Nix) 2.90.0-beta.1\nSystem type: aarch64-darwin\n", NixVersion{Impl: Lix, Major: 2, Minor: 90, Pre: "-beta.1"}},
	// An advert's nix_version (advertise's nixVersionToken writes these).
	{"lix-2.93.3", LixVersion(2, 93, 3)},
	{"determinate-3.8.2-nix-2.30.1", DeterminateVersion(Release{Major: 3, Minor: 8, Patch: 2}, Release{Major: 2, Minor: 30, Patch: 1})},
	// The --nix-version flag's plain form is CppNix.
	{"2.26.3", CppNixVersion(2, 26, 3)},
	{"2.31", CppNixVersion(2, 31, 0)},
}

func TestParseNixVersionReadsEveryImplementation(t *testing.T) {
	for _, tt := range recordedVersions {
		got, err := ParseNixVersion(tt.out)
		if err != nil || got != tt.want {
			t.Errorf("ParseNixVersion(%q) = %#v, %v; want %#v", tt.out, got, err, tt.want)
			continue
		}
		// What String writes (list, doctor, the flag) and Token writes
		// (an advert's nix_version) read back.
		for _, s := range []string{got.String(), got.Token()} {
			if back, err := ParseNixVersion(s); err != nil || back != got {
				t.Errorf("ParseNixVersion(%q) = %#v, %v; want %#v", s, back, err, got)
			}
		}
		if tok := got.Token(); strings.ContainsAny(tok, " ,;#") || tok == "" {
			t.Errorf("%s: token %q is not one word", got, tok)
		}
	}
}

// The table: the number a naive "first X.Y.Z" parser takes is
// wrong for two of the three implementations.
func TestParseNixVersionIsNotFooledByTheFirstNumber(t *testing.T) {
	det, _ := ParseNixVersion("nix (Determinate Nix 3.8.2) 2.30.1")
	if det.PortStyle() != PortAlias || det.String() != "Determinate Nix 3.8.2 (Nix 2.30.1)" {
		t.Errorf("Determinate Nix 3.8.2 on 2.30.1: %s, port %s; want the 2.30 rule (alias)", det, det.PortStyle())
	}
	lix, _ := ParseNixVersion("nix (Lix, like Nix) 2.93.3")
	if lix.PortStyle() != PortParam || lix.CommentEndsAtNewline() || lix.String() != "Lix 2.93.3" {
		t.Errorf("Lix 2.93.3: %s, port %s, comment rule new %v; want ?port= and the old comment rule", lix, lix.PortStyle(), lix.CommentEndsAtNewline())
	}
}

func TestParseNixVersionRefusesWhatItCannotName(t *testing.T) {
	for _, in := range []string{
		"", "nix", "nix (Nix)", "2", "v2.26.3", "nix (Nix) 2.26.3 extra",
		"nix (Tvix) 0.1.0",                   // another implementation: its rules are unknown
		"nix (Determinate Nix 3.15.2)",       // no upstream version: the rules are unknown
		"nix (Lix, like Nix) 2.18.3",         // Lix numbers from 2.90
		"nix (Nix) 99999.1.1",                // out of bounds
		"Lix 2.93.3 (Nix 2.18.3)",            // only Determinate Nix names an upstream
		"nix (Nix) 2.26.3\x00",               // control character
		strings.Repeat("9", MaxVersionInput), // long
	} {
		v, err := ParseNixVersion(in)
		if err == nil {
			t.Errorf("ParseNixVersion(%q) = %v, want an error", in, v)
			continue
		}
		if !errors.Is(err, ErrNixVersion) || !strings.Contains(err.Error(), `nix (Lix, like Nix) 2.93.3`) {
			t.Errorf("ParseNixVersion(%q): error %q does not say what is wanted", in, err)
		}
	}
}

// Every rule the client keys on the version, per implementation and
// release, at the releases that changed it.
func TestRulesFollowTheSourceOfEachImplementation(t *testing.T) {
	det := func(up Release) NixVersion { return DeterminateVersion(Release{Major: 3, Minor: 9}, up) }
	tests := []struct {
		v          NixVersion
		port       PortStyle
		fraction   bool
		newComment bool
		untrusted  bool
		locks      SlotLockNaming
		minProto   int
	}{
		{NixVersion{}, PortAlias, false, false, false, SlotLocksLegacy, 0},
		{nix28, PortAlias, false, false, false, SlotLocksLegacy, 0},
		{CppNixVersion(2, 15, 3), PortAlias, false, false, false, SlotLocksLegacy, 0},
		{CppNixVersion(2, 16, 0), PortAlias, false, false, true, SlotLocksLegacy, 0},
		{CppNixVersion(2, 20, 0), PortAlias, true, false, true, SlotLocksLegacy, 0},
		{CppNixVersion(2, 21, 0), PortAlias, true, false, true, SlotLocksRendered, 0},
		{CppNixVersion(2, 28, 4), PortAlias, true, false, true, SlotLocksRendered, 0},
		{CppNixVersion(2, 29, 0), PortAlias, true, true, true, SlotLocksRendered, 0},
		{CppNixVersion(2, 30, 2), PortAlias, true, true, true, SlotLocksRendered, 0},
		{CppNixVersion(2, 31, 0), PortInHost, true, true, true, SlotLocksRendered, 0},
		{CppNixVersion(2, 35, 1), PortInHost, true, true, true, SlotLocksRendered, 0},
		// A pre-release of 2.31 may predate the change: the 2.30 rules.
		{NixVersion{Impl: CppNix, Major: 2, Minor: 31, Pre: "pre20250712_b1b6ec35"}, PortAlias, true, true, true, SlotLocksRendered, 0},
		{det(Release{Major: 2, Minor: 30, Patch: 1}), PortAlias, true, true, true, SlotLocksRendered, 0},
		{det(Release{Major: 2, Minor: 31, Patch: 0}), PortInHost, true, true, true, SlotLocksRendered, 0},
		{LixVersion(2, 90, 0), PortAlias, false, false, true, SlotLocksUnknown, 0},
		{LixVersion(2, 92, 0), PortAlias, false, false, true, SlotLocksUnknown, 0},
		{LixVersion(2, 93, 0), PortParam, false, false, true, SlotLocksUnknown, 0},
		{NixVersion{Impl: Lix, Major: 2, Minor: 93, Pre: "-dev-pre20250301-abcdef0"}, PortAlias, false, false, true, SlotLocksUnknown, 0},
		{LixVersion(2, 94, 0), PortParam, false, false, true, SlotLocksUnknown, 35},
	}
	for _, tt := range tests {
		v := tt.v
		if v.PortStyle() != tt.port || v.FractionalSpeed() != tt.fraction || v.CommentEndsAtNewline() != tt.newComment ||
			v.BuildsOnUntrustedDaemon() != tt.untrusted || v.SlotLockNames() != tt.locks || v.MinDaemonProtocol() != tt.minProto {
			t.Errorf("%s: port %s, fraction %v, comment to newline %v, untrusted builds %v, locks %v, min protocol %d; "+
				"want %s, %v, %v, %v, %v, %d", v, v.PortStyle(), v.FractionalSpeed(), v.CommentEndsAtNewline(),
				v.BuildsOnUntrustedDaemon(), v.SlotLockNames(), v.MinDaemonProtocol(),
				tt.port, tt.fraction, tt.newComment, tt.untrusted, tt.locks, tt.minProto)
		}
	}
}

// For every recorded `nix --version`, the line the client writes for a
// builder on port 2222 and on 22 is read by that implementation's parser
// (the model in nixmodel_test.go) as a connection to the builder's host
// and port: host:port, ?port= or, where the URI cannot carry a port, an
// ssh_config alias (Line refuses the port; the client then writes the
// alias as the host).
func TestEveryNixReadsTheLineWrittenForIt(t *testing.T) {
	for _, rec := range recordedVersions {
		v := rec.want
		for _, port := range []int{2222, 22} {
			m := builder()
			if port != 22 {
				m.URI.Port = port
			}
			m.SpeedFactor = 2.5
			line, err := m.Line(v)
			wantHost, wantPort := m.URI.Host, port
			if err != nil {
				if port == 22 || v.PortStyle() != PortAlias || !strings.Contains(err.Error(), "ssh_config Host alias") {
					t.Errorf("%s, port %d: Line: %v", v, port, err)
					continue
				}
				// What the client writes instead: the alias, whose
				// ssh_config entry carries HostName and Port.
				m.URI.Host, m.URI.Port = "nixrb-b1", 0
				if line, err = m.Line(v); err != nil {
					t.Errorf("%s: alias line: %v", v, err)
					continue
				}
				wantHost, wantPort = "nixrb-b1", 22
			}
			got, err := modelRead(v, "# managed by nixrb-discover\n"+line+"\n")
			if err != nil || len(got) != 1 {
				t.Errorf("%s, port %d: %q: the implementation reads %d machines, %v", v, port, line, len(got), err)
				continue
			}
			g := got[0]
			if g.host != wantHost || g.port != wantPort || g.user != "builder" || g.scheme != "ssh-ng" || len(g.params) != 0 {
				t.Errorf("%s, port %d: %q connects to %s://%s@%s port %d (settings %v); want %s port %d",
					v, port, line, g.scheme, g.user, g.host, g.port, g.params, wantHost, wantPort)
			}
			if want := map[bool]float64{true: 2.5, false: 3}[v.FractionalSpeed()]; g.speed != want {
				t.Errorf("%s: %q: speed factor read as %v, want %v", v, line, g.speed, want)
			}
		}
	}
}

// The model is strict enough to catch the bug: host:port written
// for Determinate Nix 3.8.2 (CppNix 2.30) reaches host "b1...:2222".
func TestModelCatchesHostPortForANixBefore231(t *testing.T) {
	m := builder()
	m.URI.Port = 2222
	line, err := m.Line(newest)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []NixVersion{det38, lix293, nix226} {
		got, err := modelRead(v, line)
		if err != nil || len(got) != 1 {
			t.Fatalf("%s: %v", v, err)
		}
		if got[0].host == m.URI.Host && got[0].port == 2222 {
			t.Errorf("the model of %s reads %q as host %s port 2222; %s cannot", v, line, m.URI.Host, v)
		}
	}
	// And the comment rules differ where the sources say so.
	text := "# a comment; b9 x86_64-linux\n"
	for _, tt := range []struct {
		v    NixVersion
		want int
	}{{nix28, 1}, {CppNixVersion(2, 29, 0), 0}, {lix293, 1}} {
		if got, _ := modelRead(tt.v, text); len(got) != tt.want {
			t.Errorf("model of %s reads %d machines from %q, want %d", tt.v, len(got), text, tt.want)
		}
		if es, _ := Parse([]byte(text), ParseOptions{NixVersion: tt.v}); len(es) != tt.want {
			t.Errorf("Parse as %s reads %d machines from %q, want %d", tt.v, len(es), text, tt.want)
		}
	}
}
