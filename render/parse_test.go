package render

import (
	"encoding/base64"
	"errors"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const (
	keyB1    = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILcjA05f27PGgzW51QPw76OTKd8d7AHNN2Ppew8iSDkd root@b1"
	keyB2    = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIES7pfa2S97qRyd63h3rbGp4cXJVx+WgOpAqVCoFqE9u"
	keyB1B64 = "c3NoLWVkMjU1MTkgQUFBQUMzTnphQzFsWkRJMU5URTVBQUFBSUxjakEwNWYyN1BHZ3pXNTFRUHc3Nk9US2Q4ZDdBSE5OMlBwZXc4aVNEa2Qgcm9vdEBiMQo="
)

var (
	nix28  = CppNixVersion(2, 8, 0)
	nix226 = CppNixVersion(2, 26, 3)
	nix231 = CppNixVersion(2, 31, 0)
	lix291 = LixVersion(2, 91, 1)
	lix293 = LixVersion(2, 93, 3)
	det38  = DeterminateVersion(Release{Major: 3, Minor: 8, Patch: 2}, Release{Major: 2, Minor: 30, Patch: 1})
)

func TestParseLineAccepts(t *testing.T) {
	tests := []struct {
		name string
		line string
		v    NixVersion
		want Machine
	}{
		{
			name: "full-line-nixos-manual-style",
			line: "ssh-ng://builder@b1.tail1234.ts.net x86_64-linux,i686-linux /etc/nix/id_builder 8 2 big-parallel,kvm - " + keyB1B64,
			v:    nix28,
			want: Machine{URI: StoreURI{Scheme: "ssh-ng", User: "builder", Host: "b1.tail1234.ts.net"},
				Systems: []string{"x86_64-linux", "i686-linux"}, SSHKey: "/etc/nix/id_builder", MaxJobs: 8, SpeedFactor: 2,
				SupportedFeatures: []string{"big-parallel", "kvm"}, HostKey: keyB1},
		},
		{
			// Nix prepends ssh:// to a bare host and fills defaults.
			name: "bare-host-defaults",
			line: "b1",
			v:    nix28,
			want: Machine{URI: StoreURI{Scheme: "ssh", Host: "b1"}, Systems: []string{"x86_64-linux"}, MaxJobs: 1, SpeedFactor: 1},
		},
		{
			name: "dashes-are-empty",
			line: "root@b1 - - - - - - -",
			v:    nix28,
			want: Machine{URI: StoreURI{Scheme: "ssh", User: "root", Host: "b1"}, Systems: []string{"x86_64-linux"}, MaxJobs: 1, SpeedFactor: 1},
		},
		{
			// Features are a set: sorted, deduplicated, empty items dropped.
			name: "features-are-a-set",
			line: "ssh://b1 x86_64-linux - 1 1 kvm,,big-parallel,kvm nixos-test,benchmark",
			v:    nix28,
			want: Machine{URI: StoreURI{Scheme: "ssh", Host: "b1"}, Systems: []string{"x86_64-linux"}, MaxJobs: 1, SpeedFactor: 1,
				SupportedFeatures: []string{"big-parallel", "kvm"}, MandatoryFeatures: []string{"benchmark", "nixos-test"}},
		},
		{
			name: "float-speed-on-2.26",
			line: "ssh://b1 x86_64-linux - 4 1.5",
			v:    nix226,
			want: Machine{URI: StoreURI{Scheme: "ssh", Host: "b1"}, Systems: []string{"x86_64-linux"}, MaxJobs: 4, SpeedFactor: 1.5},
		},
		{
			name: "tabs-and-params",
			line: "ssh-ng://b1?remote-store=daemon\tx86_64-linux\t-\t2",
			v:    nix28,
			want: Machine{URI: StoreURI{Scheme: "ssh-ng", Host: "b1", Params: url.Values{"remote-store": {"daemon"}}},
				Systems: []string{"x86_64-linux"}, MaxJobs: 2, SpeedFactor: 1},
		},
		{
			name: "port-on-2.31",
			line: "ssh-ng://b1:2222 x86_64-linux",
			v:    nix231,
			want: Machine{URI: StoreURI{Scheme: "ssh-ng", Host: "b1", Port: 2222}, Systems: []string{"x86_64-linux"}, MaxJobs: 1, SpeedFactor: 1},
		},
		{
			name: "bare-ipv6-address",
			line: "ssh://root@fd7a:115c:a1e0::1 x86_64-linux",
			v:    nix28,
			want: Machine{URI: StoreURI{Scheme: "ssh", User: "root", Host: "fd7a:115c:a1e0::1"}, Systems: []string{"x86_64-linux"}, MaxJobs: 1, SpeedFactor: 1},
		},
		{
			name: "non-ssh-store-kept-whole",
			line: "local x86_64-linux",
			v:    nix28,
			want: Machine{URI: StoreURI{Opaque: "local"}, Systems: []string{"x86_64-linux"}, MaxJobs: 1, SpeedFactor: 1},
		},
		{
			name: "host-key-without-padding",
			line: "b1 x86_64-linux - 1 1 - - " + strings.TrimRight(keyB1B64, "="),
			v:    nix28,
			want: Machine{URI: StoreURI{Scheme: "ssh", Host: "b1"}, Systems: []string{"x86_64-linux"}, MaxJobs: 1, SpeedFactor: 1, HostKey: keyB1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseLine(tt.line, ParseOptions{NixVersion: tt.v, LocalSystem: "x86_64-linux"})
			if err != nil {
				t.Fatalf("ParseLine(%q) = %v", tt.line, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseLine(%q)\n got  %#v\n want %#v", tt.line, got, tt.want)
			}
		})
	}
}

func TestParseLineRejects(t *testing.T) {
	tests := []struct {
		name  string
		line  string
		v     NixVersion
		field string
	}{
		{"no-uri", "- x86_64-linux", nix28, "uri"},
		{"max-jobs-not-a-number", "b1 x86_64-linux - many", nix28, "max-jobs"},
		{"max-jobs-negative", "b1 x86_64-linux - -3", nix28, "max-jobs"},
		{"max-jobs-overflow", "b1 x86_64-linux - 4294967296", nix28, "max-jobs"},
		{"fraction-speed-on-2.8", "b1 x86_64-linux - 1 1.5", nix28, "speed-factor"},
		{"negative-speed-on-2.26", "b1 x86_64-linux - 1 -2", nix226, "speed-factor"},
		{"nan-speed-on-2.26", "b1 x86_64-linux - 1 nan", nix226, "speed-factor"},
		{"inf-speed-on-2.26", "b1 x86_64-linux - 1 inf", nix226, "speed-factor"},
		{"host-key-not-base64", "b1 x86_64-linux - 1 1 - - not*base64", nix28, "host-key"},
		{"host-key-not-a-key", "b1 x86_64-linux - 1 1 - - " + base64.StdEncoding.EncodeToString([]byte("hello world")), nix28, "host-key"},
		{"host-key-two-lines", "b1 x86_64-linux - 1 1 - - " + base64.StdEncoding.EncodeToString([]byte(keyB1+"\n"+keyB2+"\n")), nix28, "host-key"},
		{"port-before-2.31", "ssh://b1:2222 x86_64-linux", nix226, "uri"},
		{"bad-port", "ssh://b1:99999 x86_64-linux", nix231, "uri"},
		{"systems-only-commas", "b1 ,,", nix28, "systems"},
		{"too-many-fields", "b1 x86_64-linux - 1 1 - - " + keyB1B64 + " extra", nix28, "line"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseLine(tt.line, ParseOptions{NixVersion: tt.v})
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("ParseLine(%q) = %v, want a *FieldError", tt.line, err)
			}
			if fe.Field != tt.field {
				t.Errorf("ParseLine(%q): field %q, want %q (%v)", tt.line, fe.Field, tt.field, err)
			}
		})
	}
}

