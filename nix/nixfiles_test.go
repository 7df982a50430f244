package nix

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
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

// nixCmd runs a Nix tool (Debian's nix-bin 2.8 here), bounded.
func nixCmd(t *testing.T, name string, args ...string) ([]byte, error) {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not installed (Debian package nix-bin; scripts/test.sh installs it)", name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, p, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Logf("%s %s: %s", name, strings.Join(args, " "), stderr.String())
	}
	return out, err
}

// evalJSON evaluates a Nix expression (builtins only) to JSON.
func evalJSON(t *testing.T, expr string, v any) {
	t.Helper()
	out, err := nixCmd(t, "nix-instantiate", "--eval", "--strict", "--json", "--expr", expr)
	if err != nil {
		t.Fatalf("nix-instantiate --eval %s: %v", expr, err)
	}
	if err := json.Unmarshal(out, v); err != nil {
		t.Fatalf("%s: %v", out, err)
	}
}

// nixFiles is every Nix file we ship: flake.nix and nix/**.
func nixFiles(t *testing.T) []string {
	t.Helper()
	files := []string{"../flake.nix"}
	err := filepath.WalkDir(".", func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".nix") {
			files = append(files, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// TestParse: every Nix file parses (nix-instantiate --parse).
func TestParse(t *testing.T) {
	files := nixFiles(t)
	if len(files) < 5 {
		t.Fatalf("only %d Nix files: %v", len(files), files)
	}
	for _, f := range files {
		if _, err := nixCmd(t, "nix-instantiate", "--parse", f); err != nil {
			t.Errorf("%s does not parse: %v", f, err)
		}
	}
}

// goParse reads a unit file the way units.nix does: single values as
// strings, repeated keys as lists.
func goParse(b []byte) map[string]map[string]any {
	u := map[string]map[string]any{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		if m := regexp.MustCompile(`^\[([A-Za-z]+)\]$`).FindStringSubmatch(line); m != nil {
			section = m[1]
			u[section] = map[string]any{}
			continue
		}
		m := regexp.MustCompile(`^([A-Za-z]+)=(.*)$`).FindStringSubmatch(line)
		if m == nil {
			continue
		}
		switch old := u[section][m[1]].(type) {
		case nil:
			u[section][m[1]] = m[2]
		case string:
			u[section][m[1]] = []any{old, m[2]}
		case []any:
			u[section][m[1]] = append(old, m[2])
		}
	}
	return u
}

// TestUnitsNix: the module's unit parser reads the embedded units exactly
// as Go does, so the NixOS services carry the same directives.
func TestUnitsNix(t *testing.T) {
	for name, b := range systemd.Units() {
		var got map[string]map[string]any
		evalJSON(t, `(import ./units.nix).parseFile ../systemd/`+name, &got)
		want := goParse(b)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: units.nix reads\n%v\nGo reads\n%v", name, got, want)
		}
		if len(want["Service"]) < 30 {
			t.Errorf("%s: only %d [Service] directives parsed", name, len(want["Service"]))
		}
	}
}

// advertiseCfg and clientCfg are option values as the module system
// would hand them to settings.nix.
const advertiseCfg = `{
  sshUser = "nix-ssh"; sshPort = 2222; protocol = "ssh-ng";
  systems = [ "x86_64-linux" "i686-linux" ]; supportedFeatures = [ ]; mandatoryFeatures = null;
  maxJobs = 8; speedFactor = 1.5; hostName = null; signKeyFile = "/run/keys/fleet";
  tailnet.enable = true; advertPort = 7461; allowTags = [ "tag:nix-client" ]; allowCaps = [ ];
  mdns = { enable = true; interfaces = [ "eth0" ]; };
  enrollment = { allowTags = [ ]; allowCaps = [ ]; commandUser = "root"; };
}`

const clientCfg = `{
  sshKey = "/var/lib/nixrb-discover/id_ed25519"; tailnet.enable = true;
  tags = [ "tag:nix-builder" ]; builders = [ ]; address = "magicdns";
  mdns = { enable = false; interfaces = [ "eth0" ]; };
  trustKeys = [ "/etc/nixrb/fleet.pub" ]; pins = { ward = "ssh-ed25519 AAAA"; };
  checkStatic = true;
}`

// TestSettingsNix: the JSON --config each daemon gets. Unset options are
// left out (the binary's defaults apply); comma-list flags are one
// string (a JSON array would set the flag once per item, each replacing
// the last).
func TestSettingsNix(t *testing.T) {
	t.Run("advertise", func(t *testing.T) {
		var got map[string]any
		evalJSON(t, `(import ./settings.nix).advertise `+advertiseCfg, &got)
		want := map[string]any{
			"ssh-user": "nix-ssh", "ssh-port": 2222.0, "protocol": "ssh-ng",
			"systems": "x86_64-linux,i686-linux", "features": "",
			"max-jobs": 8.0, "speed-factor": 1.5, "sign-key": "/run/keys/fleet",
			"tailnet": true, "advert-port": 7461.0, "allow-tag": []any{"tag:nix-client"},
			"mdns": true, "mdns-iface": []any{"eth0"},
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("got  %v\nwant %v", got, want)
		}
	})
	t.Run("client", func(t *testing.T) {
		var got map[string]any
		evalJSON(t, `(import ./settings.nix).client `+clientCfg+` { machines = "/var/lib/nixrb-discover/machines"; staticFile = "/nix/store/x-static"; sshConfig = null; }`, &got)
		want := map[string]any{
			"machines": "/var/lib/nixrb-discover/machines", "static": "/nix/store/x-static", "check-static": true,
			"ssh-key": "/var/lib/nixrb-discover/id_ed25519", "tailnet": true, "tag": []any{"tag:nix-builder"},
			"address": "magicdns", "mdns": false, "trust-key": []any{"/etc/nixrb/fleet.pub"},
			"pin": []any{"ward=ssh-ed25519 AAAA"},
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("got  %v\nwant %v", got, want)
		}
	})
	t.Run("enrollment-keys", func(t *testing.T) {
		var got map[string]any
		cfg := strings.Replace(advertiseCfg, `enrollment = { allowTags = [ ]`, `enrollment = { allowTags = [ "tag:nix-client" ]`, 1)
		evalJSON(t, `(import ./settings.nix).advertise `+cfg, &got)
		if !reflect.DeepEqual(got["enroll-allow-tag"], []any{"tag:nix-client"}) {
			t.Errorf("enroll-allow-tag = %v", got["enroll-allow-tag"])
		}
	})
}

// TestStaticMachinesNix: nix.buildMachines-shaped entries become a
// machines file that our parser (as Nix's) reads back to the same
// builders.
func TestStaticMachinesNix(t *testing.T) {
	var text string
	evalJSON(t, `(import ./settings.nix).staticMachines [
	  { hostName = "ward.tail1234.ts.net"; protocol = "ssh-ng"; system = null; systems = [ "x86_64-linux" "aarch64-linux" ];
	    sshUser = "nix-ssh"; sshKey = "/etc/nix/id_builder"; maxJobs = 8; speedFactor = 2;
	    supportedFeatures = [ "kvm" ]; mandatoryFeatures = [ "big-parallel" ];
	    publicHostKey = "c3NoLWVkMjU1MTkgQUFBQUMzTnphQzFsWkRJMU5URTVBQUFBSUxjakEwNWYyN1BHZ3pXNTFRUHc3Nk9US2Q4ZDdBSE5OMlBwZXc4aVNEa2Qgcm9vdEBiMQo="; }
	  { hostName = "old"; protocol = "ssh"; system = "x86_64-linux"; systems = [ ]; sshUser = null; sshKey = null;
	    maxJobs = 1; speedFactor = 1; supportedFeatures = [ ]; mandatoryFeatures = [ ]; publicHostKey = null; }
	]`, &text)
	want := "ssh-ng://nix-ssh@ward.tail1234.ts.net x86_64-linux,aarch64-linux /etc/nix/id_builder 8 2 kvm,big-parallel big-parallel c3NoLWVkMjU1MTkgQUFBQUMzTnphQzFsWkRJMU5URTVBQUFBSUxjakEwNWYyN1BHZ3pXNTFRUHc3Nk9US2Q4ZDdBSE5OMlBwZXc4aVNEa2Qgcm9vdEBiMQo=\n" +
		"ssh://old x86_64-linux - 1 1 - - -\n"
	if text != want {
		t.Errorf("got\n%s\nwant\n%s", text, want)
	}
	entries, err := render.Parse([]byte(text), render.ParseOptions{})
	if err != nil {
		t.Fatalf("our parser rejects the static file: %v", err)
	}
	if len(entries) != 2 || entries[0].Machine.URI.Host != "ward.tail1234.ts.net" || entries[0].Machine.SpeedFactor != 2 {
		t.Errorf("parsed %+v", entries)
	}
}

// TestVendorHash recomputes package.nix's vendorHash the way
// buildGoModule's vendor derivation makes it: `go mod vendor`, then the
// NAR hash of the tree. It fails, naming the new value, when a change of
// dependencies or imports makes the flake's hash stale. Offline: modules
// come from the local module cache (GOPROXY=off).
func TestVendorHash(t *testing.T) {
	if testing.Short() {
		t.Skip("copies the vendor tree (~60 MB)")
	}
	pkg, err := os.ReadFile("package.nix")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`vendorHash = "(sha256-[A-Za-z0-9+/=]+)";`).FindSubmatch(pkg)
	if m == nil {
		t.Fatal("package.nix: no vendorHash = \"sha256-...\"")
	}
	tmp := t.TempDir()
	// go.mod and go.sum are read from copies (-modfile), so nothing here
	// can touch the real ones.
	for _, f := range []string{"go.mod", "go.sum"} {
		b, err := os.ReadFile(filepath.Join("..", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(tmp, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	vendor := filepath.Join(tmp, "vendor")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "mod", "vendor", "-o", vendor)
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "GOFLAGS=-modfile="+filepath.Join(tmp, "go.mod"), "GOPROXY=off", "GOTOOLCHAIN=local")
	if out, err := cmd.CombinedOutput(); err != nil {
		if bytes.Contains(out, []byte("GOPROXY=off")) || bytes.Contains(out, []byte("module lookup disabled")) {
			t.Skipf("a module is missing from the local cache (go mod download fills it): %s", out)
		}
		t.Fatalf("go mod vendor: %v\n%s", err, out)
	}
	out, err := nixCmd(t, "nix", "--extra-experimental-features", "nix-command", "hash", "path", "--type", "sha256", "--sri", vendor)
	if err != nil {
		t.Fatalf("nix hash path: %v", err)
	}
	if got := strings.TrimSpace(string(out)); got != string(m[1]) {
		t.Errorf("nix/package.nix vendorHash is stale: set it to %q (was %q)", got, m[1])
	}
}

// moduleResult is what testdata/eval-module.nix returns.
type moduleResult struct {
	Config struct {
		Environment struct {
			Etc map[string]struct {
				Enable *bool
				Mode   string
				Text   string
			}
		}
		Nix struct {
			DistributedBuilds *bool
			Settings          map[string]any
		}
		Programs struct{ SSH struct{ ExtraConfig string } }
		Services struct{ OpenSSH struct{ ExtraConfig string } }
		Systemd  struct {
			Services map[string]struct {
				After, Wants, WantedBy []string
				Environment            map[string]string
				ServiceConfig          map[string]any
			}
		}
		Users struct{ Users map[string]map[string]any }
	}
	FailedAssertions []string
}

// evalModule evaluates nix/module.nix with a stub lib (see
// testdata/eval-module.nix) for one configuration.
func evalModule(t *testing.T, user, nixVersion, buildMachines string) moduleResult {
	t.Helper()
	return evalModuleNix(t, user, "nix", nixVersion, buildMachines)
}

// evalModuleNix is evalModule with nix.package of another pname (lix,
// determinate-nix).
func evalModuleNix(t *testing.T, user, pname, nixVersion, buildMachines string) moduleResult {
	t.Helper()
	out, err := nixCmd(t, "nix-instantiate", "--eval", "--strict", "--json", "testdata/eval-module.nix",
		"--arg", "user", user, "--argstr", "nixVersion", nixVersion, "--argstr", "nixPname", pname, "--arg", "buildMachines", buildMachines)
	if err != nil {
		t.Fatalf("evaluate the module with %s: %v", user, err)
	}
	// JSON keys are camelCase; map them onto the struct case-insensitively.
	var r moduleResult
	if err := json.Unmarshal(bytes.ReplaceAll(out, []byte(`"openssh"`), []byte(`"OpenSSH"`)), &r); err != nil {
		t.Fatalf("%s: %v", out, err)
	}
	return r
}

// TestModule checks the module's wiring for the configurations that
// docs/NIXOS.md shows.
func TestModule(t *testing.T) {
	units := map[string]map[string]map[string]any{}
	for name, b := range systemd.Units() {
		units[strings.TrimSuffix(name, ".service")] = goParse(b)
	}
	// The service is the embedded unit: every [Service] directive but
	// ExecStart and Environment (PATH comes from `path`, HOME from
	// `environment`), with the same value.
	sameAsUnit := func(t *testing.T, r moduleResult, name, execStart string) {
		t.Helper()
		s, ok := r.Config.Systemd.Services[name]
		if !ok {
			t.Fatalf("no systemd.services.%s", name)
		}
		want := map[string]any{}
		for k, v := range units[name]["Service"] {
			want[k] = v
		}
		delete(want, "Environment")
		want["ExecStart"] = execStart
		if !reflect.DeepEqual(s.ServiceConfig, want) {
			t.Errorf("%s serviceConfig:\n got %v\nwant %v", name, s.ServiceConfig, want)
		}
		if !strings.HasPrefix(s.Environment["HOME"], "/run/nixrb-discover") {
			t.Errorf("%s: environment.HOME = %q", name, s.Environment["HOME"])
		}
		if !reflect.DeepEqual(s.After, []string{"tailscaled.service", "network-online.target"}) || !reflect.DeepEqual(s.WantedBy, []string{"multi-user.target"}) {
			t.Errorf("%s: after %v, wantedBy %v", name, s.After, s.WantedBy)
		}
	}
	const pkg = "/nix/store/00000000000000000000000000000000-nixrb-discover/bin/nixrb-discover"
	const store = "/nix/store/00000000000000000000000000000000-"

	t.Run("laptop", func(t *testing.T) {
		r := evalModule(t, `{ client = { enable = true; tags = [ "tag:nix-builder" ]; }; }`, "2.28.3", "[ ]")
		if len(r.FailedAssertions) > 0 {
			t.Errorf("assertions: %v", r.FailedAssertions)
		}
		sameAsUnit(t, r, "nixrb-discover-client", pkg+" client --config "+store+"nixrb-discover-client.json")
		if got := r.Config.Nix.Settings["builders"]; got != "@/var/lib/nixrb-discover/machines" {
			t.Errorf("nix.settings.builders = %v", got)
		}
		if r.Config.Nix.DistributedBuilds == nil || !*r.Config.Nix.DistributedBuilds {
			t.Error("nix.distributedBuilds is not set")
		}
		// Nix 2.28 cannot say host:port: root's ssh includes our aliases.
		if r.Config.Programs.SSH.ExtraConfig != "Include /var/lib/nixrb-discover/ssh_config\n" {
			t.Errorf("programs.ssh.extraConfig = %q", r.Config.Programs.SSH.ExtraConfig)
		}
		if _, ok := r.Config.Environment.Etc["nix/machines"]; ok {
			t.Error("touches /etc/nix/machines although nix.buildMachines is empty")
		}
		if _, ok := r.Config.Systemd.Services["nixrb-discover-advertise"]; ok {
			t.Error("the agent runs on a client-only machine")
		}
	})
	t.Run("laptop-nix-2.31-needs-no-ssh-config", func(t *testing.T) {
		r := evalModule(t, `{ client.enable = true; }`, "2.31.1", "[ ]")
		if r.Config.Programs.SSH.ExtraConfig != "" {
			t.Errorf("programs.ssh.extraConfig = %q", r.Config.Programs.SSH.ExtraConfig)
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
			r := evalModuleNix(t, `{ client.enable = true; }`, tt.pname, tt.version, "[ ]")
			if got := r.Config.Programs.SSH.ExtraConfig != ""; got != tt.aliases {
				t.Errorf("%s %s: programs.ssh.extraConfig = %q, want the alias Include: %v", tt.pname, tt.version, r.Config.Programs.SSH.ExtraConfig, tt.aliases)
			}
		})
	}
	t.Run("static-from-buildMachines-hides-etc-nix-machines", func(t *testing.T) {
		r := evalModule(t, `{ client = { enable = true; static = [ { hostName = "old"; } ]; }; }`, "2.28.3", `[ { hostName = "old"; } ]`)
		e, ok := r.Config.Environment.Etc["nix/machines"]
		if !ok || e.Enable == nil || *e.Enable {
			t.Errorf("environment.etc.\"nix/machines\" = %+v, want enable = false", e)
		}
	})
	t.Run("builder", func(t *testing.T) {
		r := evalModule(t, `{ advertise.enable = true; }`, "2.28.3", "[ ]")
		if len(r.FailedAssertions) > 0 {
			t.Errorf("assertions: %v", r.FailedAssertions)
		}
		sameAsUnit(t, r, "nixrb-discover-advertise", pkg+" advertise --config "+store+"nixrb-discover-advertise.json")
		// Opt-in only: no user, no trust, no sshd change.
		if len(r.Config.Users.Users) > 0 || r.Config.Nix.Settings["trusted-users"] != nil || r.Config.Services.OpenSSH.ExtraConfig != "" {
			t.Errorf("users %v, trusted-users %v, sshd %q", r.Config.Users.Users, r.Config.Nix.Settings["trusted-users"], r.Config.Services.OpenSSH.ExtraConfig)
		}
		if _, ok := r.Config.Nix.Settings["builders"]; ok {
			t.Error("a builder-only machine changes its own builders")
		}
	})
	t.Run("builder-trusted-with-enrolment", func(t *testing.T) {
		r := evalModule(t, `{ advertise = { enable = true; sshUser = "builder"; createUser = true; trustedUser = true;
		  enrollment.allowTags = [ "tag:nix-client" ]; extraArgs = [ "--log-level=debug" ]; }; }`, "2.28.3", "[ ]")
		if len(r.FailedAssertions) > 0 {
			t.Errorf("assertions: %v", r.FailedAssertions)
		}
		if u := r.Config.Users.Users["builder"]; u["isSystemUser"] != true || u["useDefaultShell"] != true {
			t.Errorf("users.users.builder = %v", u)
		}
		if got := r.Config.Nix.Settings["trusted-users"]; !reflect.DeepEqual(got, []any{"builder"}) {
			t.Errorf("trusted-users = %v", got)
		}
		sshd := r.Config.Services.OpenSSH.ExtraConfig
		for _, want := range []string{
			"Match User builder\n",
			"  AuthorizedKeysCommand /etc/ssh/nixrb-discover-authorized-keys %u\n",
			"  AuthorizedKeysCommandUser root\n",
			"  PermitTTY no\n",
			"Match All\n",
		} {
			if !strings.Contains(sshd, want) {
				t.Errorf("sshd extraConfig lacks %q:\n%s", want, sshd)
			}
		}
		// The command is a copied file (mode set), not a store symlink.
		w := r.Config.Environment.Etc["ssh/nixrb-discover-authorized-keys"]
		if w.Mode != "0755" || !strings.Contains(w.Text, "exec "+pkg+` authorized-keys "$@"`) {
			t.Errorf("authorized-keys wrapper = %+v", w)
		}
		exec, _ := r.Config.Systemd.Services["nixrb-discover-advertise"].ServiceConfig["ExecStart"].(string)
		if !strings.HasSuffix(exec, " --log-level=debug") {
			t.Errorf("extraArgs not after --config: %s", exec)
		}
	})
	t.Run("mistakes-fail-assertions", func(t *testing.T) {
		r := evalModule(t, `{ client = { enable = true; tailnet.enable = false; mdns.enable = true; };
		  advertise = { enable = true; tailnet.enable = false; }; }`, "2.28.3", "[ ]")
		want := []string{
			"services.nixrb-discover.advertise: nothing to advertise on; keep tailnet.enable or set mdns.enable",
			"services.nixrb-discover.client.mdns.enable needs mdns.interfaces",
			"services.nixrb-discover.client.mdns.enable needs trustKeys or pins: unsigned, unpinned mDNS adverts are never used",
		}
		if !reflect.DeepEqual(r.FailedAssertions, want) {
			t.Errorf("failed assertions:\n%q\nwant\n%q", r.FailedAssertions, want)
		}
	})
}

// TestSettingsAreFlags feeds the JSON that settings.nix makes to the real
// binary: ff rejects a config key that is not a flag, so every key the
// module writes must exist. The run stops at a bad --interval, before the
// daemon does anything.
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
	run := func(t *testing.T, role, expr string) string {
		t.Helper()
		var settings map[string]any
		evalJSON(t, expr, &settings)
		b, _ := json.Marshal(settings)
		file := filepath.Join(tmp, role+".json")
		if err := os.WriteFile(file, b, 0o644); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		out, _ := exec.CommandContext(ctx, bin, role, "--config", file, "--interval=0s").CombinedOutput()
		return string(out)
	}
	paths := ` { machines = "/var/lib/nixrb-discover/machines"; staticFile = "/nix/store/x-static"; sshConfig = "/var/lib/nixrb-discover/ssh_config"; }`
	for role, expr := range map[string]string{
		"advertise": `(import ./settings.nix).advertise ` + advertiseCfg,
		"client":    `(import ./settings.nix).client ` + strings.Replace(clientCfg, "enable = false", "enable = true", 1) + paths,
	} {
		t.Run(role, func(t *testing.T) {
			out := run(t, role, expr)
			if !strings.Contains(out, `--interval "0s": want a positive duration`) {
				t.Errorf("the %s config file was not accepted up to --interval:\n%s", role, out)
			}
		})
	}
	t.Run("enrolment", func(t *testing.T) {
		cfg := strings.Replace(advertiseCfg, `enrollment = { allowTags = [ ]; allowCaps = [ ]`, `enrollment = { allowTags = [ "tag:nix-client" ]; allowCaps = [ "example.com/cap/nix" ]`, 1)
		out := run(t, "advertise", `(import ./settings.nix).advertise `+cfg)
		if !strings.Contains(out, `--interval "0s": want a positive duration`) {
			t.Errorf("the enrolment settings were not accepted up to --interval:\n%s", out)
		}
	})
}

// TestAuthorizedKeysCommandPath shows why the module's
// AuthorizedKeysCommand is a copied script in /etc/ssh and not
// /run/current-system/sw/bin/nixrb-discover: a real sshd refuses a command
// whose resolved path crosses a group-writable directory such as a NixOS
// /nix/store (1775 root:nixbld), even through a root-owned symlink, and
// accepts a copied file in root-owned 0755 directories.
//
// The test builds its own store-like directory (1775, root and a group of
// its own with two members, as nixbld has nixbld1..N) rather than relying
// on the machine's /nix/store, which is 0755 root:root on a fresh Debian
// machine with nix-bin.
func TestAuthorizedKeysCommandPath(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: sshd checks the command path as root")
	}
	for _, tool := range []string{"/usr/sbin/sshd", "ssh", "ssh-keygen", "groupadd"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (openssh-server, openssh-client, passwd)", tool)
		}
	}
	hoststate.EnsureSSHDPrivsepDir(t)
	// Outside /tmp (world-writable): every directory up to / must be
	// root-owned and not group- or world-writable for the good case.
	root, err := os.MkdirTemp("/var/lib", "nixrb-akc-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Chmod(root, 0o755))
	clientKey := filepath.Join(root, "id_ed25519")
	hostKey := filepath.Join(root, "host_ed25519")
	for _, k := range []string{clientKey, hostKey} {
		if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", k).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen: %v\n%s", err, out)
		}
	}
	pub, err := os.ReadFile(clientKey + ".pub")
	must(err)
	script := "#!/bin/sh\necho '" + strings.TrimSpace(string(pub)) + "'\n"

	// A store like NixOS's (1775 root:nixbld, a group with members, so
	// Debian's patch that tolerates a single-member group does not apply)
	// holding the command, behind a root-owned symlink, as
	// /run/current-system/sw/bin is.
	store := filepath.Join(root, "store")
	hoststate.GroupWritableDir(t, store)
	storePath := filepath.Join(store, "0000000000000000000000000000000-nixrb-akc-test-keys")
	must(os.WriteFile(storePath, []byte(script), 0o555))
	must(os.Mkdir(filepath.Join(root, "sw"), 0o755))
	must(os.Symlink(storePath, filepath.Join(root, "sw", "keys")))
	// Like environment.etc."ssh/nixrb-discover-authorized-keys" with a mode: a copy.
	must(os.Mkdir(filepath.Join(root, "etc"), 0o755))
	must(os.WriteFile(filepath.Join(root, "etc", "keys"), []byte(script), 0o755))

	login := func(t *testing.T, command string) (bool, string) {
		t.Helper()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		must(err)
		port := fmt.Sprint(ln.Addr().(*net.TCPAddr).Port)
		ln.Close()
		cfg := filepath.Join(root, "sshd_config")
		must(os.WriteFile(cfg, []byte(strings.Join([]string{
			"ListenAddress 127.0.0.1:" + port,
			"HostKey " + hostKey,
			"PidFile none",
			"UsePAM no",
			"PermitRootLogin prohibit-password",
			"PasswordAuthentication no",
			"KbdInteractiveAuthentication no",
			"AuthorizedKeysFile none",
			"AuthorizedKeysCommand " + command + " %u",
			"AuthorizedKeysCommandUser root",
		}, "\n")+"\n"), 0o600))
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// -d: serve one connection, then exit; -e: log to stderr.
		sshd := exec.CommandContext(ctx, "/usr/sbin/sshd", "-d", "-e", "-f", cfg)
		stderr, err := sshd.StderrPipe()
		must(err)
		must(sshd.Start())
		defer sshd.Process.Kill()
		var log strings.Builder
		listening := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			sc := bufio.NewScanner(stderr)
			for sc.Scan() {
				log.WriteString(sc.Text() + "\n")
				if strings.Contains(sc.Text(), "Server listening on") {
					close(listening)
				}
			}
		}()
		select {
		case <-listening:
		case <-done:
			sshd.Wait()
			t.Fatalf("sshd exited:\n%s", log.String())
		case <-ctx.Done():
			t.Fatal("sshd did not start listening within 30s")
		}
		ssh := exec.CommandContext(ctx, "ssh", "-F", "/dev/null", "-i", clientKey, "-p", port,
			"-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
			"-o", "ConnectTimeout=5", "root@127.0.0.1", "true")
		out, err := ssh.CombinedOutput()
		<-done // sshd -d exits after the one connection
		sshd.Wait()
		return err == nil, string(out) + log.String()
	}

	t.Run("store-path-behind-a-symlink-is-refused", func(t *testing.T) {
		ok, log := login(t, filepath.Join(root, "sw", "keys"))
		if ok {
			t.Fatalf("sshd accepted a command under a group-writable directory:\n%s", log)
		}
		if !strings.Contains(log, "Unsafe AuthorizedKeysCommand") {
			t.Errorf("refused, but not for the path:\n%s", log)
		}
	})
	t.Run("copied-script-is-accepted", func(t *testing.T) {
		if ok, log := login(t, filepath.Join(root, "etc", "keys")); !ok {
			t.Fatalf("login with the key from the copied command failed:\n%s", log)
		}
	})
}

