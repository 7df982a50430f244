package discover

import (
	"strings"
	"testing"

	"github.com/nixrb-discover/nixrb-discover/render"
	"github.com/nixrb-discover/nixrb-discover/wire"
)

// TestMachineForPort: a builder on port 2222 needs a port in the URI
// (Nix >= 2.31) or an ssh_config Host alias (older Nix), and says so when
// neither is possible.
func TestMachineForPort(t *testing.T) {
	m := member{Candidate: Candidate{Key: "mdns:x", Name: "b1.lan", Address: "10.0.0.5", Advert: &wire.Advert{
		Hostname: "b1", SSHUser: "nix-ssh", SSHPort: 2222, Protocol: "ssh-ng", HostKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIES7pfa2S97qRyd63h3rbGp4cXJVx+WgOpAqVCoFqE9u",
		Systems: []string{"x86_64-linux"}, MaxJobs: 2, SpeedFactor: 1}}}
	newNix := &loop{c: &Client{NixVersion: render.NixVersion{Major: 2, Minor: 31}, SSHKeyPath: "/k"}}
	mach, alias, err := newNix.machineFor(m)
	if err != nil || alias != "" || mach.URI.Port != 2222 || mach.URI.Host != "10.0.0.5" {
		t.Fatalf("Nix 2.31: %v %q %v; want the port in the URI, no alias", mach.String(), alias, err)
	}

	oldNix := &loop{c: &Client{NixVersion: render.NixVersion{Major: 2, Minor: 8}, SSHKeyPath: "/k", SSHConfigPath: "/var/lib/nixrb-discover/ssh_config"}}
	mach, alias, err = oldNix.machineFor(m)
	if err != nil {
		t.Fatal(err)
	}
	if mach.URI.Port != 0 || mach.URI.Host != "nixrb-b1.lan" {
		t.Errorf("Nix 2.8 URI = %s, want the alias nixrb-b1.lan without a port", mach.URI)
	}
	for _, want := range []string{"Host nixrb-b1.lan\n", "HostName 10.0.0.5\n", "Port 2222\n", "HostKeyAlias nixrb-b1.lan\n"} {
		if !strings.Contains(alias, want) {
			t.Errorf("alias lacks %q:\n%s", want, alias)
		}
	}
	if _, err := mach.Line(render.NixVersion{Major: 2, Minor: 8}); err != nil {
		t.Errorf("aliased line not valid for Nix 2.8: %v", err)
	}

	noConfig := &loop{c: &Client{NixVersion: render.NixVersion{Major: 2, Minor: 8}}}
	if _, _, err := noConfig.machineFor(m); err == nil || !strings.Contains(err.Error(), "--ssh-config") {
		t.Errorf("Nix 2.8 without --ssh-config: %v; want an error naming --ssh-config", err)
	}
}

// TestMachineForPortFollowsTheLocalImplementation: the table. A
// builder on port 2222 gets the port in the URI only where the local Nix
// reads one there: host:port for CppNix 2.31, ?port= for Lix 2.93; the
// alias for Determinate Nix 3.8.2 (CppNix 2.30.1 underneath, although its
// own number is 3.8) and for Lix 2.91.
func TestMachineForPortFollowsTheLocalImplementation(t *testing.T) {
	m := member{Candidate: Candidate{Key: "mdns:x", Name: "b1.lan", Address: "10.0.0.5", Advert: &wire.Advert{
		Hostname: "b1", SSHUser: "nix-ssh", SSHPort: 2222, Protocol: "ssh-ng", HostKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIES7pfa2S97qRyd63h3rbGp4cXJVx+WgOpAqVCoFqE9u",
		Systems: []string{"x86_64-linux"}, MaxJobs: 2, SpeedFactor: 1}}}
	for _, tt := range []struct {
		nixVersion string // what nix --version prints
		wantURI    string // "": the ssh_config alias
	}{
		{"nix (Nix) 2.31.2", "ssh-ng://nix-ssh@10.0.0.5:2222"},
		{"nix (Determinate Nix 3.8.2) 2.30.1", ""},
		{"nix (Determinate Nix 3.22.1) 2.35.2", "ssh-ng://nix-ssh@10.0.0.5:2222"},
		{"nix (Lix, like Nix) 2.91.1", ""},
		{"nix (Lix, like Nix) 2.93.3", "ssh-ng://nix-ssh@10.0.0.5?port=2222"},
	} {
		v, err := render.ParseNixVersion(tt.nixVersion)
		if err != nil {
			t.Fatal(err)
		}
		l := &loop{c: &Client{NixVersion: v, SSHKeyPath: "/k", SSHConfigPath: "/var/lib/nixrb-discover/ssh_config"}}
		mach, alias, err := l.machineFor(m)
		if err != nil {
			t.Fatalf("%s: %v", v, err)
		}
		line, err := mach.Line(v)
		if err != nil {
			t.Fatalf("%s: %v", v, err)
		}
		uri, _, _ := strings.Cut(line, " ")
		switch {
		case tt.wantURI == "" && (uri != "ssh-ng://nix-ssh@nixrb-b1.lan" || !strings.Contains(alias, "Port 2222\n")):
			t.Errorf("%s: wrote %q with alias %q; want the ssh_config alias", v, uri, alias)
		case tt.wantURI != "" && (uri != tt.wantURI || alias != ""):
			t.Errorf("%s: wrote %q (alias %q); want %q", v, uri, alias, tt.wantURI)
		}
	}
}
