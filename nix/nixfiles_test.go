package nixfiles

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

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
