//go:build linux

package render

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/internal/nixtest"
)

// realNix is one Nix lane: Debian's 2.8 on the host or 2.26 in the
// trixie chroot (internal/nixtest), used as a client.
type realNix struct {
	lane    nixtest.Version
	version NixVersion
}

// lanes returns both Nix versions the tests run against.
func lanes(t *testing.T) []realNix {
	t.Helper()
	nixtest.RequireTools(t)
	return []realNix{{nixtest.V28, CppNixVersion(2, 8, 0)}, {nixtest.V226, CppNixVersion(2, 26, 3)}}
}

// build asks Nix to build a trivial derivation with only the builders in
// machines and no local jobs, and returns what Nix printed. SSH goes to
// port 1 on loopback, which refuses at once: no traffic leaves the host.
func (n realNix) build(t *testing.T, machines string) string {
	t.Helper()
	path := filepath.Join(nixtest.WorkDir(t, "render"), "machines")
	if err := os.WriteFile(path, []byte(machines), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	expr := fmt.Sprintf(`derivation { name = "render-crosscheck-%d"; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" "echo x > $out"]; }`, time.Now().UnixNano())
	_, stderr, err := nixtest.NixBuild(t, ctx, nixtest.ClientOptions{Version: n.lane, MachinesFile: path, Expr: expr, SSHOpts: "-p 1 -o ConnectTimeout=2"})
	if err == nil {
		t.Fatalf("nix-build succeeded with unreachable builders:\n%s", stderr)
	}
	if ctx.Err() != nil {
		t.Fatalf("nix-build timed out:\n%s", stderr)
	}
	return stderr
}

// TestRealNixReadsWhatFormatWrites has real Nix read files written by
// Format: Nix must get as far as connecting (and fail: the port is
// closed), never reject the file.
func TestRealNixReadsWhatFormatWrites(t *testing.T) {
	for _, n := range lanes(t) {
		t.Run(n.lane.String(), func(t *testing.T) { readsWhatFormatWrites(t, n) })
	}
	// Determinate Nix 3.0 is built on CppNix 2.26: the file written for it
	// (by 2.26's rules, not by its own number 3.0) is read by the real
	// 2.26.
	det := realNix{nixtest.V226, DeterminateVersion(Release{Major: 3}, Release{Major: 2, Minor: 26, Patch: 3})}
	t.Run("determinate-nix-3.0-on-"+det.lane.String(), func(t *testing.T) { readsWhatFormatWrites(t, det) })
}

func readsWhatFormatWrites(t *testing.T, n realNix) {
	{
		a := builder()
		a.URI.Host, a.URI.User = "127.0.0.1", "nobody"
		a.SSHKey = ""       // the key file would have to exist for the 2.26 chroot
		a.SpeedFactor = 2.5 // 2.26 reads it as is; rounded for Nix < 2.20
		b := a
		b.URI = StoreURI{Scheme: "ssh", User: "nobody", Host: "localhost", Params: map[string][]string{"remote-store": {"daemon"}}}
		b.Systems = []string{"x86_64-linux"}
		b.MandatoryFeatures = nil
		b.HostKey = keyB2
		out, err := Format(Merge(nil, []Machine{a, b}), FormatOptions{NixVersion: n.version, Header: "managed by nixrb-discover: a test"})
		if err != nil {
			t.Fatal(err)
		}
		got := n.build(t, string(out))
		if strings.Contains(got, "bad machine specification") {
			t.Fatalf("Nix %s rejected a file Format wrote:\n%s\n%s", n.version, out, got)
		}
		for _, host := range []string{"127.0.0.1", "localhost"} {
			if !strings.Contains(got, "cannot build on") || !strings.Contains(got, host) {
				t.Errorf("Nix did not try builder %s:\n%s", host, got)
			}
		}
		if n.version.FractionalSpeed() && !strings.Contains(string(out), " 2.5 ") {
			t.Errorf("file for Nix %s lost the fractional speed factor:\n%s", n.version, out)
		}
	}
}

// TestRealNixAgreesWithCheck feeds real Nix the lines the parser rejects:
// where Nix rejects them too, both must say so. Rows marked stricter are
// lines Nix accepts at parse time that would still fail every build; the
// test proves Nix does accept them, so the claim stays honest.
func TestRealNixAgreesWithCheck(t *testing.T) {
	nixtest.EnsureTrixie(t) // one chroot for every row
	for _, n := range lanes(t) {
		t.Run(n.lane.String(), func(t *testing.T) { agreesWithCheck(t, n) })
	}
}

func agreesWithCheck(t *testing.T, n realNix) {
	hostKey := base64.StdEncoding.EncodeToString([]byte(keyB2))
	tests := []struct {
		name     string
		line     string
		stricter string // why we reject what Nix parses; empty when Nix rejects too
		// onlyBefore: the line is invalid only for Nix older than this;
		// newer Nix (and our parser for it) must accept it.
		onlyBefore string
		// stricterSince: from this Nix version on, Nix accepts the line at
		// parse time and the stricter note applies.
		stricterSince string
	}{
		{name: "valid-line", line: "ssh://nobody@127.0.0.1 x86_64-linux - 2 1 kvm - " + hostKey},
		{name: "max-jobs-not-a-number", line: "ssh://nobody@127.0.0.1 x86_64-linux - many"},
		{name: "max-jobs-negative", line: "ssh://nobody@127.0.0.1 x86_64-linux - -3"},
		{name: "speed-factor-fraction", line: "ssh://nobody@127.0.0.1 x86_64-linux - 1 1.5", onlyBefore: "2.20"},
		{name: "speed-factor-negative", line: "ssh://nobody@127.0.0.1 x86_64-linux - 1 -1",
			stricterSince: "2.20", stricter: "Nix 2.26 takes -1 as a float and ranks the builder below every other"},
		{name: "speed-factor-word", line: "ssh://nobody@127.0.0.1 x86_64-linux - 1 fast"},
		{name: "host-key-not-base64", line: "ssh://nobody@127.0.0.1 x86_64-linux - 1 1 - - not*base64",
			stricterSince: "2.20", stricter: "Nix 2.26 no longer checks the base64 at parse time; every connection then fails"},
		{name: "no-store-uri", line: "- x86_64-linux"},
		{name: "host-key-not-a-key", line: "ssh://nobody@127.0.0.1 x86_64-linux - 1 1 - - " + base64.StdEncoding.EncodeToString([]byte("hello")),
			stricter: "Nix writes it to known_hosts and every connection fails host-key verification"},
		{name: "port-in-uri", line: "ssh://nobody@127.0.0.1:2222 x86_64-linux",
			stricter: "Nix before 2.31 resolves '127.0.0.1:2222' as a host name and fails"},
		{name: "systems-only-commas", line: "ssh://nobody@127.0.0.1 ,,",
			stricter: "a machine with no system can never be used"},
		{name: "nine-fields", line: "ssh://nobody@127.0.0.1 x86_64-linux - 1 1 - - " + hostKey + " extra",
			stricter: "Nix ignores the 9th field; it is surely a mistake"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, ourErr := Parse([]byte(tt.line+"\n"), ParseOptions{NixVersion: n.version})
			nixOut := n.build(t, tt.line+"\n")
			nixRejects := strings.Contains(nixOut, "bad machine specification")
			stricter := tt.stricter
			if tt.stricterSince != "" {
				v, _ := ParseNixVersion(tt.stricterSince)
				if !n.version.Release().atLeast(v.Major, v.Minor) {
					stricter = ""
				}
			}
			valid := tt.name == "valid-line"
			if tt.onlyBefore != "" {
				v, _ := ParseNixVersion(tt.onlyBefore)
				valid = n.version.Release().atLeast(v.Major, v.Minor)
			}
			switch {
			case valid:
				if ourErr != nil || nixRejects {
					t.Fatalf("valid line for Nix %s: ours %v, Nix rejects %v:\n%s", n.version, ourErr, nixRejects, nixOut)
				}
			case ourErr == nil:
				t.Fatalf("we accept %q; Nix rejects: %v", tt.line, nixRejects)
			case stricter == "" && !nixRejects:
				t.Fatalf("we reject (%v) but Nix %s accepts:\n%s", ourErr, n.version, nixOut)
			case stricter != "" && nixRejects:
				t.Fatalf("row says Nix accepts, but Nix rejects; drop the stricter note:\n%s", nixOut)
			}
		})
	}
}
