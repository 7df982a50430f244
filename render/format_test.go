package render

import (
	"encoding/base64"
	"errors"
	"flag"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// keyB1Field is field 8 as Format writes it (no trailing newline in the key).
var keyB1Field = base64.StdEncoding.EncodeToString([]byte(keyB1))

var update = flag.Bool("update", false, "rewrite testdata/*.golden files")

// builder is a valid discovered machine to mutate in table rows.
func builder() Machine {
	return Machine{
		URI:               StoreURI{Scheme: "ssh-ng", User: "builder", Host: "b1.tail1234.ts.net"},
		Systems:           []string{"x86_64-linux", "i686-linux"},
		SSHKey:            "/var/lib/nixrb-discover/id_ed25519",
		MaxJobs:           8,
		SpeedFactor:       2,
		SupportedFeatures: []string{"big-parallel", "kvm"},
		HostKey:           keyB1,
	}
}

func TestValidateRejects(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Machine)
		field  string
	}{
		{"system-with-space", func(m *Machine) { m.Systems = []string{"x86_64 linux"} }, "systems"},
		{"system-with-newline-injects-line", func(m *Machine) { m.Systems = []string{"x86_64-linux\nevil x86_64-linux"} }, "systems"},
		{"system-with-comma", func(m *Machine) { m.Systems = []string{"x86_64-linux,aarch64-linux"} }, "systems"},
		{"system-with-hash", func(m *Machine) { m.Systems = []string{"x86_64-linux#"} }, "systems"},
		{"system-with-semicolon", func(m *Machine) { m.Systems = []string{"x86_64-linux;evil"} }, "systems"},
		{"system-empty-item", func(m *Machine) { m.Systems = []string{""} }, "systems"},
		{"no-systems", func(m *Machine) { m.Systems = nil }, "systems"},
		{"host-with-space", func(m *Machine) { m.URI.Host = "b1 x86_64-linux" }, "uri"},
		{"host-with-semicolon", func(m *Machine) { m.URI.Host = "b1;evil" }, "uri"},
		{"host-empty", func(m *Machine) { m.URI.Host = "" }, "uri"},
		{"host-control-char", func(m *Machine) { m.URI.Host = "b1\x00" }, "uri"},
		{"user-with-at", func(m *Machine) { m.URI.User = "a@b" }, "uri"},
		{"bad-scheme", func(m *Machine) { m.URI.Scheme = "http" }, "uri"},
		{"param-name-with-space", func(m *Machine) { m.URI.Params = url.Values{"a b": {"c"}} }, "uri"},
		{"opaque-with-space", func(m *Machine) { m.URI = StoreURI{Opaque: "local x"} }, "uri"},
		{"ssh-key-with-tab", func(m *Machine) { m.SSHKey = "/root/.ssh/id\tx" }, "ssh-key"},
		{"ssh-key-with-hash", func(m *Machine) { m.SSHKey = "/root/#id" }, "ssh-key"},
		{"negative-speed", func(m *Machine) { m.SpeedFactor = -1 }, "speed-factor"},
		{"nan-speed", func(m *Machine) { m.SpeedFactor = math.NaN() }, "speed-factor"},
		{"inf-speed", func(m *Machine) { m.SpeedFactor = math.Inf(1) }, "speed-factor"},
		{"feature-with-comma", func(m *Machine) { m.SupportedFeatures = []string{"kvm,nixos-test"} }, "supported-features"},
		{"mandatory-feature-with-space", func(m *Machine) { m.MandatoryFeatures = []string{"big parallel"} }, "mandatory-features"},
		{"host-key-garbage", func(m *Machine) { m.HostKey = "not a key" }, "host-key"},
		{"host-key-two-lines", func(m *Machine) { m.HostKey = keyB1 + "\n" + keyB2 }, "host-key"},
		{"host-key-with-options", func(m *Machine) { m.HostKey = `command="x" ` + keyB2 }, "host-key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := builder()
			tt.mutate(&m)
			err := m.Validate()
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("Validate = %v, want a *FieldError", err)
			}
			if fe.Field != tt.field {
				t.Errorf("field = %q, want %q (%v)", fe.Field, tt.field, err)
			}
			if !strings.Contains(err.Error(), "builder ") {
				t.Errorf("error %q does not name the builder", err)
			}
			if _, err := Format([]Machine{builder(), m}, FormatOptions{}); err == nil {
				t.Error("Format wrote an invalid machine")
			}
		})
	}
}

