package wire

import (
	"crypto/ed25519"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// testHostKey is a fixed ed25519 SSH host public key in advert form.
func testHostKey(t testing.TB) string {
	t.Helper()
	seed := make([]byte, ed25519.SeedSize)
	copy(seed, "nixrb-discover test host key....")
	pub, err := ssh.NewPublicKey(ed25519.NewKeyFromSeed(seed).Public())
	if err != nil {
		t.Fatal(err)
	}
	return CanonicalHostKey(pub)
}

// testAdvert is a realistic, valid, unsigned advert.
func testAdvert(t testing.TB) *Advert {
	t.Helper()
	return &Advert{
		Version:           WireVersion,
		Hostname:          "builder-01.tail1234.ts.net",
		SSHUser:           "nix-builder",
		SSHPort:           22,
		Protocol:          ProtocolSSHNG,
		HostKey:           testHostKey(t),
		Systems:           []string{"x86_64-linux", "i686-linux"},
		SupportedFeatures: []string{"benchmark", "big-parallel", "kvm", "nixos-test"},
		MandatoryFeatures: []string{"gccarch-znver3"},
		MaxJobs:           16,
		SpeedFactor:       2.5,
		Capacity: Capacity{
			Cores: 32, Load1: 3.5, MemTotalMiB: 128 * 1024, MemAvailMiB: 97 * 1024,
			StoreFreeMiB: 812 * 1024, RunningBuilds: 3,
		},
		Enroll:       true,
		NixVersion:   "2.26.3",
		AgentVersion: "v0.1.0",
		IssuedAt:     time.Date(2026, 11, 26, 3, 40, 0, 0, time.UTC),
	}
}

func TestValidate(t *testing.T) {
	if err := testAdvert(t).Validate(); err != nil {
		t.Fatalf("realistic advert: %v", err)
	}
	tests := []struct {
		name  string
		field string // the field the error must name
		edit  func(a *Advert)
	}{
		{"version-zero", "version", func(a *Advert) { a.Version = 0 }},
		{"hostname-empty", "hostname", func(a *Advert) { a.Hostname = "" }},
		{"hostname-space", "hostname", func(a *Advert) { a.Hostname = "b1 evil" }},
		{"hostname-newline-injects-line", "hostname", func(a *Advert) { a.Hostname = "b1\nssh://evil" }},
		{"hostname-trailing-dot", "hostname", func(a *Advert) { a.Hostname = "b1.example." }},
		{"hostname-leading-dash", "hostname", func(a *Advert) { a.Hostname = "-b1" }},
		{"hostname-long-label", "hostname", func(a *Advert) { a.Hostname = strings.Repeat("a", 64) + ".net" }},
		{"hostname-too-long", "hostname", func(a *Advert) { a.Hostname = strings.Repeat("abcdefg.", 32) + "net" }},
		{"hostname-uri-chars", "hostname", func(a *Advert) { a.Hostname = "b1@evil" }},
		{"user-empty", "ssh_user", func(a *Advert) { a.SSHUser = "" }},
		{"user-at", "ssh_user", func(a *Advert) { a.SSHUser = "root@evil" }},
		{"user-leading-dash-is-an-ssh-option", "ssh_user", func(a *Advert) { a.SSHUser = "-oProxyCommand=x" }},
		{"user-too-long", "ssh_user", func(a *Advert) { a.SSHUser = strings.Repeat("u", 33) }},
		{"port-zero", "ssh_port", func(a *Advert) { a.SSHPort = 0 }},
		{"port-too-big", "ssh_port", func(a *Advert) { a.SSHPort = 65536 }},
		{"protocol-unknown", "protocol", func(a *Advert) { a.Protocol = "http" }},
		{"host-key-garbage", "host_key", func(a *Advert) { a.HostKey = "not a key" }},
		{"host-key-comment", "host_key", func(a *Advert) { a.HostKey += " root@b1" }},
		{"host-key-two-keys", "host_key", func(a *Advert) { a.HostKey += "\n" + a.HostKey }},
		{"host-key-options", "host_key", func(a *Advert) { a.HostKey = `command="x" ` + a.HostKey }},
		{"host-key-double-space", "host_key", func(a *Advert) { a.HostKey = strings.Replace(a.HostKey, " ", "  ", 1) }},
		{"systems-empty", "systems", func(a *Advert) { a.Systems = nil }},
		{"systems-comma", "systems", func(a *Advert) { a.Systems = []string{"x86_64-linux,aarch64-linux"} }},
		{"systems-not-arch-os", "systems", func(a *Advert) { a.Systems = []string{"linux"} }},
		{"systems-duplicate", "systems", func(a *Advert) { a.Systems = []string{"x86_64-linux", "x86_64-linux"} }},
		{"systems-too-many", "systems", func(a *Advert) {
			a.Systems = nil
			for i := 0; i <= MaxListLen; i++ {
				a.Systems = append(a.Systems, "a"+strings.Repeat("x", i)+"-linux")
			}
		}},
		{"feature-hash-starts-comment", "supported_features", func(a *Advert) { a.SupportedFeatures = []string{"kvm#x"} }},
		{"feature-semicolon", "supported_features", func(a *Advert) { a.SupportedFeatures = []string{"kvm;x"} }},
		{"feature-empty-item", "supported_features", func(a *Advert) { a.SupportedFeatures = []string{""} }},
		{"mandatory-tab", "mandatory_features", func(a *Advert) { a.MandatoryFeatures = []string{"a\tb"} }},
		{"mandatory-nbsp", "mandatory_features", func(a *Advert) { a.MandatoryFeatures = []string{"a\u00a0b"} }},
		{"max-jobs-zero", "max_jobs", func(a *Advert) { a.MaxJobs = 0 }},
		{"max-jobs-huge", "max_jobs", func(a *Advert) { a.MaxJobs = MaxMaxJobs + 1 }},
		{"speed-zero", "speed_factor", func(a *Advert) { a.SpeedFactor = 0 }},
		{"speed-negative", "speed_factor", func(a *Advert) { a.SpeedFactor = -1 }},
		{"speed-nan", "speed_factor", func(a *Advert) { a.SpeedFactor = math.NaN() }},
		{"speed-inf", "speed_factor", func(a *Advert) { a.SpeedFactor = math.Inf(1) }},
		{"cores-negative", "capacity.cores", func(a *Advert) { a.Capacity.Cores = -1 }},
		{"load-nan", "capacity.load1", func(a *Advert) { a.Capacity.Load1 = math.NaN() }},
		{"mem-negative", "capacity.mem_avail_mib", func(a *Advert) { a.Capacity.MemAvailMiB = -5 }},
		{"store-huge", "capacity.store_free_mib", func(a *Advert) { a.Capacity.StoreFreeMiB = math.MaxInt64 }},
		{"builds-negative", "capacity.running_builds", func(a *Advert) { a.Capacity.RunningBuilds = -1 }},
		{"nix-version-control-char", "nix_version", func(a *Advert) { a.NixVersion = "2.8\x00" }},
		{"agent-version-too-long", "agent_version", func(a *Advert) { a.AgentVersion = strings.Repeat("v", 256) }},
		{"agent-version-bad-utf8", "agent_version", func(a *Advert) { a.AgentVersion = "v\xff" }},
		{"issued-at-missing", "issued_at", func(a *Advert) { a.IssuedAt = time.Time{} }},
		{"issued-at-before-1970", "issued_at", func(a *Advert) { a.IssuedAt = time.Date(1969, 1, 1, 0, 0, 0, 0, time.UTC) }},
		{"signature-short", "signature.sig", func(a *Advert) { a.Signature = &Signature{KeyID: "abc", Sig: []byte{1}} }},
		{"signature-no-key-id", "signature.key_id", func(a *Advert) { a.Signature = &Signature{Sig: make([]byte, 64)} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := testAdvert(t)
			tt.edit(a)
			err := a.Validate()
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("Validate() = %v, want a *FieldError", err)
			}
			if fe.Field != tt.field {
				t.Errorf("error names field %q, want %q (%v)", fe.Field, tt.field, err)
			}
			if !strings.HasPrefix(err.Error(), "advert: field "+tt.field+": ") {
				t.Errorf("error %q does not start with the field", err)
			}
		})
	}
}