func TestParseFileSplitsLikeNix(t *testing.T) {
	dir := t.TempDir()
	inc := filepath.Join(dir, "more")
	writeFile(t, inc, "b3 aarch64-linux\n")
	main := filepath.Join(dir, "machines")
	writeFile(t, main, strings.Join([]string{
		"# before Nix 2.29 this comment ends here; b9 x86_64-linux",
		"  b1 x86_64-linux   # trailing comment",
		"b2 x86_64-linux; @" + inc,
		"@" + filepath.Join(dir, "missing"),
		"",
	}, "\n"))

	hosts := func(v NixVersion) []string {
		var warned []string
		es, err := ParseFile(main, ParseOptions{NixVersion: v, Warn: func(p string, l int, msg string) { warned = append(warned, msg) }})
		if err != nil {
			t.Fatalf("ParseFile: %v", err)
		}
		if len(warned) != 1 || !strings.Contains(warned[0], "missing") {
			t.Errorf("warnings = %q, want one about the missing include", warned)
		}
		var hs []string
		for _, e := range es {
			hs = append(hs, e.Machine.URI.Host)
		}
		return hs
	}
	if got, want := hosts(nix28), []string{"b9", "b1", "b2", "b3"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Nix 2.8 hosts = %q, want %q", got, want)
	}
	if got, want := hosts(nix231), []string{"b1", "b2", "b3"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Nix 2.31 hosts = %q, want %q", got, want)
	}
}

