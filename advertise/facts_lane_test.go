//go:build linux

package advertise

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/internal/nixtest"
)

// factsLane is a real Nix the agent reads its facts from, with the nix.conf
// that Nix is given and what it must answer.
type factsLane struct {
	version    nixtest.Version
	nixVersion *regexp.Regexp
	// configCommand is the nix subcommand that must give the config:
	// `config show` from Nix 2.19 on, `show-config` before.
	configCommand, otherCommand string
	// The lane's own settings (different per lane, so a fact can only
	// have come from that lane's nix.conf).
	extraPlatforms []string
	systemFeatures []string
	maxJobs        int
}

func factsLanes() []factsLane {
	return []factsLane{
		{
			version:        nixtest.V28,
			nixVersion:     regexp.MustCompile(`^2\.8\.0$`),
			configCommand:  "show-config --json",
			otherCommand:   "config show --json", // tried first, refused by 2.8
			extraPlatforms: []string{"aarch64-linux", "i686-linux"},
			systemFeatures: []string{"big-parallel", "kvm"},
			maxJobs:        6,
		},
		{
			version:        nixtest.V226,
			nixVersion:     regexp.MustCompile(`^2\.26\.\d+$`),
			configCommand:  "config show --json",
			otherCommand:   "show-config",
			extraPlatforms: []string{"armv7l-linux", "riscv64-linux"},
			systemFeatures: []string{"benchmark", "nixos-test", "uid-range"},
			maxJobs:        3,
		},
	}
}

// nixConf is the lane's nix.conf: nothing from the machine's or the
// user's configuration, and max-jobs as given ("auto" or a count).
func (l factsLane) nixConf(maxJobs string) string {
	return "sandbox = false\nsubstituters =\nbuild-users-group = nixbld\n" +
		"extra-platforms = " + strings.Join(l.extraPlatforms, " ") + "\n" +
		"system-features = " + strings.Join(l.systemFeatures, " ") + "\n" +
		"max-jobs = " + maxJobs + "\n"
}

