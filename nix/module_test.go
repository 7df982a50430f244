package nix

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/internal/hoststate"
	"github.com/nixrb-discover/nixrb-discover/render"
	"github.com/nixrb-discover/nixrb-discover/systemd"
)

// nixosResult is what testdata/nixos-view.nix shows of one NixOS
// evaluation of the module.
type nixosResult struct {
	FailedAssertions []string
	Warnings         []string
	Config           struct {
		Environment struct {
			Etc map[string]struct {
				Enable       bool
				Mode, Source string
				Text         *string
			}
			SystemPackages []string
		}
		Nix struct {
			DistributedBuilds bool
			Settings          map[string]any
		}
		Programs struct{ SSH struct{ ExtraConfig string } }
		Services struct {
			OpenSSH struct {
				Enable      bool
				ExtraConfig string
			}
		}
		Systemd struct {
			Services map[string]struct {
				After, Wants, WantedBy, Documentation []string
				Description                           string
				Environment                           map[string]string
				ServiceConfig                         map[string]any
			}
			Tmpfiles struct{ Rules []string }
		}
		Users struct {
			Users map[string]struct {
				Name, Group, Description, Shell string
				IsSystemUser, UseDefaultShell   bool
				Keys                            []string
			}
			Groups []string
		}
		Networking struct {
			Firewall struct {
				Interfaces map[string]struct{ AllowedTCPPorts, AllowedUDPPorts []int }
			}
		}
	}
}

// nixosExpr is the Nix expression that evaluates the module on NixOS
// (testdata/eval.nix with testdata/nixos-options.nix) with the machine's
// own configuration user (a module) and shows it through view.
func nixosExpr(nixVersion, user, view string) string {
	return nixosExprPackage("nix", nixVersion, user, view)
}

// nixosExprPackage is nixosExpr with nix.package named pname ("lix",
// "determinate-nix").
func nixosExprPackage(pname, nixVersion, user, view string) string {
	return `let r = import ./testdata/eval.nix { platform = ./testdata/nixos-options.nix; nixPname = "` + pname + `"; nixVersion = "` + nixVersion + `"; user = ` + user + `; }; in ` + view
}

// evalNixOS evaluates the module with the real module system; err and
// stderr carry the module system's message when evaluation fails.
func evalNixOS(t *testing.T, nixVersion, user string) (nixosResult, string, error) {
	t.Helper()
	var r nixosResult
	out, stderr, err := nixInstantiate(t, nixosExpr(nixVersion, user, "(import ./testdata/nixos-view.nix) r"))
	if err != nil {
		return r, stderr, err
	}
	// JSON keys are camelCase; "openssh" and "ssh" need the Go names.
	out = bytes.ReplaceAll(out, []byte(`"openssh"`), []byte(`"OpenSSH"`))
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("%s: %v", out, err)
	}
	return r, stderr, nil
}

// mustEvalNixOS is evalNixOS for a configuration that must evaluate.
func mustEvalNixOS(t *testing.T, nixVersion, user string) nixosResult {
	t.Helper()
	r, stderr, err := evalNixOS(t, nixVersion, user)
	if err != nil {
		t.Fatalf("the configuration does not evaluate: %v\n%s", err, stderr)
	}
	return r
}