func TestFormatForNixVersion(t *testing.T) {
	m := builder()
	m.SpeedFactor = 1.5
	tests := []struct {
		name string
		v    NixVersion
		port int
		want string // the line, or the error's field
		err  bool
	}{
		{name: "2.8-rounds-speed", v: nix28, want: "ssh-ng://builder@b1.tail1234.ts.net x86_64-linux,i686-linux /var/lib/nixrb-discover/id_ed25519 8 2 big-parallel,kvm - " + keyB1Field},
		{name: "unknown-is-like-oldest", v: NixVersion{}, want: "ssh-ng://builder@b1.tail1234.ts.net x86_64-linux,i686-linux /var/lib/nixrb-discover/id_ed25519 8 2 big-parallel,kvm - " + keyB1Field},
		{name: "2.26-keeps-fraction", v: nix226, want: "ssh-ng://builder@b1.tail1234.ts.net x86_64-linux,i686-linux /var/lib/nixrb-discover/id_ed25519 8 1.5 big-parallel,kvm - " + keyB1Field},
		{name: "2.26-refuses-port", v: nix226, port: 2222, want: "uri", err: true},
		{name: "2.31-writes-port", v: nix231, port: 2222, want: "ssh-ng://builder@b1.tail1234.ts.net:2222 x86_64-linux,i686-linux /var/lib/nixrb-discover/id_ed25519 8 1.5 big-parallel,kvm - " + keyB1Field},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := m
			m.URI.Port = tt.port
			line, err := m.Line(tt.v)
			if tt.err {
				var fe *FieldError
				if !errors.As(err, &fe) || fe.Field != tt.want {
					t.Fatalf("Line = %q, %v; want error in field %s", line, err, tt.want)
				}
				return
			}
			if err != nil || line != tt.want {
				t.Fatalf("Line =\n %q, %v\nwant\n %q", line, err, tt.want)
			}
			back, err := ParseLine(line, ParseOptions{NixVersion: tt.v})
			if err != nil {
				t.Fatalf("Nix %s cannot read back %q: %v", tt.v, line, err)
			}
			if tt.v.FractionalSpeed() && !reflect.DeepEqual(back, m) {
				t.Errorf("round trip changed the machine:\n got  %#v\n want %#v", back, m)
			}
		})
	}
}

func TestSmallSpeedNeverRoundsToZeroOnOldNix(t *testing.T) {
	m := builder()
	m.SpeedFactor = 0.3
	line, err := m.Line(nix28)
	if err != nil {
		t.Fatal(err)
	}
	if f := strings.Fields(line)[4]; f != "1" {
		t.Errorf("speed field = %q, want 1", f)
	}
}

func TestFormatHeader(t *testing.T) {
	out, err := Format([]Machine{builder()}, FormatOptions{Header: "managed by nixrb-discover\ndo not edit"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(out), "# managed by nixrb-discover\n# do not edit\nssh-ng://") {
		t.Errorf("header not written as comments:\n%s", out)
	}
	if _, err := Format(nil, FormatOptions{Header: "a; b x86_64-linux"}); err == nil {
		t.Error("a header with ';' was accepted: Nix before 2.29 would read a machine from it")
	}
}

func TestMerge(t *testing.T) {
	static := builder()
	static.MaxJobs = 2
	static.URI.Host = "B1.tail1234.ts.net"
	disc := builder()
	other := builder()
	other.URI.Host = "a0.tail1234.ts.net"
	other2 := other
	other2.MaxJobs = 1

	got := Merge([]Machine{static}, []Machine{disc, other, other2})
	if len(got) != 2 {
		t.Fatalf("Merge returned %d machines, want 2: %v", len(got), got)
	}
	if got[0].URI.Host != "a0.tail1234.ts.net" || got[1].MaxJobs != 2 {
		t.Errorf("Merge = %v; want a0 first, then the static b1 (max jobs 2)", got)
	}
	if got[0].MaxJobs != 1 {
		t.Errorf("of two discovered entries for one host, kept %v; want the first in sort order", got[0])
	}
	again := Merge([]Machine{static}, []Machine{other2, other, disc})
	a, _ := Format(got, FormatOptions{})
	b, _ := Format(again, FormatOptions{})
	if string(a) != string(b) {
		t.Errorf("Merge is not deterministic:\n%s\n---\n%s", a, b)
	}
}

// TestGolden formats each testdata/*.machines file as CppNix 2.8 and
// 2.26, Lix 2.91 and 2.93 and Determinate Nix 3.8 would read it and
// compares with the .golden file.
func TestGolden(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.machines")
	if len(files) == 0 {
		t.Fatal("no testdata/*.machines files")
	}
	for _, f := range files {
		for _, v := range []NixVersion{nix28, nix226, lix291, lix293, det38} {
			t.Run(filepath.Base(f)+"/"+goldenName(v), func(t *testing.T) {
				var out strings.Builder
				es, err := ParseFile(f, ParseOptions{NixVersion: v, LocalSystem: "x86_64-linux"})
				if err != nil {
					out.WriteString("errors:\n" + strings.ReplaceAll(err.Error(), "testdata/", "") + "\n")
				}
				var ms []Machine
				for _, e := range es {
					ms = append(ms, e.Machine)
				}
				b, err := Format(Merge(nil, ms), FormatOptions{NixVersion: v})
				if err != nil {
					out.WriteString("format: " + err.Error() + "\n")
				}
				out.Write(b)
				golden := strings.TrimSuffix(f, ".machines") + "." + goldenName(v) + ".golden"
				if *update {
					writeFile(t, golden, out.String())
				}
				want, err := os.ReadFile(golden)
				if err != nil {
					t.Fatalf("%v (run go test ./render -run TestGolden -update)", err)
				}
				if out.String() != string(want) {
					t.Errorf("%s:\n%s\nwant:\n%s", golden, out.String(), want)
				}
			})
		}
	}
}

// goldenName is "nix-2.26.3", "lix-2.93.3" or "determinate-nix-3.8.2".
func goldenName(v NixVersion) string {
	return strings.ToLower(strings.ReplaceAll(v.Impl.String(), " ", "-")) + "-" + v.Release().String()
}