// laneNix writes a nix for FactsOptions.NixPath that runs the lane's real
// Nix with conf as its only nix.conf, and logs each argument list (one
// line per run) to the returned file.
//
// Nix 2.8 is the host's, with NIX_CONF_DIR and a HOME of its own. Nix 2.26
// runs from the trixie chroot the way nixtest's clients do: in a private
// mount namespace with proc, /dev, sysfs, tmpfs /run and /tmp, and its own
// /nix and /etc/nix bound over the shared tree, which it never writes.
func laneNix(t *testing.T, v nixtest.Version, conf string) (nix, argvLog string) {
	t.Helper()
	var dir, run string
	switch v {
	case nixtest.V28:
		host := realNix(t)
		dir = t.TempDir()
		run = fmt.Sprintf("exec env -i PATH=/usr/bin:/bin LANG=C HOME=%[1]s/home XDG_CONFIG_HOME=%[1]s/home "+
			"XDG_CACHE_HOME=%[1]s/home NIX_CONF_DIR=%[1]s/etc-nix NIX_USER_CONF_FILES=%[1]s/none.conf "+
			"TMPDIR=%[1]s/tmp %[2]s \"$@\"\n", shq(dir), shq(host))
	case nixtest.V226:
		root := nixtest.EnsureTrixie(t)
		dir = nixtest.WorkDir(t, "facts")
		run = fmt.Sprintf(`exec unshare --mount --propagation private sh -c '
set -e
R=$1 D=$2
shift 2
mount -t proc proc "$R/proc"
mount --rbind /dev "$R/dev"
mount -t sysfs sysfs "$R/sys"
mount -t tmpfs -o mode=0755 tmpfs "$R/run"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
mount --bind "$D/nix" "$R/nix"
mount --bind "$D/etc-nix" "$R/etc/nix"
exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C HOME=/tmp XDG_CONFIG_HOME=/tmp XDG_CACHE_HOME=/tmp \
	NIX_CONF_DIR=/etc/nix NIX_USER_CONF_FILES=/nonexistent/nix.conf chroot "$R" nix "$@"
' sh %s %s "$@"
`, shq(root), shq(dir))
	default:
		t.Fatalf("no facts lane for %v", v)
	}
	for _, d := range []string{"home", "tmp", "nix", "etc-nix"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "etc-nix", "nix.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	argvLog = filepath.Join(dir, "argv.log")
	nix = filepath.Join(dir, "nix-"+strings.TrimPrefix(v.String(), "nix-"))
	script := "#!/bin/sh\nprintf '%s\\n' \"$*\" >> " + shq(argvLog) + "\n" + run
	if err := os.WriteFile(nix, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return nix, argvLog
}

// shq quotes s for sh.
func shq(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// nixRuns returns the argument lists the wrapper logged, one per run.
func nixRuns(t *testing.T, argvLog string) []string {
	t.Helper()
	b, err := os.ReadFile(argvLog)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

// checkConfigCommand fails t unless the config was read with the lane's
// own command (the last config run), never with the other one after it.
func checkConfigCommand(t *testing.T, l factsLane, runs []string) {
	t.Helper()
	var last string
	for _, r := range runs {
		if strings.Contains(r, "config show") || strings.Contains(r, "show-config") {
			last = r
			if l.version == nixtest.V226 && strings.Contains(r, "show-config") {
				t.Errorf("nix 2.26 was asked %q: want only `config show`", r)
			}
		}
	}
	if !strings.HasSuffix(last, l.configCommand) {
		t.Errorf("config read by %q, want %q; runs: %q", last, l.configCommand, runs)
	}
	if l.version == nixtest.V28 && !slices.ContainsFunc(runs, func(r string) bool { return strings.HasSuffix(r, l.otherCommand) }) {
		t.Errorf("runs %q: want `%s` tried first", runs, l.otherCommand)
	}
}

// TestDetectFactsLanes reads the facts from a real Nix of every lane:
// Debian's 2.8 (show-config) and trixie's 2.26 from a chroot (config show).
func TestDetectFactsLanes(t *testing.T) {
	if os.Geteuid() == 0 {
		start := time.Now()
		nixtest.EnsureTrixie(t) // one chroot for every 2.26 subtest
		t.Logf("trixie chroot ready in %v", time.Since(start).Round(time.Millisecond))
	}
	for _, l := range factsLanes() {
		t.Run(l.version.String(), func(t *testing.T) {
			if l.version == nixtest.V226 {
				nixtest.RequireTools(t)
			}
			t.Run("nix-config-decides", func(t *testing.T) {
				nix, argvLog := laneNix(t, l.version, l.nixConf(fmt.Sprint(l.maxJobs)))
				opts := fakeProcOptions(t)
				opts.NixPath = nix
				start := time.Now()
				f, err := detectFacts(context.Background(), opts)
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("facts read in %v: system %s, extra-platforms %q, system-features %q, max-jobs %d, nix %s",
					time.Since(start).Round(time.Millisecond), f.System, f.ExtraPlatforms, f.SystemFeatures, f.MaxJobs, f.NixVersion)
				checkConfigCommand(t, l, nixRuns(t, argvLog))
				if f.System != nixtest.System {
					t.Errorf("System = %q, want this machine's %q", f.System, nixtest.System)
				}
				if got := slices.Sorted(slices.Values(f.ExtraPlatforms)); !reflect.DeepEqual(got, l.extraPlatforms) {
					t.Errorf("ExtraPlatforms = %q, want %q", f.ExtraPlatforms, l.extraPlatforms)
				}
				if got := slices.Sorted(slices.Values(f.SystemFeatures)); !reflect.DeepEqual(got, l.systemFeatures) {
					t.Errorf("SystemFeatures = %q, want %q", f.SystemFeatures, l.systemFeatures)
				}
				if f.MaxJobs != l.maxJobs {
					t.Errorf("MaxJobs = %d, want %d", f.MaxJobs, l.maxJobs)
				}
				if !l.nixVersion.MatchString(f.NixVersion) {
					t.Errorf("NixVersion = %q, want %v", f.NixVersion, l.nixVersion)
				}
				if h, _ := os.Hostname(); f.Hostname != h {
					t.Errorf("Hostname = %q, want %q", f.Hostname, h)
				}
				if f.HostKey != testHostKey(t) {
					t.Errorf("HostKey = %q, want the key without its comment", f.HostKey)
				}
				if f.BuildUsers.Group != "nixbld" || f.Capacity.RunningBuilds != 2 || f.Capacity.Cores != 4 {
					t.Errorf("build users %+v, capacity %+v: want group nixbld, 2 running builds, 4 cores", f.BuildUsers, f.Capacity)
				}
				a, err := buildAdvert(f, Overrides{}, time.Now())
				if err != nil {
					t.Fatalf("buildAdvert from real facts: %v", err)
				}
				if want := append([]string{nixtest.System}, f.ExtraPlatforms...); !reflect.DeepEqual(a.Systems, want) {
					t.Errorf("advert systems = %q, want %q: the system first, then the extra platforms", a.Systems, want)
				}
				if a.NixVersion != f.NixVersion || a.MaxJobs != l.maxJobs {
					t.Errorf("advert nix %q max jobs %d, want %q %d", a.NixVersion, a.MaxJobs, f.NixVersion, l.maxJobs)
				}
			})
			t.Run("max-jobs-auto-is-the-cpu-count", func(t *testing.T) {
				nix, _ := laneNix(t, l.version, l.nixConf("auto"))
				opts := fakeProcOptions(t)
				opts.NixPath = nix
				f, err := detectFacts(context.Background(), opts)
				if err != nil {
					t.Fatal(err)
				}
				c, err := countCPUs("/proc")
				if err != nil {
					t.Fatal(err)
				}
				if f.MaxJobs != c {
					t.Errorf("MaxJobs = %d, want the %d online CPUs", f.MaxJobs, c)
				}
			})
			t.Run("overrides-are-not-asked-of-nix", func(t *testing.T) {
				nix, argvLog := laneNix(t, l.version, l.nixConf("1"))
				opts := fakeProcOptions(t)
				opts.NixPath = nix
				opts.HostKeyPath = "/nonexistent"
				opts.Overrides = Overrides{Systems: []string{"x86_64-linux"}, SupportedFeatures: []string{}, MaxJobs: 2, Hostname: "b1", HostKey: testHostKey(t)}
				f, err := detectFacts(context.Background(), opts)
				if err != nil {
					t.Fatal(err)
				}
				if f.System != "" || !l.nixVersion.MatchString(f.NixVersion) {
					t.Errorf("facts %+v: want no Nix config read but the Nix version known", f)
				}
				if runs := nixRuns(t, argvLog); !reflect.DeepEqual(runs, []string{"--version"}) {
					t.Errorf("nix runs %q, want only --version", runs)
				}
			})
		})
	}
}