// nixInstantiate runs nix-instantiate --eval --strict --json on expr,
// bounded, and returns stdout and stderr.
func nixInstantiate(t *testing.T, expr string) ([]byte, string, error) {
	t.Helper()
	p, err := exec.LookPath("nix-instantiate")
	if err != nil {
		t.Skip("nix-instantiate not installed (Debian package nix-bin; scripts/test.sh installs it)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// --read-write-mode: writeText (builtins.toFile) really writes its
	// file to the store, so the tests read what a service would.
	cmd := exec.CommandContext(ctx, p, "--eval", "--strict", "--json", "--read-write-mode", "--expr", expr)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil && strings.Contains(stderr.String(), "Permission denied") && strings.Contains(stderr.String(), "/nix/") {
		t.Skipf("cannot write the module's files to the Nix store (run as root or with a nix-daemon): %s", stderr.String())
	}
	return out, stderr.String(), err
}

// evalFails evaluates a configuration that the module system must refuse,
// and checks its message.
func evalFails(t *testing.T, user string, want ...string) {
	t.Helper()
	_, stderr, err := evalNixOS(t, "2.28.3", user)
	if err == nil {
		t.Fatalf("the configuration evaluated; want an error with %q", want)
	}
	for _, w := range want {
		if !strings.Contains(stderr, w) {
			t.Errorf("the error does not say %q:\n%s", w, stderr)
		}
	}
}

// execArgs splits an ExecStart that utils.escapeSystemdExecArgs quoted
// (each argument a JSON string) back into arguments.
func execArgs(t *testing.T, execStart any) []string {
	t.Helper()
	s, _ := execStart.(string)
	dec := json.NewDecoder(strings.NewReader(s))
	var args []string
	for {
		var a string
		if err := dec.Decode(&a); errors.Is(err, io.EOF) {
			return args
		} else if err != nil {
			t.Fatalf("ExecStart %q is not quoted arguments: %v", s, err)
		}
		args = append(args, a)
	}
}

// daemonConfig reads the JSON --config file the module wrote for one of
// its services: a real store file, the one the service would read.
func daemonConfig(t *testing.T, r nixosResult, service string) (string, map[string]any) {
	t.Helper()
	s, ok := r.Config.Systemd.Services[service]
	if !ok {
		t.Fatalf("no systemd.services.%s", service)
	}
	args := execArgs(t, s.ServiceConfig["ExecStart"])
	i := 0
	for i < len(args) && args[i] != "--config" {
		i++
	}
	if i+1 >= len(args) {
		t.Fatalf("%s: no --config in %q", service, args)
	}
	b, err := os.ReadFile(args[i+1])
	if err != nil {
		t.Fatalf("%s: read its --config file: %v", service, err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s: --config %s: %v\n%s", service, args[i+1], err, b)
	}
	return args[i+1], m
}

const (
	storePkg = "/nix/store/00000000000000000000000000000000-nixrb-discover"
	pkgBin   = storePkg + "/bin/nixrb-discover"
	nixPkg   = "/nix/store/00000000000000000000000000000000-nix-"
)

// sameAsUnit: the NixOS service is the embedded unit: every [Service]
// directive but ExecStart and Environment, with the same value; PATH is
// NixOS's, built from `path` (Nix first, then NixOS's default path).
func sameAsUnit(t *testing.T, r nixosResult, name, nixVersion string, args ...string) {
	t.Helper()
	units := map[string]map[string]map[string]any{}
	for n, b := range systemd.Units() {
		units[strings.TrimSuffix(n, ".service")] = goParse(b)
	}
	s, ok := r.Config.Systemd.Services[name]
	if !ok {
		t.Fatalf("no systemd.services.%s", name)
	}
	want := map[string]any{}
	for k, v := range units[name]["Service"] {
		want[k] = v
	}
	delete(want, "Environment")
	got := map[string]any{}
	for k, v := range s.ServiceConfig {
		got[k] = v
	}
	delete(got, "ExecStart")
	delete(want, "ExecStart")
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s serviceConfig:\n got %v\nwant %v", name, got, want)
	}
	gotArgs := execArgs(t, s.ServiceConfig["ExecStart"])
	if len(gotArgs) < len(args)+2 || !reflect.DeepEqual(gotArgs[:len(args)], args) || gotArgs[len(args)] != "--config" ||
		!regexp.MustCompile(`^/nix/store/[0-9a-z]{32}-`+name+`\.json$`).MatchString(gotArgs[len(args)+1]) {
		t.Errorf("%s ExecStart = %q, want %q --config <store file>", name, gotArgs, args)
	}
	if !strings.HasPrefix(s.Environment["HOME"], "/run/nixrb-discover") {
		t.Errorf("%s: environment.HOME = %q", name, s.Environment["HOME"])
	}
	path := s.Environment["PATH"]
	if !strings.HasPrefix(path, nixPkg+nixVersion+"/bin:") || !strings.Contains(path, "-coreutils-9.5/bin:") || !strings.Contains(path, "-systemd-257/sbin") {
		t.Errorf("%s: PATH = %q, want the system's Nix first, then NixOS's default path", name, path)
	}
	if !reflect.DeepEqual(s.After, []string{"tailscaled.service", "network-online.target"}) || !reflect.DeepEqual(s.WantedBy, []string{"multi-user.target"}) {
		t.Errorf("%s: after %v, wantedBy %v", name, s.After, s.WantedBy)
	}
}

// TestModuleUnderNixOS evaluates nix/module.nix with the real nixpkgs
// module system (testdata/nixpkgs-lib) beside the NixOS options it
// touches, declared as nixpkgs declares them (testdata/nixos-options.nix),
// for the configurations docs/NIXOS.md shows and the ones users combine
// with it.
func TestModuleUnderNixOS(t *testing.T) {
	t.Run("laptop-nix-2.28", func(t *testing.T) {
		r := mustEvalNixOS(t, "2.28.3", `{ services.nixrb-discover.client = { enable = true; tags = [ "tag:nix-builder" ]; }; }`)
		if len(r.FailedAssertions) > 0 {
			t.Errorf("assertions: %v", r.FailedAssertions)
		}
		sameAsUnit(t, r, "nixrb-discover-client", "2.28.3", pkgBin, "client")
		s := r.Config.Nix.Settings
		if s["builders"] != "@/var/lib/nixrb-discover/machines" || !r.Config.Nix.DistributedBuilds {
			t.Errorf("nix.settings.builders = %v, distributedBuilds = %v", s["builders"], r.Config.Nix.DistributedBuilds)
		}
		// NixOS's own trusted-users stays; the client adds nobody.
		if !reflect.DeepEqual(s["trusted-users"], []any{"root"}) {
			t.Errorf("trusted-users = %v", s["trusted-users"])
		}
		// Nix 2.28 cannot say host:port: root's ssh includes our aliases.
		if r.Config.Programs.SSH.ExtraConfig != "Match all\nInclude /var/lib/nixrb-discover/ssh_config\n" {
			t.Errorf("programs.ssh.extraConfig = %q", r.Config.Programs.SSH.ExtraConfig)
		}
		if _, ok := r.Config.Environment.Etc["nix/machines"]; ok {
			t.Error("touches /etc/nix/machines although nix.buildMachines is empty")
		}
		if _, ok := r.Config.Systemd.Services["nixrb-discover-advertise"]; ok {
			t.Error("the agent runs on a client-only machine")
		}
		if !reflect.DeepEqual(r.Config.Systemd.Tmpfiles.Rules, []string{"d /nix/var/nix/current-load 0755 root root -"}) {
			t.Errorf("tmpfiles rules %q", r.Config.Systemd.Tmpfiles.Rules)
		}
		if !reflect.DeepEqual(r.Config.Environment.SystemPackages, []string{storePkg}) {
			t.Errorf("systemPackages %v", r.Config.Environment.SystemPackages)
		}
		_, cfg := daemonConfig(t, r, "nixrb-discover-client")
		want := map[string]any{
			"machines": "/var/lib/nixrb-discover/machines", "ssh-config": "/var/lib/nixrb-discover/ssh_config",
			"ssh-key": "/var/lib/nixrb-discover/id_ed25519", "tailnet": true, "tag": []any{"tag:nix-builder"},
			"address": "magicdns", "mdns": false, "hold": "10m", "nix-state-dir": "/nix/var/nix",
		}
		if !reflect.DeepEqual(cfg, want) {
			t.Errorf("client --config:\n got %v\nwant %v", cfg, want)
		}
	})
	// The alias file follows the implementation's rule, not its number:
	// Lix 2.91 and Determinate Nix 3.8 (on CppNix 2.30) read no port in a
	// URI although their numbers are above 2.31; Lix 2.93 reads ?port=.
	for _, tt := range []struct {
		pname, version string
		aliases        bool
	}{{"lix", "2.91.1", true}, {"lix", "2.93.3", false}, {"determinate-nix", "3.8.2", true}, {"nix", "3.8.2", true}, {"nix", "2.30.2", true}, {"nix", "2.35.1", false}} {
		t.Run("laptop-"+tt.pname+"-"+tt.version, func(t *testing.T) {
			out, stderr, err := nixInstantiate(t, nixosExprPackage(tt.pname, tt.version, `{ services.nixrb-discover.client.enable = true; }`, "r.config.programs.ssh.extraConfig"))
			if err != nil {
				t.Fatalf("does not evaluate: %v\n%s", err, stderr)
			}
			var extra string
			if err := json.Unmarshal(out, &extra); err != nil {
				t.Fatalf("%s: %v", out, err)
			}
			if got := strings.Contains(extra, "Include /var/lib/nixrb-discover/ssh_config"); got != tt.aliases {
				t.Errorf("%s %s: programs.ssh.extraConfig = %q, want the alias Include: %v", tt.pname, tt.version, extra, tt.aliases)
			}
		})
	}
	t.Run("laptop-nix-2.31-needs-no-ssh-config", func(t *testing.T) {
		r := mustEvalNixOS(t, "2.31.1", `{ services.nixrb-discover.client.enable = true; }`)
		if r.Config.Programs.SSH.ExtraConfig != "" {
			t.Errorf("programs.ssh.extraConfig = %q", r.Config.Programs.SSH.ExtraConfig)
		}
		sameAsUnit(t, r, "nixrb-discover-client", "2.31.1", pkgBin, "client")
		if _, cfg := daemonConfig(t, r, "nixrb-discover-client"); cfg["ssh-config"] != nil {
			t.Errorf("ssh-config = %v with Nix 2.31", cfg["ssh-config"])
		}
	})
	t.Run("laptop-without-distributed-builds-fails-its-assertion", func(t *testing.T) {
		// NixOS sets builders = null when distributedBuilds is false,
		// which beats the module's mkDefault: Nix would never read our file.
		r := mustEvalNixOS(t, "2.28.3", `{ services.nixrb-discover.client.enable = true; nix.distributedBuilds = false; }`)
		want := []string{"services.nixrb-discover.client: nix.settings.builders must include @/var/lib/nixrb-discover/machines (is nix.distributedBuilds false?)"}
		if !reflect.DeepEqual(r.FailedAssertions, want) {
			t.Errorf("failed assertions %q, want %q", r.FailedAssertions, want)
		}
	})
	t.Run("static-from-buildMachines-is-what-nixos-would-write", func(t *testing.T) {
		r := mustEvalNixOS(t, "2.28.3", `{ config, ... }: {
		  nix.buildMachines = [
		    { hostName = "ward.tail1234.ts.net"; protocol = "ssh-ng"; systems = [ "x86_64-linux" "aarch64-linux" ];
		      sshUser = "nixrb-builder"; sshKey = "/etc/nix/id_builder"; maxJobs = 8; speedFactor = 2;
		      supportedFeatures = [ "kvm" ]; mandatoryFeatures = [ "big-parallel" ];
		      publicHostKey = "c3NoLWVkMjU1MTkgQUFBQUMzTnphQzFsWkRJMU5URTVBQUFBSUxjakEwNWYyN1BHZ3pXNTFRUHc3Nk9US2Q4ZDdBSE5OMlBwZXc4aVNEa2Qgcm9vdEBiMQo="; }
		    { hostName = "old-builder.example.org"; system = "x86_64-linux"; sshUser = "builder"; maxJobs = 4; speedFactor = 1.5; }
		    { hostName = "mac.example.org"; systems = [ "aarch64-darwin" ]; protocol = null; }
		  ];
		  services.nixrb-discover.client = { enable = true; static = config.nix.buildMachines; checkStatic = true; };
		}`)
		if len(r.FailedAssertions) > 0 {
			t.Errorf("assertions: %v", r.FailedAssertions)
		}
		etc, ok := r.Config.Environment.Etc["nix/machines"]
		if !ok || etc.Enable || etc.Text == nil {
			t.Fatalf(`environment.etc."nix/machines" = %+v, want NixOS's text with enable = false`, etc)
		}
		_, cfg := daemonConfig(t, r, "nixrb-discover-client")
		if cfg["check-static"] != true {
			t.Errorf("check-static = %v", cfg["check-static"])
		}
		static, _ := cfg["static"].(string)
		b, err := os.ReadFile(static)
		if err != nil {
			t.Fatalf("read --static %q: %v", static, err)
		}
		// The same list means the same builders: byte for byte what NixOS
		// would have put in /etc/nix/machines.
		if string(b) != *etc.Text {
			t.Errorf("static file:\n%s\nNixOS's /etc/nix/machines:\n%s", b, *etc.Text)
		}
		if want := "ssh-ng://nixrb-builder@ward.tail1234.ts.net x86_64-linux,aarch64-linux /etc/nix/id_builder 8 2 kvm,big-parallel big-parallel c3NoLWVkMjU1MTkgQUFBQUMzTnphQzFsWkRJMU5URTVBQUFBSUxjakEwNWYyN1BHZ3pXNTFRUHc3Nk9US2Q4ZDdBSE5OMlBwZXc4aVNEa2Qgcm9vdEBiMQo=\n" +
			"ssh://builder@old-builder.example.org x86_64-linux - 4 1.500000 - - -\n" +
			"mac.example.org aarch64-darwin - 1 1 - - -\n"; string(b) != want {
			t.Errorf("static file:\n%s\nwant\n%s", b, want)
		}
		v, _ := render.ParseNixVersion("2.28.3")
		entries, err := render.Parse(b, render.ParseOptions{NixVersion: v})
		if err != nil {
			t.Fatalf("our parser rejects the static file: %v", err)
		}
		if len(entries) != 3 || entries[0].Machine.URI.Host != "ward.tail1234.ts.net" || entries[1].Machine.SpeedFactor != 1.5 || entries[1].Machine.MaxJobs != 4 {
			t.Errorf("parsed %+v", entries)
		}
	})
	t.Run("builder", func(t *testing.T) {
		r := mustEvalNixOS(t, "2.28.3", `{ services.nixrb-discover.advertise.enable = true; }`)
		if len(r.FailedAssertions) > 0 {
			t.Errorf("assertions: %v", r.FailedAssertions)
		}
		sameAsUnit(t, r, "nixrb-discover-advertise", "2.28.3", pkgBin, "advertise")
		// Opt-in only: no user, no trust, no sshd change.
		if len(r.Config.Users.Users) > 0 || !reflect.DeepEqual(r.Config.Nix.Settings["trusted-users"], []any{"root"}) || r.Config.Services.OpenSSH.ExtraConfig != "" {
			t.Errorf("users %v, trusted-users %v, sshd %q", r.Config.Users.Users, r.Config.Nix.Settings["trusted-users"], r.Config.Services.OpenSSH.ExtraConfig)
		}
		// Without distributed builds NixOS empties builders; ours stay out.
		if b, ok := r.Config.Nix.Settings["builders"]; !ok || b != nil || r.Config.Nix.DistributedBuilds {
			t.Errorf("a builder-only machine changes its own builders: %v (distributedBuilds %v)", b, r.Config.Nix.DistributedBuilds)
		}
		_, cfg := daemonConfig(t, r, "nixrb-discover-advertise")
		want := map[string]any{"ssh-user": "nixrb-builder", "ssh-port": 22.0, "protocol": "ssh-ng", "tailnet": true, "advert-port": 7461.0, "mdns": false}
		if !reflect.DeepEqual(cfg, want) {
			t.Errorf("advertise --config:\n got %v\nwant %v", cfg, want)
		}
	})
	t.Run("builder-with-user-trust-and-enrolment", func(t *testing.T) {
		r := mustEvalNixOS(t, "2.28.3", `{ services.openssh = { enable = true; ports = [ 2222 ]; };
		  services.nixrb-discover.advertise = { enable = true; createUser = true; trustedUser = true; openFirewall = true;
		    enrollment.allowTags = [ "tag:nix-client" ]; extraArgs = [ "--log-level=debug" ]; }; }`)
		if len(r.FailedAssertions) > 0 {
			t.Errorf("assertions: %v", r.FailedAssertions)
		}
		u, ok := r.Config.Users.Users["nixrb-builder"]
		if !ok || !u.IsSystemUser || !u.UseDefaultShell || u.Group != "nixrb-builder" || !strings.HasSuffix(u.Shell, "-bash-interactive-5.2") {
			t.Errorf("users.users.nixrb-builder = %+v", u)
		}
		if !contains(r.Config.Users.Groups, "nixrb-builder") {
			t.Errorf("no users.groups.nixrb-builder: %v", r.Config.Users.Groups)
		}
		// NixOS's root stays trusted (the order of list definitions is the module system's).
		if got := r.Config.Nix.Settings["trusted-users"]; !sameSet(got, "root", "nixrb-builder") {
			t.Errorf("trusted-users = %v", got)
		}
		sshd := r.Config.Services.OpenSSH.ExtraConfig
		for _, want := range []string{
			"Match User nixrb-builder\n",
			"  AuthorizedKeysCommand /etc/ssh/nixrb-discover-authorized-keys %u\n",
			"  AuthorizedKeysCommandUser root\n",
			"  PermitTTY no\n",
			"  PermitTunnel no\n",
			"Match All\n",
		} {
			if !strings.Contains(sshd, want) {
				t.Errorf("sshd extraConfig lacks %q:\n%s", want, sshd)
			}
		}
		// The command is a copied file (mode set), not a store symlink.
		w := r.Config.Environment.Etc["ssh/nixrb-discover-authorized-keys"]
		if w.Mode != "0755" || w.Text == nil || !strings.Contains(*w.Text, "exec "+pkgBin+` authorized-keys "$@"`) {
			t.Errorf("authorized-keys wrapper = %+v", w)
		}
		args := execArgs(t, r.Config.Systemd.Services["nixrb-discover-advertise"].ServiceConfig["ExecStart"])
		if args[len(args)-1] != "--log-level=debug" || args[len(args)-3] != "--config" {
			t.Errorf("extraArgs not after --config: %q", args)
		}
		_, cfg := daemonConfig(t, r, "nixrb-discover-advertise")
		if cfg["ssh-port"] != 2222.0 || !reflect.DeepEqual(cfg["enroll-allow-tag"], []any{"tag:nix-client"}) {
			t.Errorf("advertise --config %v", cfg)
		}
		if got := r.Config.Networking.Firewall.Interfaces["tailscale0"].AllowedTCPPorts; !reflect.DeepEqual(got, []int{7461}) {
			t.Errorf("firewall on tailscale0: %v", r.Config.Networking.Firewall.Interfaces)
		}
		sshdMatchShutsTunnels(t, sshd)
	})
	t.Run("both-roles-with-user-overrides", func(t *testing.T) {
		const user = `{ lib, ... }: {
		  services.nixrb-discover = { advertise.enable = true; client.enable = true; };
		  systemd.services.nixrb-discover-client.serviceConfig.RestartSec = lib.mkForce "30s";
		  systemd.services.nixrb-discover-advertise.environment.GODEBUG = "madvdontneed=1";
		  systemd.services.nixrb-discover-advertise.after = [ "sshd.service" ];
		}`
		r := mustEvalNixOS(t, "2.28.3", user)
		if len(r.FailedAssertions) > 0 {
			t.Errorf("assertions: %v", r.FailedAssertions)
		}
		c, a := r.Config.Systemd.Services["nixrb-discover-client"], r.Config.Systemd.Services["nixrb-discover-advertise"]
		if c.ServiceConfig["RestartSec"] != "30s" || a.ServiceConfig["RestartSec"] != "5s" {
			t.Errorf("RestartSec: client %v, advertise %v", c.ServiceConfig["RestartSec"], a.ServiceConfig["RestartSec"])
		}
		if a.Environment["GODEBUG"] != "madvdontneed=1" || a.Environment["HOME"] == "" || !contains(a.After, "sshd.service") || !contains(a.After, "tailscaled.service") {
			t.Errorf("advertise environment %v, after %v", a.Environment, a.After)
		}
		// Without mkForce the two values conflict, as on NixOS.
		evalFails(t, strings.Replace(user, `lib.mkForce "30s"`, `"30s"`, 1),
			"The option `systemd.services.nixrb-discover-client.serviceConfig.RestartSec' has conflicting definition values")
	})
	t.Run("nix-sshServe-alongside", func(t *testing.T) {
		const user = `{ nix.sshServe = { enable = true; keys = [ "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIES7pfa2S97qRyd63h3rbGp4cXJVx+WgOpAqVCoFqE9u cache" ]; };
		  services.nixrb-discover.advertise = { enable = true; createUser = true; trustedUser = true; enrollment.allowTags = [ "tag:nix-client" ]; }; }`
		r := mustEvalNixOS(t, "2.28.3", user)
		if len(r.FailedAssertions) > 0 {
			t.Errorf("assertions: %v", r.FailedAssertions)
		}
		if r.Config.Users.Users["nix-ssh"].Description != "Nix SSH store user" || len(r.Config.Users.Users["nix-ssh"].Keys) != 1 || !r.Config.Users.Users["nixrb-builder"].IsSystemUser {
			t.Errorf("users %+v", r.Config.Users.Users)
		}
		sshd := r.Config.Services.OpenSSH.ExtraConfig
		if !strings.Contains(sshd, "Match User nix-ssh\n") || !strings.Contains(sshd, "Match User nixrb-builder\n") {
			t.Errorf("sshd extraConfig:\n%s", sshd)
		}
		// The old default user name was nix.sshServe's own.
		evalFails(t, strings.Replace(user, "createUser = true;", `createUser = true; sshUser = "nix-ssh";`, 1),
			"The option `users.users.nix-ssh.description' has conflicting definition values")
	})
	t.Run("users-ssh-host-blocks-alongside", func(t *testing.T) {
		r := mustEvalNixOS(t, "2.28.3", `{ services.nixrb-discover.client.enable = true; programs.ssh.extraConfig = "Host ward\n  Port 2222\n"; }`)
		cfg := r.Config.Environment.Etc["ssh/ssh_config"]
		if cfg.Text == nil {
			t.Fatal("no /etc/ssh/ssh_config")
		}
		text := *cfg.Text
		if i, j := strings.Index(text, "Include /var/lib/nixrb-discover/ssh_config"), strings.Index(text, "Host ward"); i < 0 || j < 0 || i > j {
			t.Errorf("the Include is not before the user's Host block:\n%s", text)
		}
		sshResolves(t, text)
	})
	t.Run("long-ssh-user-with-createUser-is-a-clear-assertion", func(t *testing.T) {
		long := strings.Repeat("b", 32)
		r := mustEvalNixOS(t, "2.28.3", `{ services.nixrb-discover.advertise = { enable = true; createUser = true; sshUser = "`+long+`"; }; }`)
		want := []string{`services.nixrb-discover.advertise.createUser: sshUser "` + long + `" is 32 characters; NixOS user and group names have at most 31`}
		if !reflect.DeepEqual(r.FailedAssertions, want) {
			t.Errorf("failed assertions %q, want %q", r.FailedAssertions, want)
		}
		ok := mustEvalNixOS(t, "2.28.3", `{ services.nixrb-discover.advertise = { enable = true; createUser = true; sshUser = "`+long[:31]+`"; }; }`)
		if len(ok.FailedAssertions) > 0 || ok.Config.Users.Users[long[:31]].Group != long[:31] {
			t.Errorf("31 characters: assertions %q, users %v", ok.FailedAssertions, ok.Config.Users.Users)
		}
	})
	t.Run("mistakes-fail-assertions", func(t *testing.T) {
		r := mustEvalNixOS(t, "2.28.3", `{ services.nixrb-discover = { client = { enable = true; tailnet.enable = false; mdns.enable = true; };
		  advertise = { enable = true; tailnet.enable = false; }; }; }`)
		want := []string{
			"services.nixrb-discover.advertise: nothing to advertise on; keep tailnet.enable or set mdns.enable",
			"services.nixrb-discover.client.mdns.enable needs mdns.interfaces",
			"services.nixrb-discover.client.mdns.enable needs trustKeys or pins: unsigned, unpinned mDNS adverts are never used",
		}
		if !reflect.DeepEqual(r.FailedAssertions, want) {
			t.Errorf("failed assertions:\n%q\nwant\n%q", r.FailedAssertions, want)
		}
	})
	t.Run("misconfigurations-fail-with-the-module-systems-message", func(t *testing.T) {
		for _, c := range []struct{ name, user, want string }{
			{"option-typo", `{ services.nixrb-discover.client = { enable = true; tag = [ "tag:nix-builder" ]; }; }`,
				"The option `services.nixrb-discover.client.tag' does not exist."},
			{"list-given-a-string", `{ services.nixrb-discover.client = { enable = true; tags = "tag:nix-builder"; }; }`,
				"A definition for option `services.nixrb-discover.client.tags' is not of type `list of string'."},
			{"port-given-a-string", `{ services.nixrb-discover.advertise = { enable = true; sshPort = "2222"; }; }`,
				"A definition for option `services.nixrb-discover.advertise.sshPort' is not of type `16 bit unsigned integer; between 0 and 65535 (both inclusive)'."},
			{"unknown-protocol", `{ services.nixrb-discover.advertise = { enable = true; protocol = "ssh-ng+tls"; }; }`,
				"A definition for option `services.nixrb-discover.advertise.protocol' is not of type `one of \"ssh-ng\", \"ssh\"'."},
			{"speedFactor-zero", `{ services.nixrb-discover.client = { enable = true; static = [ { hostName = "ward"; systems = [ "x86_64-linux" ]; speedFactor = 0; } ]; }; }`,
				"A definition for option `services.nixrb-discover.client.static.\"[definition 1-entry 1]\".speedFactor' is not of type `positive integer or floating point number, meaning >0'."},
			{"static-entry-without-hostName", `{ services.nixrb-discover.client = { enable = true; static = [ { systems = [ "x86_64-linux" ]; } ]; }; }`,
				"The option `services.nixrb-discover.client.static.\"[definition 1-entry 1]\".hostName' was accessed but has no value defined. Try setting the option."},
		} {
			t.Run(c.name, func(t *testing.T) { evalFails(t, c.user, c.want) })
		}
		t.Run("buildMachines-entry-without-systems", func(t *testing.T) {
			r := mustEvalNixOS(t, "2.28.3", `{ config, ... }: { nix.buildMachines = [ { hostName = "old"; } ];
			  services.nixrb-discover.client = { enable = true; static = config.nix.buildMachines; }; }`)
			if len(r.FailedAssertions) != 1 || !strings.Contains(r.FailedAssertions[0], "At least one system type") || !strings.Contains(r.FailedAssertions[0], "old") {
				t.Errorf("failed assertions %q", r.FailedAssertions)
			}
		})
	})
}

// sameSet: v is a JSON list of exactly these strings, in any order.
func sameSet(v any, want ...string) bool {
	l, _ := v.([]any)
	if len(l) != len(want) {
		return false
	}
	for _, w := range want {
		found := false
		for _, x := range l {
			found = found || x == w
		}
		if !found {
			return false
		}
	}
	return true
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// sshdMatchShutsTunnels runs the real sshd's config test (sshd -T) on the
// module's Match block after a global `PermitTunnel yes`: the builder user
// gets no tunnels (`restrict` in its keys does not cover tunnel
// forwarding), other users keep the global settings.
func sshdMatchShutsTunnels(t *testing.T, extraConfig string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Log("sshd -T needs root: the Match block was checked as text only")
		return
	}
	if _, err := os.Stat("/usr/sbin/sshd"); err != nil {
		t.Log("no /usr/sbin/sshd (openssh-server): the Match block was checked as text only")
		return
	}
	for _, tool := range []string{"ssh-keygen"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Logf("%s not installed: the Match block was checked as text only", tool)
			return
		}
	}
	hoststate.EnsureSSHDPrivsepDir(t)
	dir := t.TempDir()
	hostKey := filepath.Join(dir, "host")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", hostKey).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	cfg := filepath.Join(dir, "sshd_config")
	// As NixOS writes sshd_config: its settings, then extraConfig. The
	// command the Match block names need not exist for sshd -T.
	text := "HostKey " + hostKey + "\nPidFile none\nPermitTunnel yes\nAllowTcpForwarding yes\nPermitTTY yes\n" + extraConfig
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	settings := func(user string) map[string]string {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "/usr/sbin/sshd", "-T", "-f", cfg, "-C", "user="+user+",host=laptop,addr=127.0.0.1").CombinedOutput()
		if err != nil {
			t.Fatalf("sshd -T: %v\n%s", err, out)
		}
		m := map[string]string{}
		for _, l := range strings.Split(string(out), "\n") {
			if k, v, ok := strings.Cut(l, " "); ok {
				m[k] = v
			}
		}
		return m
	}
	b, other := settings("nixrb-builder"), settings("alice")
	for k, want := range map[string]string{"permittunnel": "no", "allowtcpforwarding": "no", "permittty": "no", "allowagentforwarding": "no", "x11forwarding": "no", "allowstreamlocalforwarding": "no",
		"authorizedkeyscommand": "/etc/ssh/nixrb-discover-authorized-keys %u", "authorizedkeyscommanduser": "root"} {
		if b[k] != want {
			t.Errorf("sshd -T for the builder user: %s %q, want %q", k, b[k], want)
		}
	}
	if other["permittunnel"] != "yes" || other["permittty"] != "yes" || other["allowtcpforwarding"] != "yes" {
		t.Errorf("the Match block leaks to other users: permittunnel %q, permittty %q, allowtcpforwarding %q", other["permittunnel"], other["permittty"], other["allowtcpforwarding"])
	}
}