func TestValidateAcceptsEdges(t *testing.T) {
	tests := []struct {
		name string
		edit func(a *Advert)
	}{
		{"no-features", func(a *Advert) { a.SupportedFeatures, a.MandatoryFeatures = nil, nil }},
		{"no-versions", func(a *Advert) { a.NixVersion, a.AgentVersion = "", "" }},
		{"zero-capacity-means-unknown", func(a *Advert) { a.Capacity = Capacity{} }},
		{"ssh-protocol-high-port", func(a *Advert) { a.Protocol, a.SSHPort = ProtocolSSH, 65535 }},
		{"single-label-hostname", func(a *Advert) { a.Hostname = "b1" }},
		{"microarch-system-of-nix-extra-platforms", func(a *Advert) { a.Systems = []string{"x86_64-linux", "x86_64-v3-linux"} }},
		{"rsa-host-key", func(a *Advert) {
			a.HostKey = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDD8Ntn3uvX0DNfH5tLYdD9ikRBS2sMZmfYuo5W7yhKp3qozV5+CgKKzsa0ETtVM1dqGsLmC1aIDn3qNwoU54JCdDwAVcQM0ggMsFkvtgnXcWfl3V5nSqqKYxbqHmXGtHqdZ6fIwtN6ir2eG3ZgXCHqq4CkATlf2A8ShsQmtHxjXQ=="
		}},
		{"future-version", func(a *Advert) { a.Version = 7 }},
		{"fractional-speed", func(a *Advert) { a.SpeedFactor = 0.25 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := testAdvert(t)
			tt.edit(a)
			if err := a.Validate(); err != nil {
				t.Fatal(err)
			}
		})
	}
}
