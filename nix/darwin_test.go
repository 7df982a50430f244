package nix

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/launchd"
	"howett.net/plist"
)

// darwinLib is the nixpkgs lib the nix-darwin evaluation uses: the
// vendored copy when the repository has one, else the shared one.
func darwinLib(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"testdata/nixpkgs-lib/lib", "/work/shared/nixpkgs-lib/lib"} {
		if _, err := os.Stat(filepath.Join(p, "modules.nix")); err == nil {
			abs, err := filepath.Abs(p)
			if err != nil {
				t.Fatal(err)
			}
			return abs
		}
	}
	t.Skip("no nixpkgs lib (nix/testdata/nixpkgs-lib) to evaluate the nix-darwin module with")
	return ""
}

// darwinEval is what testdata/darwin-eval.nix reports of a nix-darwin
// system: the plists nix-darwin would write to /Library/LaunchDaemons,
// Nix's settings and the files in /etc.
type darwinEval struct {
	FailedAssertions  []string          `json:"failedAssertions"`
	Warnings          []string          `json:"warnings"`
	Plists            map[string]string `json:"plists"`
	Builders          *string           `json:"builders"`
	DistributedBuilds *bool             `json:"distributedBuilds"`
	EtcMachines       *string           `json:"etcMachines"`
	NixCustomConf     *string           `json:"nixCustomConf"`
	SSHConfig         string            `json:"sshConfig"`
	SystemPackages    []string          `json:"systemPackages"`
}

