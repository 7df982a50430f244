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
