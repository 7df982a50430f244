package render

import (
	"math"
	"net/url"
	"reflect"
	"strings"
	"testing"
)

// FuzzParse feeds arbitrary text to the parser as every Nix version rule
// set: it must never panic, and every machine it accepts that is valid
// must format to exactly one line that parses back to the same machine.
func FuzzParse(f *testing.F) {
	f.Add([]byte("ssh-ng://builder@b1.tail1234.ts.net x86_64-linux,i686-linux /etc/nix/id 8 2 big-parallel,kvm - " + keyB1B64 + "\n"))
	f.Add([]byte("b1 - - - - - - -; b2 x86_64-linux # comment; b3\n"))
	f.Add([]byte("ssh://root@[fd7a::1]:22 x86_64-linux - 1 1.5\n"))
	f.Add([]byte("local?root=/x aarch64-linux\n@/nonexistent\n"))
	f.Add([]byte("ssh://b?remote-store=daemon&x=%20 x86_64-linux - 4294967295 0 a,b,,c -\n"))
	for _, v := range []NixVersion{{}, nix28, nix226, nix231, lix291, lix293, det38} {
		f.Add([]byte(v.String()))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, v := range []NixVersion{nix28, nix226, nix231, lix291, lix293, det38} {
			es, _ := Parse(data, ParseOptions{NixVersion: v, LocalSystem: "x86_64-linux"})
			for _, e := range es {
				m := e.Machine
				if m.Validate() != nil {
					continue
				}
				roundTrip(t, m, v)
			}
		}
	})
}

// FuzzFormat builds machines from arbitrary field values: Format either
// refuses them with an error or writes exactly one line that Nix's rules
// read back to the same machine. No input may produce a second line.
func FuzzFormat(f *testing.F) {
	f.Add("ssh-ng", "builder", "b1.ts.net", 0, "remote-store", "daemon", "x86_64-linux,i686-linux", "/etc/nix/id", uint32(8), 2.0, "kvm,big-parallel", "", keyB1)
	f.Add("ssh", "", "fd7a:115c:a1e0::1", 2222, "", "", "x86_64-linux", "", uint32(1), 1.5, "", "benchmark", "")
	f.Add("ssh", "u", "b1\nevil", 0, "", "", "x86_64-linux", "", uint32(1), 1.0, "", "", "")
	f.Add("ssh", "u", "b1", 0, "", "", "x86_64-linux;b2 x86_64-linux", "", uint32(1), 1.0, "", "", "")
	f.Add("ssh", "u", "b1", 0, "a", "x y\n", "x86_64-linux", "-", uint32(1), math.Inf(1), "-", "#", keyB1+"\n"+keyB2)
	f.Fuzz(func(t *testing.T, scheme, user, host string, port int, pk, pv, systems, key string, jobs uint32, speed float64, sup, mand, hostKey string) {
		m := Machine{
			URI:               StoreURI{Scheme: scheme, User: user, Host: host, Port: port},
			Systems:           splitNonNil(systems),
			SSHKey:            key,
			MaxJobs:           jobs,
			SpeedFactor:       speed,
			SupportedFeatures: featureSet(strings.Split(sup, ",")),
			MandatoryFeatures: featureSet(strings.Split(mand, ",")),
			HostKey:           hostKey,
		}
		if pk != "" {
			m.URI.Params = url.Values{pk: {pv}}
		}
		for _, v := range []NixVersion{nix28, nix226, nix231, lix291, lix293, det38} {
			out, err := Format([]Machine{m}, FormatOptions{NixVersion: v})
			if err != nil {
				continue
			}
			if n := strings.Count(string(out), "\n"); n != 1 || !strings.HasSuffix(string(out), "\n") {
				t.Fatalf("Format(%#v) wrote %d lines: %q", m, n, out)
			}
			if strings.ContainsAny(strings.TrimSuffix(string(out), "\n"), ";#\r") {
				t.Fatalf("Format(%#v) wrote a separator: %q", m, out)
			}
			roundTrip(t, m, v)
		}
	})
}

func splitNonNil(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

// roundTrip checks Parse(Format(m)) == m for Nix version v (speed factors
// are compared as that Nix writes them).
func roundTrip(t *testing.T, m Machine, v NixVersion) {
	t.Helper()
	out, err := Format([]Machine{m}, FormatOptions{NixVersion: v})
	if err != nil {
		if m.URI.Port != 0 && v.PortStyle() == PortAlias {
			return // this Nix needs an ssh_config alias for a port
		}
		t.Fatalf("valid machine %#v does not format for Nix %s: %v", m, v, err)
	}
	es, err := Parse(out, ParseOptions{NixVersion: v})
	if err != nil || len(es) != 1 {
		t.Fatalf("Nix %s cannot read back %q: %d machines, %v", v, out, len(es), err)
	}
	want := m
	if !v.FractionalSpeed() {
		want.SpeedFactor = es[0].Machine.SpeedFactor
		if math.Abs(want.SpeedFactor-m.SpeedFactor) > 0.5 && !(m.SpeedFactor > 0 && m.SpeedFactor < 1) {
			t.Fatalf("speed %v written for Nix %s as %v", m.SpeedFactor, v, want.SpeedFactor)
		}
	}
	if len(want.URI.Params) == 0 {
		want.URI.Params = nil
	}
	if !reflect.DeepEqual(es[0].Machine, want) {
		t.Fatalf("round trip for Nix %s changed the machine:\n line %q\n got  %#v\n want %#v", v, out, es[0].Machine, want)
	}
}

// FuzzParseNixVersion feeds arbitrary `nix --version` output (outside
// input: the local nix, the --nix-version flag, an advert) to the parser:
// it must never panic, and every version it accepts must be one it can
// name and read back, with rules that do not depend on anything but the
// implementation and release.
func FuzzParseNixVersion(f *testing.F) {
	for _, rec := range recordedVersions {
		f.Add(rec.out)
	}
	f.Add("nix (Determinate Nix 3.15.2)")
	f.Add("nix (Tvix) 0.1.0")
	f.Add("Determinate Nix 3.8.2 (Nix 2.30.1)")
	f.Add("determinate-3.8.2-nix-2.30.1")
	f.Add("lix-2.92.0-dev-pre20250117-0d14c2b")
	f.Add("nix (Nix) 2.26.3\r\n")
	f.Add("\n\nnix (Lix, like Nix) 2.93.3")
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseNixVersion(s)
		if err != nil {
			if v != (NixVersion{}) {
				t.Fatalf("ParseNixVersion(%q) failed (%v) but returned %#v", s, err, v)
			}
			if len(err.Error()) > 1024 {
				t.Fatalf("error for %q is %d bytes long", s, len(err.Error()))
			}
			return
		}
		if !v.Known() {
			t.Fatalf("ParseNixVersion(%q) accepted the unknown version", s)
		}
		for _, form := range []string{v.String(), v.Token()} {
			back, err := ParseNixVersion(form)
			if err != nil || back != v {
				t.Fatalf("ParseNixVersion(%q) = %#v; %q reads back as %#v, %v", s, v, form, back, err)
			}
		}
		if v.Impl == Lix && (v.FractionalSpeed() || v.CommentEndsAtNewline() || v.PortStyle() == PortInHost) {
			t.Fatalf("%s has CppNix rules", v)
		}
	})
}
