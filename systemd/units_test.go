package systemd_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/nixrb-discover/nixrb-discover/systemd"
)

// unit is a parsed unit file: section -> key -> values in file order.
type unit map[string]map[string][]string

// parseUnit reads a unit file the simple way our units are written: no
// line continuations, no quoting. It fails on anything else, so that the
// NixOS module's parser (nix/units.nix) reads the same file the same way.
func parseUnit(t *testing.T, name string, b []byte) unit {
	t.Helper()
	u := unit{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			u[section] = map[string][]string{}
		case strings.HasSuffix(line, `\`):
			t.Fatalf("%s:%d: line continuation: keep each directive on one line", name, n)
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" || k != strings.TrimSpace(k) || strings.ContainsAny(k, " \t") {
				t.Fatalf("%s:%d: want KEY=VALUE inside a section, got %q", name, n, line)
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	return u
}

// get is the single value of a key; it fails on a repeated key.
func (u unit) get(t *testing.T, section, key string) (string, bool) {
	t.Helper()
	vs := u[section][key]
	switch len(vs) {
	case 0:
		return "", false
	case 1:
		return vs[0], true
	}
	t.Errorf("[%s] %s= given %d times: %q", section, key, len(vs), vs)
	return vs[len(vs)-1], true
}

func loadUnits(t *testing.T) map[string]unit {
	t.Helper()
	m := map[string]unit{}
	for name, b := range systemd.Units() {
		m[name] = parseUnit(t, name, b)
	}
	if len(m) != 2 || m[systemd.AdvertiseUnit] == nil || m[systemd.ClientUnit] == nil {
		t.Fatalf("embedded units: %v", systemd.UnitNames())
	}
	return m
}

// TestUnitDirectives fails when a directive the design relies on is
// dropped or changed. Every row says why the directive is there.
func TestUnitDirectives(t *testing.T) {
	units := loadUnits(t)
	const both = ""
	rows := []struct {
		unit, section, key, want string
	}{
		// sd_notify: READY=1 after the first round, STATUS= lines.
		{both, "Service", "Type", "notify"},
		// Only the daemon itself may notify, not the nix it runs.
		{both, "Service", "NotifyAccess", "main"},
		// The main loop pings at half of this; a stuck loop is restarted.
		{both, "Service", "WatchdogSec", "30s"},
		{both, "Service", "Restart", "on-failure"},
		{both, "Service", "RestartSec", "5s"},
		// Builders are found over the tailnet: start after tailscaled.
		{both, "Unit", "After", "tailscaled.service network-online.target"},
		{both, "Unit", "Wants", "network-online.target"},
		{both, "Install", "WantedBy", "multi-user.target"},
		// The client key, machines file, ssh_config, enrolled keys.
		{both, "Service", "StateDirectory", "nixrb-discover"},
		{systemd.ClientUnit, "Service", "RuntimeDirectory", "nixrb-discover"},
		// Not shared: a shared runtime directory goes when either unit stops.
		{systemd.AdvertiseUnit, "Service", "RuntimeDirectory", "nixrb-discover-advertise"},
		{systemd.ClientUnit, "Service", "ExecStart", systemd.DefaultBinary + " client --machines /var/lib/nixrb-discover/machines"},
		{systemd.AdvertiseUnit, "Service", "ExecStart", systemd.DefaultBinary + " advertise"},

		// Hardening. Root without capabilities: it owns what it writes
		// and connects to tailscaled's root-owned socket.
		{systemd.ClientUnit, "Service", "CapabilityBoundingSet", ""},
		// The agent may kill the sessions of a revoked enrolled key.
		{systemd.AdvertiseUnit, "Service", "CapabilityBoundingSet", "CAP_KILL"},
		{both, "Service", "AmbientCapabilities", ""},
		{both, "Service", "NoNewPrivileges", "yes"},
		// Everything read-only but the state directory (and /run/…).
		{both, "Service", "ProtectSystem", "strict"},
		{systemd.AdvertiseUnit, "Service", "ReadWritePaths", "/var/lib/nixrb-discover"},
		// The client also holds Nix's slot locks in its current-load/.
		{systemd.ClientUnit, "Service", "ReadWritePaths", "/var/lib/nixrb-discover -/nix/var/nix/current-load"},
		{both, "Service", "ProtectHome", "yes"},
		{both, "Service", "PrivateTmp", "yes"},
		{both, "Service", "PrivateMounts", "yes"},
		{systemd.ClientUnit, "Service", "PrivateDevices", "yes"},
		// The agent leaves /dev/kvm visible (Nix's kvm feature) but may
		// open no device.
		{systemd.AdvertiseUnit, "Service", "DevicePolicy", "closed"},
		// The device policy also answers access(2): without this, Nix
		// stops reporting kvm.
		{systemd.AdvertiseUnit, "Service", "DeviceAllow", "/dev/kvm rw"},
		{systemd.ClientUnit, "Service", "ProtectProc", "invisible"},
		{both, "Service", "ProtectKernelTunables", "yes"},
		{both, "Service", "ProtectKernelModules", "yes"},
		{both, "Service", "ProtectKernelLogs", "yes"},
		{both, "Service", "ProtectControlGroups", "yes"},
		{both, "Service", "ProtectClock", "yes"},
		{systemd.ClientUnit, "Service", "ProtectHostname", "yes"},
		// Unix (tailscaled, the status socket, sd_notify), IP, and
		// netlink (Go's interface listing, mDNS interfaces, nix).
		{both, "Service", "RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6 AF_NETLINK"},
		{both, "Service", "RestrictNamespaces", "yes"},
		{both, "Service", "RestrictRealtime", "yes"},
		{both, "Service", "RestrictSUIDSGID", "yes"},
		{both, "Service", "LockPersonality", "yes"},
		{both, "Service", "MemoryDenyWriteExecute", "yes"},
		{both, "Service", "RemoveIPC", "yes"},
		{both, "Service", "PrivateIPC", "yes"},
		{both, "Service", "KeyringMode", "private"},
		{both, "Service", "SystemCallArchitectures", "native"},
		// Not ~@privileged: render keeps the machines file's owner (chown).
		{both, "Service", "SystemCallFilter", "@system-service"},
		{both, "Service", "SystemCallErrorNumber", "EPERM"},
		// The machines file is not secret; the key is written 0600.
		{both, "Service", "UMask", "0022"},
	}
	for _, r := range rows {
		for _, name := range systemd.UnitNames() {
			if r.unit != both && r.unit != name {
				continue
			}
			got, ok := units[name].get(t, r.section, r.key)
			if !ok {
				t.Errorf("%s: [%s] %s= is missing (want %q)", name, r.section, r.key, r.want)
			} else if got != r.want {
				t.Errorf("%s: [%s] %s=%s, want %q", name, r.section, r.key, got, r.want)
			}
		}
	}

	// The agent counts running builds from other users' processes, and
	// Nix reports kvm only when /dev/kvm is there.
	adv := units[systemd.AdvertiseUnit]
	if v, ok := adv.get(t, "Service", "ProtectProc"); ok && v != "default" {
		t.Errorf("advertise: ProtectProc=%s hides the build users' processes (running builds)", v)
	}
	if v, ok := adv.get(t, "Service", "PrivateDevices"); ok && v != "no" {
		t.Errorf("advertise: PrivateDevices=%s hides /dev/kvm, so Nix stops reporting the kvm feature", v)
	}
	// Nothing else may grant privileges back.
	for name, u := range units {
		for _, k := range []string{"User", "DynamicUser", "PermissionsStartOnly", "PrivateNetwork", "ExecStartPre", "ExecStartPost"} {
			if _, ok := u["Service"][k]; ok {
				t.Errorf("%s: unexpected %s= (see the unit's comments for why each directive is there)", name, k)
			}
		}
	}
}

// TestUnitPaths checks the units against the paths the code uses.
func TestUnitPaths(t *testing.T) {
	units := loadUnits(t)
	cl := units[systemd.ClientUnit]
	rt, _ := cl.get(t, "Service", "RuntimeDirectory")
	if got := path.Dir(discover.DefaultSocket); got != "/run/"+rt {
		t.Errorf("the client's status socket %s is outside its RuntimeDirectory /run/%s", discover.DefaultSocket, rt)
	}
	sd, _ := cl.get(t, "Service", "StateDirectory")
	if got := path.Dir(discover.DefaultSSHKey); got != "/var/lib/"+sd {
		t.Errorf("the client's key %s is outside its StateDirectory /var/lib/%s", discover.DefaultSSHKey, sd)
	}
	exec, _ := cl.get(t, "Service", "ExecStart")
	if f := strings.Fields(exec); len(f) != 4 || f[2] != "--machines" || path.Dir(f[3]) != "/var/lib/"+sd {
		t.Errorf("client ExecStart=%s: want --machines under /var/lib/%s", exec, sd)
	}
	for name, u := range units {
		rt, _ := u.get(t, "Service", "RuntimeDirectory")
		env := map[string]string{}
		for _, e := range u["Service"]["Environment"] {
			k, v, _ := strings.Cut(e, "=")
			env[k] = v
		}
		// nix aborts when it cannot stat $HOME/.nix-defexpr (see
		// TestNixInUnitSandbox): HOME must be a directory it can reach.
		if env["HOME"] != "/run/"+rt {
			t.Errorf("%s: Environment=HOME=%s, want the RuntimeDirectory /run/%s", name, env["HOME"], rt)
		}
		if !slices.Contains(filepath.SplitList(env["PATH"]), "/nix/var/nix/profiles/default/bin") || !slices.Contains(filepath.SplitList(env["PATH"]), "/usr/bin") {
			t.Errorf("%s: PATH=%s lacks the Nix installer's or the distribution's nix", name, env["PATH"])
		}
	}
}

// TestUnitWatchdog: systemd sets WATCHDOG_USEC from WatchdogSec=, and the
// Notifier then pings at half of it.
func TestUnitWatchdog(t *testing.T) {
	for name, u := range loadUnits(t) {
		v, _ := u.get(t, "Service", "WatchdogSec")
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("%s: WatchdogSec=%s: %v", name, v, err)
		}
		t.Setenv("WATCHDOG_USEC", fmt.Sprint(d.Microseconds()))
		t.Setenv("WATCHDOG_PID", fmt.Sprint(os.Getpid()))
		if got := (systemd.Notifier{}).WatchdogInterval(); got != d/2 {
			t.Errorf("%s: WatchdogSec=%s gives pings every %s, want %s", name, v, got, d/2)
		}
	}
}

func TestWithBinary(t *testing.T) {
	units := systemd.Units()
	for name, b := range units {
		got, err := systemd.WithBinary(b, "/usr/local/bin/nixrb-discover")
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(got, []byte("ExecStart="+systemd.DefaultBinary)) || !bytes.Contains(got, []byte("ExecStart=/usr/local/bin/nixrb-discover ")) {
			t.Errorf("%s: ExecStart not rewritten:\n%s", name, got)
		}
		// Only the ExecStart= line changes.
		if d := len(got) - len(b); d != len("/usr/local/bin/nixrb-discover")-len(systemd.DefaultBinary) {
			t.Errorf("%s: size changed by %d", name, d)
		}
	}
	for _, bad := range []string{
		"nixrb-discover",           // relative
		"/opt/../bin/nixrb",        // not clean
		"/opt/my bin/nixrb",        // space: would need quoting
		"/opt/%h/nixrb",            // systemd specifier
		`/opt/a"b`,                 // quote
		"/opt/a\nExecStartPre=/x ", // line injection
	} {
		if _, err := systemd.WithBinary(units[systemd.ClientUnit], bad); err == nil {
			t.Errorf("WithBinary(%q) accepted", bad)
		}
	}
}

// installUnits writes the units into a fresh directory with ExecStart
// naming a real executable there (systemd-analyze verify checks it), and
// returns the directory.
func installUnits(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "nixrb-discover")
	copyFile(t, self, bin, 0o755)
	for name, b := range systemd.Units() {
		b, err := systemd.WithBinary(b, bin)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_EXCL, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}

func needSystemdAnalyze(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed (Debian package systemd; scripts/test.sh installs it)")
	}
	return p
}