// TestFlakeOutputs evaluates flake.nix's outputs and nix/package.nix
// with a stub nixpkgs (buildGoModule returns its arguments): the shape
// nix flake check would look at, without fetching nixpkgs.
func TestFlakeOutputs(t *testing.T) {
	const expr = `
	let
	  stubPkgs = goVersion: rec {
	    go = { version = goVersion; };
	    lib = { cleanSource = p: p; platforms.linux = [ "x86_64-linux" ]; };
	    buildGoModule = args: args // { builtWith = "buildGoModule"; };
	    buildGo126Module = args: args // { builtWith = "buildGo126Module"; };
	    callPackage = f: extra: let fn = import f; in fn (builtins.intersectAttrs (builtins.functionArgs fn) (stubPkgs goVersion) // extra);
	    stdenv.hostPlatform.system = "x86_64-linux";
	  };
	  nixpkgs = {
	    lib.genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
	    legacyPackages = { x86_64-linux = stubPkgs "1.26.8"; aarch64-linux = stubPkgs "1.25.4"; };
	  };
	  flake = import ../flake.nix;
	  self = flake.outputs { inherit self nixpkgs; };
	  p = self.packages.x86_64-linux.default;
	in {
	  inherit (p) pname vendorHash subPackages builtWith;
	  src = toString p.src;
	  oldGo = self.packages.aarch64-linux.default.builtWith;
	  module = toString self.nixosModules.default;
	  check = self.checks.x86_64-linux.package.pname;
	}`
	var got struct {
		Pname, VendorHash, BuiltWith, Src, OldGo, Module, Check string
		SubPackages                                             []string
	}
	evalJSON(t, expr, &got)
	abs, _ := filepath.Abs("..")
	if got.Pname != "nixrb-discover" || got.Check != "nixrb-discover" || !reflect.DeepEqual(got.SubPackages, []string{"cmd/nixrb-discover"}) {
		t.Errorf("package: %+v", got)
	}
	if got.Src != abs || got.Module != filepath.Join(abs, "nix", "module.nix") {
		t.Errorf("src %s, module %s: want the repository and nix/module.nix", got.Src, got.Module)
	}
	if !strings.HasPrefix(got.VendorHash, "sha256-") {
		t.Errorf("vendorHash %q", got.VendorHash)
	}
	// go.mod wants Go 1.26.6: an older default Go switches to buildGo126Module.
	if got.BuiltWith != "buildGoModule" || got.OldGo != "buildGo126Module" {
		t.Errorf("built with %s (Go 1.26.8) and %s (Go 1.25.4)", got.BuiltWith, got.OldGo)
	}
}