// sshResolves runs the real ssh's config resolution (ssh -G) on the
// ssh_config NixOS generates, with the client's alias file where the
// Include points: an alias the client wrote reaches its port, and the
// user's own Host block still works.
func sshResolves(t *testing.T, sshConfig string) {
	t.Helper()
	if _, err := exec.LookPath("ssh"); err != nil {
		t.Log("ssh not installed (openssh-client): ssh_config was checked as text only")
		return
	}
	dir := t.TempDir()
	aliases := filepath.Join(dir, "aliases")
	// What the client writes (discover.machines: Host alias, HostName, Port, HostKeyAlias).
	if err := os.WriteFile(aliases, []byte("Host nixrb-b2\n  HostName b2.tail1234.ts.net\n  Port 2200\n  HostKeyAlias nixrb-b2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "ssh_config")
	if err := os.WriteFile(cfg, []byte(strings.ReplaceAll(sshConfig, "/var/lib/nixrb-discover/ssh_config", aliases)), 0o644); err != nil {
		t.Fatal(err)
	}
	resolve := func(host string) map[string]string {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "ssh", "-G", "-F", cfg, host).CombinedOutput()
		if err != nil {
			t.Fatalf("ssh -G %s: %v\n%s", host, err, out)
		}
		m := map[string]string{}
		for _, l := range strings.Split(string(out), "\n") {
			if k, v, ok := strings.Cut(l, " "); ok {
				m[k] = v
			}
		}
		return m
	}
	if b2 := resolve("nixrb-b2"); b2["hostname"] != "b2.tail1234.ts.net" || b2["port"] != "2200" {
		t.Errorf("the client's alias does not apply: hostname %q, port %q", b2["hostname"], b2["port"])
	}
	if w := resolve("ward"); w["port"] != "2222" {
		t.Errorf("the user's Host ward block: port %q, want 2222", w["port"])
	}
}

// TestModuleOptionDocs renders our options as the NixOS manual does
// (lib.optionAttrSetToDocList): every option has a description and a type,
// and defaults that depend on the system are shown as text.
func TestModuleOptionDocs(t *testing.T) {
	out, stderr, err := nixInstantiate(t, nixosExpr("2.28.3", "{ }", "r.docs"))
	if err != nil {
		t.Fatalf("option docs do not render: %v\n%s", err, stderr)
	}
	var docs []struct {
		Name, Description, Type string
		Default                 *struct{ Text string }
		ReadOnly                bool
	}
	if err := json.Unmarshal(out, &docs); err != nil {
		t.Fatalf("%s: %v", out, err)
	}
	if len(docs) < 45 {
		t.Errorf("only %d options documented", len(docs))
	}
	byName := map[string]string{}
	for _, d := range docs {
		if strings.TrimSpace(d.Description) == "" || d.Type == "" {
			t.Errorf("%s: description %q, type %q", d.Name, d.Description, d.Type)
		}
		if d.Default != nil {
			byName[d.Name] = d.Default.Text
		}
	}
	for name, want := range map[string]string{
		"services.nixrb-discover.advertise.sshUser": `"nixrb-builder"`,
		"services.nixrb-discover.advertise.sshPort": "head config.services.openssh.ports",
		"services.nixrb-discover.client.package":    "pkgs.callPackage ./nix/package.nix { }",
		"services.nixrb-discover.client.static":     "[ ]",
	} {
		if byName[name] != want {
			t.Errorf("%s: default shown as %q, want %q", name, byName[name], want)
		}
	}
}

// TestSettingsAreFlags feeds the JSON --config files the module writes
// (through the real evaluation) to the real binary: ff rejects a config
// key that is not a flag, so every key the module writes must exist. The
// run stops at a bad --interval, before the daemon does anything.
func TestSettingsAreFlags(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "nixrb-discover")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/nixrb-discover")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	// Every setting the module can write, on.
	const user = `{ config, ... }: {
	  nix.buildMachines = [ { hostName = "old"; system = "x86_64-linux"; publicHostKey = "c3NoLWVkMjU1MTkgQUFBQQo="; } ];
	  services.nixrb-discover.advertise = {
	    enable = true; sshPort = 2222; protocol = "ssh"; systems = [ "x86_64-linux" "i686-linux" ];
	    supportedFeatures = [ ]; mandatoryFeatures = [ "big-parallel" ]; maxJobs = 8; speedFactor = 1.5;
	    hostName = "ward"; signKeyFile = "/run/keys/fleet"; allowTags = [ "tag:nix-client" ]; allowCaps = [ "example.com/cap/nix" ];
	    mdns = { enable = true; interfaces = [ "eth0" ]; };
	    enrollment = { allowTags = [ "tag:nix-client" ]; allowCaps = [ "example.com/cap/nix" ]; };
	  };
	  services.nixrb-discover.client = {
	    enable = true; builders = [ "ward" ]; address = "ip"; hold = "5m"; nixStateDir = "/nix/var/nix";
	    mdns = { enable = true; interfaces = [ "eth0" ]; };
	    trustKeys = [ "/etc/nixrb/fleet.pub" ]; pins = { ward = "ssh-ed25519 AAAA"; };
	    static = config.nix.buildMachines; checkStatic = true;
	  };
	}`
	r := mustEvalNixOS(t, "2.28.3", user)
	if len(r.FailedAssertions) > 0 {
		t.Errorf("assertions: %v", r.FailedAssertions)
	}
	for role, keys := range map[string][]string{
		"advertise": {"ssh-user", "ssh-port", "protocol", "systems", "features", "mandatory-features", "max-jobs", "speed-factor", "hostname", "sign-key", "tailnet", "advert-port", "allow-tag", "allow-cap", "mdns", "mdns-iface", "enroll-allow-tag", "enroll-allow-cap"},
		"client":    {"machines", "static", "check-static", "hold", "nix-state-dir", "ssh-config", "ssh-key", "tailnet", "tag", "builder", "address", "mdns", "mdns-iface", "trust-key", "pin"},
	} {
		t.Run(role, func(t *testing.T) {
			file, cfg := daemonConfig(t, r, "nixrb-discover-"+role)
			for _, k := range keys {
				if _, ok := cfg[k]; !ok {
					t.Errorf("the %s config lacks %q (so this test would not check it): %v", role, k, cfg)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			out, _ := exec.CommandContext(ctx, bin, role, "--config", file, "--interval=0s").CombinedOutput()
			if !strings.Contains(string(out), `--interval "0s": want a positive duration`) {
				t.Errorf("the %s config file %s was not accepted up to --interval:\n%s", role, file, out)
			}
		})
	}
}
