package advertise

import (
	"context"
	"crypto/ed25519"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/wire"
	"golang.org/x/crypto/ssh"
)

// realNix skips unless Debian's nix-bin (or another nix) is installed.
// TestDetectFactsLanes (facts_lane_test.go) runs it, and Nix 2.26 beside.
func realNix(t *testing.T) string {
	t.Helper()
	nix, err := exec.LookPath("nix")
	if err != nil {
		t.Skip("nix not installed (apt-get install nix-bin)")
	}
	return nix
}

func fakeProcOptions(t *testing.T) FactsOptions {
	return FactsOptions{
		ProcRoot:    "testdata/proc",
		StoreDir:    t.TempDir(),
		HostKeyPath: "testdata/ssh_host_ed25519_key.pub",
		GroupFile:   "testdata/group",
		PasswdFile:  "testdata/passwd",
		NixTimeout:  20 * time.Second,
	}
}

// fakeNix writes an executable shell script standing in for nix.
func fakeNix(t *testing.T, script string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "nix")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDetectFactsNixProblems(t *testing.T) {
	t.Run("new-nix-config-show-is-tried-first", func(t *testing.T) {
		opts := fakeProcOptions(t)
		opts.NixPath = fakeNix(t, `case "$*" in
*"config show --json") echo '{"system":{"value":"aarch64-darwin"},"extra-platforms":{"value":[]},"system-features":{"value":["apple-virt"]},"max-jobs":{"value":8}}';;
--version) echo "nix (Nix) 2.26.3";;
*) exit 1;;
esac`)
		f, err := detectFacts(context.Background(), opts)
		if err != nil {
			t.Fatal(err)
		}
		if f.System != "aarch64-darwin" || f.MaxJobs != 8 || f.NixVersion != "2.26.3" {
			t.Errorf("facts = %+v", f)
		}
	})
	t.Run("missing-nix-names-the-flags-that-replace-it", func(t *testing.T) {
		opts := fakeProcOptions(t)
		opts.NixPath = filepath.Join(t.TempDir(), "no-nix-here")
		_, err := detectFacts(context.Background(), opts)
		for _, flag := range []string{"--nix", "--systems", "--features", "--max-jobs"} {
			if err == nil || !strings.Contains(err.Error(), flag) {
				t.Errorf("err = %v, want it to name %s", err, flag)
			}
		}
	})
	t.Run("missing-nix-is-fine-when-overridden", func(t *testing.T) {
		opts := fakeProcOptions(t)
		opts.NixPath = filepath.Join(t.TempDir(), "no-nix-here")
		opts.Overrides = Overrides{Systems: []string{"x86_64-linux"}, SupportedFeatures: []string{"kvm"}, MaxJobs: 4}
		f, err := detectFacts(context.Background(), opts)
		if err != nil {
			t.Fatal(err)
		}
		a, err := buildAdvert(f, opts.Overrides, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if a.NixVersion != "" || a.MaxJobs != 4 {
			t.Errorf("advert = %+v", a)
		}
	})
	t.Run("failing-nix-shows-its-error", func(t *testing.T) {
		opts := fakeProcOptions(t)
		opts.NixPath = fakeNix(t, "echo 'error: cannot open nix.conf' >&2; exit 1\n")
		_, err := detectFacts(context.Background(), opts)
		if err == nil || !strings.Contains(err.Error(), "cannot open nix.conf") {
			t.Errorf("err = %v, want nix's own message", err)
		}
	})
	t.Run("hung-nix-times-out", func(t *testing.T) {
		opts := fakeProcOptions(t)
		opts.NixPath = fakeNix(t, "exec sleep 30\n")
		opts.NixTimeout = 200 * time.Millisecond
		start := time.Now()
		_, err := detectFacts(context.Background(), opts)
		if err == nil || !strings.Contains(err.Error(), "no answer within") {
			t.Errorf("err = %v, want a timeout", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("took %s", d)
		}
	})
	t.Run("endless-nix-output-is-cut", func(t *testing.T) {
		opts := fakeProcOptions(t)
		opts.NixPath = fakeNix(t, "exec yes\n")
		_, err := detectFacts(context.Background(), opts)
		if err == nil || !strings.Contains(err.Error(), "more than") {
			t.Errorf("err = %v, want an output bound error", err)
		}
	})
	t.Run("missing-host-key-names-the-flag", func(t *testing.T) {
		opts := fakeProcOptions(t)
		opts.Overrides = Overrides{Systems: []string{"x86_64-linux"}, SupportedFeatures: []string{}, MaxJobs: 1}
		opts.NixPath = "/nonexistent/nix"
		opts.HostKeyPath = filepath.Join(t.TempDir(), "none.pub")
		_, err := detectFacts(context.Background(), opts)
		if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "--ssh-host-key") {
			t.Errorf("err = %v, want not-exist naming --ssh-host-key", err)
		}
	})
}

func TestBuildAdvert(t *testing.T) {
	facts := Facts{
		Hostname: "builder-01", HostKey: testHostKey(t),
		System: "x86_64-linux", ExtraPlatforms: []string{"i686-linux", "x86_64-linux"},
		SystemFeatures: []string{"kvm", "big-parallel"}, MaxJobs: 8, NixVersion: "2.8.0",
		Capacity: wire.Capacity{Cores: 8, Load1: 1.3, MemTotalMiB: 16000, MemAvailMiB: 9000, StoreFreeMiB: 50000, RunningBuilds: 1},
	}
	now := time.Date(2026, 11, 26, 4, 30, 15, 999, time.Local)
	t.Run("facts-and-defaults", func(t *testing.T) {
		a, err := buildAdvert(facts, Overrides{AgentVersion: "v1"}, now)
		if err != nil {
			t.Fatal(err)
		}
		want := &wire.Advert{
			Version: 1, Hostname: "builder-01", SSHUser: DefaultSSHUser, SSHPort: 22, Protocol: wire.ProtocolSSHNG,
			HostKey: testHostKey(t), Systems: []string{"x86_64-linux", "i686-linux"},
			SupportedFeatures: []string{"kvm", "big-parallel"}, MaxJobs: 8, SpeedFactor: 1,
			Capacity:   wire.Capacity{Cores: 8, Load1: 1.5, MemTotalMiB: 16000, MemAvailMiB: 8192, StoreFreeMiB: 49152, RunningBuilds: 1},
			NixVersion: "2.8.0", AgentVersion: "v1", IssuedAt: time.Unix(now.Unix(), 0).UTC(),
		}
		if !reflect.DeepEqual(a, want) {
			t.Errorf("buildAdvert =\n%+v\nwant\n%+v", a, want)
		}
	})
	t.Run("overrides-win", func(t *testing.T) {
		o := Overrides{Hostname: "b1.tail1234.ts.net", SSHUser: "builder", SSHPort: 2222, Protocol: wire.ProtocolSSH,
			Systems: []string{"aarch64-linux"}, SupportedFeatures: []string{}, MandatoryFeatures: []string{"big-parallel"},
			MaxJobs: 2, SpeedFactor: 4, Draining: true, Enroll: true}
		a, err := buildAdvert(facts, o, now)
		if err != nil {
			t.Fatal(err)
		}
		if a.Hostname != o.Hostname || a.SSHUser != "builder" || a.SSHPort != 2222 || a.Protocol != wire.ProtocolSSH ||
			!reflect.DeepEqual(a.Systems, o.Systems) || a.SupportedFeatures != nil ||
			!reflect.DeepEqual(a.MandatoryFeatures, o.MandatoryFeatures) || a.MaxJobs != 2 || a.SpeedFactor != 4 ||
			!a.Draining || !a.Enroll {
			t.Errorf("overrides lost: %+v", a)
		}
	})
	t.Run("max-jobs-zero-needs-a-flag", func(t *testing.T) {
		f := facts
		f.MaxJobs = 0
		_, err := buildAdvert(f, Overrides{}, now)
		var fe *wire.FieldError
		if !errors.As(err, &fe) || fe.Field != "max_jobs" || !strings.Contains(err.Error(), "--max-jobs") {
			t.Errorf("err = %v, want a max_jobs error naming --max-jobs", err)
		}
	})
	t.Run("bad-override-names-the-field", func(t *testing.T) {
		_, err := buildAdvert(facts, Overrides{Hostname: "my builder"}, now)
		var fe *wire.FieldError
		if !errors.As(err, &fe) || fe.Field != "hostname" {
			t.Errorf("err = %v, want a hostname FieldError", err)
		}
	})
}

// testHostKey is a fixed ed25519 SSH host public key in advert form.
func testHostKey(t testing.TB) string {
	t.Helper()
	seed := make([]byte, ed25519.SeedSize)
	copy(seed, "nixrb-discover test host key....")
	pub, err := ssh.NewPublicKey(ed25519.NewKeyFromSeed(seed).Public())
	if err != nil {
		t.Fatal(err)
	}
	return wire.CanonicalHostKey(pub)
}

// The advert names the builder's implementation in one word that wire
// accepts and render.ParseNixVersion reads (render's
// TestParseNixVersionReadsEveryImplementation reads these tokens back).
func TestNixVersionTokenNamesTheImplementation(t *testing.T) {
	for out, want := range map[string]string{
		"nix (Nix) 2.8.0":                    "2.8.0",
		"nix (Nix) 2.26.3\n":                 "2.26.3",
		"nix (Lix, like Nix) 2.93.3":         "lix-2.93.3",
		"nix (Determinate Nix 3.8.2) 2.30.1": "determinate-3.8.2-nix-2.30.1",
		"nix (Lix, like Nix) 2.92.0-dev-pre20250117-0d14c2b\nSystem type: x86_64-linux\nFeatures: gc, signed-caches\n": "lix-2.92.0-dev-pre20250117-0d14c2b",
		"nix (Determinate Nix 3.8.2 beta) 2.30.1": "2.30.1", // a space would make the advert invalid
		"something else 1.2":                      "1.2",
	} {
		got := nixVersionToken(out)
		if got != want {
			t.Errorf("nixVersionToken(%q) = %q, want %q", out, got, want)
		}
		facts := Facts{Hostname: "b1", HostKey: testHostKey(t), System: "x86_64-linux", MaxJobs: 1, NixVersion: got}
		if a, err := buildAdvert(facts, Overrides{}, time.Now()); err != nil || a.NixVersion != got {
			t.Errorf("advert with nix_version %q: %v", got, err)
		}
	}
}