// darwinInstantiate evaluates expr (with `lib` bound to the real nixpkgs
// lib) with Debian's nix-instantiate, bounded.
func darwinInstantiate(t *testing.T, expr string) ([]byte, string, error) {
	t.Helper()
	p, err := exec.LookPath("nix-instantiate")
	if err != nil {
		t.Skip("nix-instantiate not installed (Debian package nix-bin; scripts/test.sh installs it)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	full := "let lib = import " + darwinLib(t) + "; in " + expr
	// --read-write-mode: writeText (builtins.toFile) writes its file to
	// the store, so the test reads the config file the daemon would.
	cmd := exec.CommandContext(ctx, p, "--eval", "--strict", "--json", "--read-write-mode", "--expr", full)
	cmd.Dir = "."
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil && strings.Contains(stderr.String(), "Permission denied") && strings.Contains(stderr.String(), "/nix/") {
		t.Skipf("cannot write the module's files to the Nix store (run as root or with a nix-daemon): %s", stderr.String())
	}
	return out, stderr.String(), err
}

// evalDarwin evaluates a nix-darwin configuration (a Nix module, as the
// user writes it) with our module.
func evalDarwin(t *testing.T, nixVersion, user string) darwinEval {
	t.Helper()
	out, stderr, err := darwinInstantiate(t, `(import ./testdata/darwin-eval.nix { inherit lib; nixVersion = "`+nixVersion+`"; user = `+user+`; }).out`)
	if err != nil {
		t.Fatalf("the nix-darwin configuration does not evaluate: %v\n%s", err, stderr)
	}
	var r darwinEval
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	return r
}

// clientJob decodes the client's plist as launchd would, and the JSON
// --config file its command names.
func clientJob(t *testing.T, r darwinEval) (map[string]any, map[string]any) {
	t.Helper()
	text, ok := r.Plists[launchd.ClientPlist]
	if !ok {
		t.Fatalf("no /Library/LaunchDaemons/%s; plists: %v", launchd.ClientPlist, r.Plists)
	}
	var job map[string]any
	if format, err := plist.Unmarshal([]byte(text), &job); err != nil || format != plist.XMLFormat {
		t.Fatalf("nix-darwin's plist is not an XML property list (%v):\n%s", err, text)
	}
	args, _ := job["ProgramArguments"].([]any)
	if len(args) != 3 || args[0] != "/bin/sh" || args[1] != "-c" {
		t.Fatalf("ProgramArguments %q: want /bin/sh -c SCRIPT", args)
	}
	script := args[2].(string)
	if !strings.HasPrefix(script, "/bin/wait4path /nix/store && ") {
		t.Errorf("the job does not wait for the /nix volume: %q", script)
	}
	_, execPart, ok := strings.Cut(script, "&& exec ")
	if !ok {
		t.Fatalf("no exec in %q", script)
	}
	f := strings.Fields(execPart)
	if len(f) < 4 || !strings.HasSuffix(f[0], "/bin/nixrb-discover") || f[1] != "client" || f[2] != "--config" {
		t.Fatalf("the job runs %q, want nixrb-discover client --config FILE", execPart)
	}
	b, err := os.ReadFile(f[3])
	if err != nil {
		t.Fatal(err)
	}
	var conf map[string]any
	if err := json.Unmarshal(b, &conf); err != nil {
		t.Fatalf("%s: %v", f[3], err)
	}
	return job, conf
}

func TestDarwinModuleRunsTheClientAsTheStandalonePlistDoes(t *testing.T) {
	r := evalDarwin(t, "2.28.3", `{ services.nixrb-discover.client.enable = true; }`)
	if len(r.FailedAssertions) > 0 || len(r.Warnings) > 0 {
		t.Fatalf("assertions %q, warnings %q", r.FailedAssertions, r.Warnings)
	}
	job, conf := clientJob(t, r)
	b, err := launchd.Client(launchd.DefaultBinary)
	if err != nil {
		t.Fatal(err)
	}
	var standalone map[string]any
	if _, err := plist.Unmarshal(b, &standalone); err != nil {
		t.Fatal(err)
	}
	// The same job as `nixrb-discover launchd-plist`, but for the
	// program and where nix is.
	for k, want := range standalone {
		if k == "ProgramArguments" || k == "EnvironmentVariables" {
			continue
		}
		if got, ok := job[k]; !ok || !jsonEqual(got, want) {
			t.Errorf("%s = %v in nix-darwin's plist, %v in launchd-plist's", k, got, want)
		}
	}
	for k := range job {
		if _, ok := standalone[k]; !ok {
			t.Errorf("nix-darwin's plist has %s, launchd-plist's does not", k)
		}
	}
	env, _ := job["EnvironmentVariables"].(map[string]any)
	if env["HOME"] != "/var/root" || !strings.Contains(env["PATH"].(string), "-nix-2.28.3/bin:") {
		t.Errorf("EnvironmentVariables %v: want HOME=/var/root and nix.package's bin on PATH", env)
	}
	if conf["machines"] != launchd.StateDir+"/machines" || conf["ssh-config"] != launchd.StateDir+"/ssh_config" {
		t.Errorf("config %v: want machines and ssh-config (Nix 2.28 cannot say host:port) under %s", conf, launchd.StateDir)
	}
	if r.Builders == nil || *r.Builders != "@"+launchd.StateDir+"/machines" || r.DistributedBuilds == nil || !*r.DistributedBuilds {
		t.Errorf("nix.settings.builders %v, nix.distributedBuilds %v: want Nix to read our file", r.Builders, r.DistributedBuilds)
	}
	if r.SSHConfig != "Include "+launchd.StateDir+"/ssh_config\n" {
		t.Errorf("programs.ssh.extraConfig %q: root's ssh must include the client's aliases", r.SSHConfig)
	}
	if !slices.Contains(r.SystemPackages, "nixrb-discover") {
		t.Errorf("environment.systemPackages %q: list and doctor need the command", r.SystemPackages)
	}
}

func jsonEqual(a, b any) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Equal(ja, jb)
}

func TestDarwinModuleTakesNixBuildMachinesAsStatic(t *testing.T) {
	r := evalDarwin(t, "2.31.0", `{ config, ... }: {
	  nix.buildMachines = [ { hostName = "ward"; system = "x86_64-linux"; sshUser = "nix"; maxJobs = 4; protocol = "ssh-ng";
	    systems = [ ]; sshKey = null; speedFactor = 1; mandatoryFeatures = [ ]; supportedFeatures = [ "kvm" ]; publicHostKey = null; } ];
	  services.nixrb-discover.client = { enable = true; static = config.nix.buildMachines; tailnet.enable = false; };
	}`)
	if len(r.FailedAssertions) > 0 {
		t.Fatalf("assertions: %q", r.FailedAssertions)
	}
	_, conf := clientJob(t, r)
	static, _ := conf["static"].(string)
	b, err := os.ReadFile(static)
	if err != nil {
		t.Fatalf("static file %q: %v", static, err)
	}
	if string(b) != "ssh-ng://nix@ward x86_64-linux - 4 1 kvm - -\n" {
		t.Errorf("static machines file %q", b)
	}
	if r.EtcMachines != nil {
		t.Errorf("/etc/nix/machines is still written (%q): a second, unchecked list of the same builders", *r.EtcMachines)
	}
	if _, ok := conf["ssh-config"]; ok || r.SSHConfig != "" {
		t.Errorf("Nix 2.31 takes host:port; no ssh_config aliases wanted (config %v, ssh %q)", conf, r.SSHConfig)
	}
}

func TestDarwinModuleUnderDeterminateNix(t *testing.T) {
	// Determinate Nix owns /etc/nix/nix.conf: nix-darwin then has
	// nix.enable = false and throws on any nix.* option read.
	r := evalDarwin(t, "2.28.3", `{ nix.enable = false; services.nixrb-discover.client.enable = true; }`)
	if len(r.FailedAssertions) > 0 {
		t.Fatalf("assertions: %q", r.FailedAssertions)
	}
	if r.NixCustomConf == nil || *r.NixCustomConf != "builders = @"+launchd.StateDir+"/machines\n" {
		t.Errorf("/etc/nix/nix.custom.conf %v: want the builders line Determinate's nix.conf includes", r.NixCustomConf)
	}
	job, _ := clientJob(t, r)
	env, _ := job["EnvironmentVariables"].(map[string]any)
	if !strings.HasPrefix(env["PATH"].(string), "/nix/var/nix/profiles/default/bin:") {
		t.Errorf("PATH %q: want the installer's default profile (nix.package is not ours to read)", env["PATH"])
	}
}

func TestDarwinModuleRefusesWhatCannotWork(t *testing.T) {
	r := evalDarwin(t, "2.28.3", `{ nix.distributedBuilds = false; services.nixrb-discover.client = { enable = true; mdns.enable = true; }; }`)
	for _, want := range []string{"nix.settings.builders must include @/var/lib/nixrb-discover/machines", "mdns.enable needs mdns.interfaces", "needs trustKeys or pins"} {
		if !slices.ContainsFunc(r.FailedAssertions, func(m string) bool { return strings.Contains(m, want) }) {
			t.Errorf("no failed assertion says %q: %q", want, r.FailedAssertions)
		}
	}
	// The real module system checks types: a string for a list fails.
	_, stderr, err := darwinInstantiate(t, `(import ./testdata/darwin-eval.nix { inherit lib; user = { services.nixrb-discover.client = { enable = true; tags = "tag:x"; }; }; }).out`)
	if err == nil || !strings.Contains(stderr, "services.nixrb-discover.client.tags") {
		t.Errorf("tags = \"tag:x\" evaluated (err %v):\n%s", err, stderr)
	}
}

func TestDarwinModuleHasTheNixOSModulesOptionNames(t *testing.T) {
	// Option paths of services.nixrb-discover.client in each module, read
	// without evaluating either (the NixOS one needs NixOS's options).
	const expr = `
	let
	  paths = prefix: o: lib.concatLists (lib.mapAttrsToList (n: v:
	    if lib.isOption v then [ (prefix + n) ] else paths (prefix + n + ".") v) o);
	  of = m: paths "" ((import m { config = { }; inherit lib; pkgs = { }; utils = { }; }).options.services.nixrb-discover.client);
	  flake = (import ../flake.nix).outputs { self = { }; nixpkgs = { lib.genAttrs = _: _: { }; }; };
	in { nixos = of ./module.nix; darwin = of ./darwin-module.nix; flake = toString flake.darwinModules.default; }`
	out, stderr, err := darwinInstantiate(t, expr)
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	var got struct {
		NixOS  []string `json:"nixos"`
		Darwin []string `json:"darwin"`
		Flake  string   `json:"flake"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.NixOS, got.Darwin) || len(got.Darwin) < 10 {
		t.Errorf("client options differ:\n NixOS:  %q\n darwin: %q", got.NixOS, got.Darwin)
	}
	if abs, _ := filepath.Abs("darwin-module.nix"); got.Flake != abs {
		t.Errorf("flake darwinModules.default = %s, want %s", got.Flake, abs)
	}
}