// analyze runs systemd-analyze in dir, bounded.
func analyze(t *testing.T, dir string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, needSystemdAnalyze(t), args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestUnitsVerify runs systemd-analyze verify on both units. verify
// exits 0 even when it ignores a bad value ("Failed to parse …,
// ignoring"), so any output at all is a failure.
func TestUnitsVerify(t *testing.T) {
	needSystemdAnalyze(t)
	dir := installUnits(t)
	for _, name := range systemd.UnitNames() {
		t.Run(name, func(t *testing.T) {
			out, err := analyze(t, dir, "verify", "./"+name)
			if err != nil || strings.TrimSpace(out) != "" {
				t.Errorf("systemd-analyze verify %s: %v\n%s", name, err, out)
			}
		})
	}
	// The check itself works: a bad value in a copy is reported.
	t.Run("bad-value-is-caught", func(t *testing.T) {
		b, err := os.ReadFile(filepath.Join(dir, systemd.ClientUnit))
		if err != nil {
			t.Fatal(err)
		}
		b = bytes.Replace(b, []byte("ProtectSystem=strict"), []byte("ProtectSystem=banana"), 1)
		if err := os.WriteFile(filepath.Join(dir, "broken.service"), b, 0o644); err != nil {
			t.Fatal(err)
		}
		out, _ := analyze(t, dir, "verify", "./broken.service")
		if !strings.Contains(out, "banana") {
			t.Errorf("systemd-analyze verify did not report ProtectSystem=banana:\n%s", out)
		}
	})
}

// TestUnitsSecurity keeps systemd's own exposure score in the "OK" band
// (lower is better; 10 is an unprotected root service).
func TestUnitsSecurity(t *testing.T) {
	needSystemdAnalyze(t)
	dir := installUnits(t)
	score := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+) (\S+)`)
	for _, name := range systemd.UnitNames() {
		out, err := analyze(t, dir, "security", "--offline=yes", "--threshold=30", "./"+name)
		m := score.FindStringSubmatch(out)
		if m == nil {
			if strings.Contains(out, "offline") && strings.Contains(out, "unrecognized") {
				t.Skipf("this systemd-analyze has no --offline (systemd < 250): %s", out)
			}
			t.Fatalf("%s: no exposure level in:\n%s", name, out)
		}
		t.Logf("%s: exposure %s %s", name, m[1], m[2])
		if err != nil {
			t.Errorf("%s: exposure %s is above 3.0: %v\n%s", name, m[1], err, out)
		}
	}
}

// TestNixInUnitSandbox runs nix the way each unit runs it: as root
// without capabilities or new privileges, with / read-only and the homes
// inaccessible (ProtectSystem=strict, ProtectHome=yes), and with only the
// unit's Environment=. The agent reads `nix show-config --json`; the client
// reads `nix --version`. It is an approximation (no seccomp, no device
// policy) built from unshare(1) and setpriv(1); it found that nix aborts
// when it cannot stat /root/.nix-defexpr, which is why the units set HOME.
func TestNixInUnitSandbox(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to build the mount namespace")
	}
	for _, tool := range []string{"unshare", "setpriv", "nix"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (util-linux, nix-bin)", tool)
		}
	}
	runs := map[string][][]string{
		systemd.AdvertiseUnit: {{"nix", "--extra-experimental-features", "nix-command", "show-config", "--json"}},
		systemd.ClientUnit:    {{"nix", "--version"}},
	}
	for name, u := range loadUnits(t) {
		env := u["Service"]["Environment"]
		for _, argv := range runs[name] {
			t.Run(name+"/"+argv[len(argv)-1], func(t *testing.T) {
				out, err := runSandboxed(t, env, argv)
				if err != nil {
					t.Fatalf("%s in the sandbox of %s: %v\n%s", strings.Join(argv, " "), name, err, out)
				}
				if strings.Contains(strings.Join(argv, " "), "show-config") && !strings.Contains(out, `"system"`) {
					t.Errorf("no system setting in:\n%.500s", out)
				}
			})
		}
	}
	// Why HOME is set: without it, nix aborts in the same sandbox. Only
	// logged, as a newer nix may not need it.
	var noHome []string
	for _, e := range loadUnits(t)[systemd.ClientUnit]["Service"]["Environment"] {
		if !strings.HasPrefix(e, "HOME=") {
			noHome = append(noHome, e)
		}
	}
	if out, err := runSandboxed(t, noHome, []string{"nix", "--version"}); err != nil {
		t.Logf("without HOME, as expected, nix fails: %v: %.300s", err, out)
	} else {
		t.Logf("without HOME nix works too (%s); HOME is kept for older Nix", strings.TrimSpace(out))
	}
}

// runSandboxed runs argv with env in a private mount namespace shaped
// like the units' (see TestNixInUnitSandbox).
func runSandboxed(t *testing.T, env, argv []string) (string, error) {
	t.Helper()
	home := ""
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "HOME="); ok {
			home = v
		}
	}
	const script = `set -e
mount -t tmpfs -o mode=0755 tmpfs /run
if [ -n "$UNIT_HOME" ]; then mkdir -p "$UNIT_HOME"; fi
mount -t tmpfs -o mode=000 tmpfs /root
mount -t tmpfs -o mode=000 tmpfs /home
mount -o remount,bind,ro /
exec setpriv --bounding-set=-all --inh-caps=-all --ambient-caps=-all --no-new-privs -- "$@"`
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	args := append([]string{"-m", "--propagation", "private", "sh", "-c", script, "sh", "env", "-i"}, env...)
	cmd := exec.CommandContext(ctx, "unshare", append(args, argv...)...)
	cmd.Env = append(os.Environ(), "UNIT_HOME="+home)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	return string(out), err
}