func TestParseFileReportsEveryProblemWithPosition(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "machines")
	writeFile(t, path, "b1 x86_64-linux - x\nb2 x86_64-linux\nb3 x86_64-linux - 1 1.5\n")
	es, err := ParseFile(path, ParseOptions{NixVersion: nix28})
	var pe ParseErrors
	if !errors.As(err, &pe) || len(pe) != 2 {
		t.Fatalf("ParseFile = %v, want 2 problems", err)
	}
	if len(es) != 1 || es[0].Machine.URI.Host != "b2" || es[0].Line != 2 {
		t.Errorf("entries = %+v, want only b2 at line 2", es)
	}
	want := []string{path + ":1: field max-jobs:", path + ":3: field speed-factor:"}
	for i, w := range want {
		if !strings.HasPrefix(pe[i].Error(), w) {
			t.Errorf("problem %d = %q, want prefix %q", i, pe[i].Error(), w)
		}
	}
}

func TestParseFileIncludeCycle(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	writeFile(t, a, "b1 x86_64-linux\n@"+b+"\n")
	writeFile(t, b, "b2 x86_64-linux\n@"+a+"\n")
	es, err := ParseFile(a, ParseOptions{})
	var pe ParseErrors
	if !errors.As(err, &pe) || len(pe) != 1 || !strings.Contains(pe[0].Error(), "cycle") {
		t.Fatalf("ParseFile = %v, want one include cycle error", err)
	}
	if pe[0].Path != b || pe[0].Line != 2 {
		t.Errorf("cycle reported at %s:%d, want %s:2", pe[0].Path, pe[0].Line, b)
	}
	if len(es) != 2 {
		t.Errorf("got %d machines, want b1 and b2", len(es))
	}
}

func TestParseFileBounded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "machines")
	writeFile(t, path, strings.Repeat("#", MaxFileSize+1))
	if _, err := ParseFile(path, ParseOptions{}); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("ParseFile of an oversized file = %v, want a size error", err)
	}
}

func TestSpeedFactorSpecialValues(t *testing.T) {
	m, err := ParseLine("b1 x86_64-linux - 1 0", ParseOptions{NixVersion: nix28})
	if err != nil || m.SpeedFactor != 0 {
		t.Fatalf("speed 0: %v %v", m.SpeedFactor, err)
	}
	if math.Signbit(m.SpeedFactor) {
		t.Error("negative zero")
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
