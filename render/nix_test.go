package render

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// realNix runs the Debian nix-bin (Nix 2.8) found on PATH.
type realNix struct {
	version NixVersion
	dir     string
}

func newRealNix(t *testing.T) *realNix {
	t.Helper()
	if _, err := exec.LookPath("nix-build"); err != nil {
		t.Skip("nix-build not on PATH: install Debian's nix-bin (.ci/run does)")
	}
	out, err := exec.Command("nix", "--version").Output()
	if err != nil {
		t.Fatalf("nix --version: %v", err)
	}
	v, err := ParseNixVersion(string(out))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	conf := "sandbox = false\nsubstituters =\nbuild-users-group =\n"
	if err := os.WriteFile(filepath.Join(dir, "nix.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	return &realNix{version: v, dir: dir}
}

// build asks Nix to build a trivial derivation with only the builders in
// machines and no local jobs, and returns what Nix printed. SSH goes to
// port 1 on loopback, which refuses at once: no traffic leaves the host.
func (n *realNix) build(t *testing.T, machines string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "machines")
	if err := os.WriteFile(path, []byte(machines), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	expr := fmt.Sprintf(`derivation { name = "render-crosscheck-%d"; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" "echo x > $out"]; }`, time.Now().UnixNano())
	cmd := exec.CommandContext(ctx, "nix-build", "--no-out-link", "--builders", "@"+path, "--max-jobs", "0", "-E", expr)
	cmd.Env = append(os.Environ(), "NIX_CONF_DIR="+n.dir, "NIX_SSHOPTS=-p 1 -o ConnectTimeout=2", "TMPDIR="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("nix-build succeeded with unreachable builders:\n%s", out)
	}
	if ctx.Err() != nil {
		t.Fatalf("nix-build timed out:\n%s", out)
	}
	return string(out)
}

// TestRealNixReadsWhatFormatWrites has real Nix read files written by
// Format: Nix must get as far as connecting (and fail: the port is
// closed), never reject the file.
func TestRealNixReadsWhatFormatWrites(t *testing.T) {
	n := newRealNix(t)
	t.Run("nix-"+n.version.String(), func(t *testing.T) {
		a := builder()
		a.URI.Host, a.URI.User = "127.0.0.1", "nobody"
		a.SpeedFactor = 2.5 // rounded for Nix < 2.20
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
	})
}

// TestRealNixAgreesWithCheck feeds real Nix the lines the parser rejects:
// where Nix rejects them too, both must say so. Rows marked stricter are
// lines Nix accepts at parse time that would still fail every build; the
// test proves Nix does accept them, so the claim stays honest.
func TestRealNixAgreesWithCheck(t *testing.T) {
	n := newRealNix(t)
	hostKey := base64.StdEncoding.EncodeToString([]byte(keyB2))
	tests := []struct {
		name     string
		line     string
		stricter string // why we reject what Nix parses; empty when Nix rejects too
	}{
		{name: "valid-line", line: "ssh://nobody@127.0.0.1 x86_64-linux - 2 1 kvm - " + hostKey},
		{name: "max-jobs-not-a-number", line: "ssh://nobody@127.0.0.1 x86_64-linux - many"},
		{name: "max-jobs-negative", line: "ssh://nobody@127.0.0.1 x86_64-linux - -3"},
		{name: "speed-factor-fraction", line: "ssh://nobody@127.0.0.1 x86_64-linux - 1 1.5"},
		{name: "speed-factor-word", line: "ssh://nobody@127.0.0.1 x86_64-linux - 1 fast"},
		{name: "host-key-not-base64", line: "ssh://nobody@127.0.0.1 x86_64-linux - 1 1 - - not*base64"},
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
		t.Run("nix-"+n.version.String()+"/"+tt.name, func(t *testing.T) {
			_, ourErr := Parse([]byte(tt.line+"\n"), ParseOptions{NixVersion: n.version})
			nixOut := n.build(t, tt.line+"\n")
			nixRejects := strings.Contains(nixOut, "bad machine specification")
			switch {
			case tt.name == "valid-line":
				if ourErr != nil || nixRejects {
					t.Fatalf("valid line: ours %v, Nix rejects %v:\n%s", ourErr, nixRejects, nixOut)
				}
			case ourErr == nil:
				t.Fatalf("we accept %q; Nix rejects: %v", tt.line, nixRejects)
			case tt.stricter == "" && !nixRejects:
				t.Fatalf("we reject (%v) but Nix %s accepts:\n%s", ourErr, n.version, nixOut)
			case tt.stricter != "" && nixRejects:
				t.Fatalf("row says Nix accepts, but Nix rejects; drop the stricter note:\n%s", nixOut)
			}
		})
	}
}
