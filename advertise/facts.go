package advertise

import (
	"context"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/nixrb-discover/nixrb-discover/internal/localnix"
	"github.com/nixrb-discover/nixrb-discover/wire"
	"golang.org/x/crypto/ssh"
)

// Defaults of FactsOptions and Overrides.
const (
	DefaultNixPath     = "nix"
	DefaultProcRoot    = "/proc"
	DefaultStoreDir    = "/nix/store"
	DefaultHostKeyPath = "/etc/ssh/ssh_host_ed25519_key.pub"
	DefaultNixTimeout  = 10 * time.Second
	// DefaultSSHUser is the user Nix logs in as, as the NixOS module
	// names it. Not "nix-ssh": that is NixOS's nix.sshServe user, which
	// has its own forced command (pass --ssh-user nix-ssh to use it).
	DefaultSSHUser     = "nixrb-builder"
	DefaultSSHPort     = 22
	DefaultSpeedFactor = 1.0
)

// FactsOptions says where detectFacts looks. The zero value looks at this
// machine.
type FactsOptions struct {
	// NixPath is the nix binary ("nix", found in PATH, by default).
	NixPath string
	// ProcRoot is the procfs mount ("/proc").
	ProcRoot string
	// StoreDir is the Nix store whose free space is measured ("/nix/store").
	StoreDir string
	// HostKeyPath is the SSH host public key advertised
	// ("/etc/ssh/ssh_host_ed25519_key.pub").
	HostKeyPath string
	// GroupFile and PasswdFile resolve the build users ("/etc/group",
	// "/etc/passwd").
	GroupFile, PasswdFile string
	// NixStateDir is the Nix daemon's state directory
	// (DefaultNixStateDir), whose build-user lock files tell the agent the
	// instant a build starts or ends.
	NixStateDir string
	// NixTimeout bounds each nix command (DefaultNixTimeout).
	NixTimeout time.Duration
	// Overrides are facts the user set: detectFacts does not look them up,
	// and needs no nix binary when they cover every Nix fact (systems,
	// supported features, max jobs).
	Overrides Overrides
}

func (o FactsOptions) withDefaults() FactsOptions {
	def := func(s *string, d string) {
		if *s == "" {
			*s = d
		}
	}
	def(&o.NixPath, DefaultNixPath)
	def(&o.ProcRoot, DefaultProcRoot)
	def(&o.StoreDir, DefaultStoreDir)
	def(&o.HostKeyPath, DefaultHostKeyPath)
	def(&o.GroupFile, "/etc/group")
	def(&o.PasswdFile, "/etc/passwd")
	def(&o.NixStateDir, DefaultNixStateDir)
	if o.NixTimeout <= 0 {
		o.NixTimeout = DefaultNixTimeout
	}
	return o
}

// Facts is what detectFacts found out about this builder.
type Facts struct {
	// Hostname is the kernel host name.
	Hostname string
	// HostKey is the SSH host key in advert form ("TYPE BASE64").
	HostKey string
	// System is Nix's system setting, e.g. "x86_64-linux".
	System string
	// ExtraPlatforms is Nix's extra-platforms setting.
	ExtraPlatforms []string
	// SystemFeatures is Nix's system-features setting.
	SystemFeatures []string
	// MaxJobs is Nix's max-jobs setting ("auto" is the number of cores).
	MaxJobs int
	// NixVersion is the local Nix version, "" if unknown.
	NixVersion string
	// BuildUsers is how builds are told apart, for RunningBuilds.
	BuildUsers BuildUsers
	// Capacity is the live load, as measured (not quantised).
	Capacity wire.Capacity
	// CapacityErr says which Capacity fields could not be measured (they
	// are 0, meaning unknown); nil when all were.
	CapacityErr error
}

// Overrides are facts and settings given by the user (flags or config).
// A zero field means "not set": use the detected fact or the default. A
// non-nil empty list is set, to nothing.
// The names follow the Advert fields they set (and NixOS's
// nix.buildMachines options: hostName, sshUser, systems, maxJobs, ...).
type Overrides struct {
	Hostname          string   // the host name clients connect to (e.g. the MagicDNS name)
	SSHUser           string   // DefaultSSHUser when unset
	SSHPort           int      // DefaultSSHPort when unset
	Protocol          string   // ProtocolSSHNG when unset
	HostKey           string   // "TYPE BASE64" of the SSH host key
	Systems           []string // Nix system then extra-platforms when unset
	SupportedFeatures []string // Nix system-features when unset
	MandatoryFeatures []string // none when unset
	MaxJobs           int      // Nix max-jobs when unset
	SpeedFactor       float64  // DefaultSpeedFactor when unset
	Draining          bool     // take no new builds
	Enroll            bool     // accept SSH key enrolment over the tailnet
	AgentVersion      string   // the nixrb-discover version
}

// coversNix reports whether o sets every fact that comes from Nix.
func (o Overrides) coversNix() bool {
	return o.Systems != nil && o.SupportedFeatures != nil && o.MaxJobs != 0
}

// detectFacts finds out what this builder can do: the Nix configuration
// (by running nix), the host name, the SSH host key and the live capacity.
// Facts that opts.Overrides sets are not looked up. A capacity it cannot
// measure is not an error (see Facts.CapacityErr).
func detectFacts(ctx context.Context, opts FactsOptions) (Facts, error) {
	o := opts.withDefaults()
	var f Facts
	f.Capacity, f.CapacityErr = measureCapacity(o, BuildUsers{})
	if !o.Overrides.coversNix() {
		cfg, err := readNixConfig(ctx, o.NixPath, o.NixTimeout, f.Capacity.Cores)
		switch {
		case localnix.IsNotFound(err):
			return f, fmt.Errorf("detect facts: nix not found (%w): install Nix, give its path with --nix, or set --systems, --features and --max-jobs", err)
		case err != nil:
			return f, fmt.Errorf("detect facts: read the Nix configuration: %w", err)
		}
		f.System, f.ExtraPlatforms, f.SystemFeatures = cfg.System, cfg.ExtraPlatforms, cfg.SystemFeatures
		f.MaxJobs, f.BuildUsers = cfg.MaxJobs, cfg.BuildUsers
		// Count running builds now that the build users are known.
		f.Capacity, f.CapacityErr = measureCapacity(o, f.BuildUsers)
	}
	if v, err := readNixVersion(ctx, o.NixPath, o.NixTimeout); err == nil {
		f.NixVersion = v
	} else if !o.Overrides.coversNix() {
		return f, fmt.Errorf("detect facts: %w", err)
	}
	if o.Overrides.Hostname == "" {
		h, err := os.Hostname()
		if err != nil {
			return f, fmt.Errorf("detect facts: host name: %w (set --hostname)", err)
		}
		f.Hostname = h
	}
	if o.Overrides.HostKey == "" {
		k, err := readHostKey(o.HostKeyPath)
		if err != nil {
			return f, fmt.Errorf("detect facts: %w (set --ssh-host-key)", err)
		}
		f.HostKey = k
	}
	return f, nil
}

// readHostKey reads an SSH public key file and returns the key in advert
// form.
func readHostKey(path string) (string, error) {
	b, _, err := wire.ReadKeyFile(path)
	if err != nil {
		return "", fmt.Errorf("SSH host key: %w", err)
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(b)
	if err != nil {
		return "", fmt.Errorf("SSH host key %s: %w", path, err)
	}
	return wire.CanonicalHostKey(pub), nil
}

// buildAdvert makes the advert of this builder from its facts and the
// user's overrides, issued at now (to the second), with quantised
// capacity. It is unsigned (see [Sign]) and valid, or an error says which
// field is wrong.
func buildAdvert(f Facts, o Overrides, now time.Time) (*wire.Advert, error) {
	pick := func(set, detected string) string {
		if set != "" {
			return set
		}
		return detected
	}
	a := &wire.Advert{
		Version:           wire.WireVersion,
		Hostname:          pick(o.Hostname, f.Hostname),
		SSHUser:           pick(o.SSHUser, DefaultSSHUser),
		SSHPort:           o.SSHPort,
		Protocol:          pick(o.Protocol, wire.ProtocolSSHNG),
		HostKey:           pick(o.HostKey, f.HostKey),
		Systems:           o.Systems,
		SupportedFeatures: o.SupportedFeatures,
		MandatoryFeatures: o.MandatoryFeatures,
		MaxJobs:           o.MaxJobs,
		SpeedFactor:       o.SpeedFactor,
		Capacity:          quantise(f.Capacity),
		Draining:          o.Draining,
		Enroll:            o.Enroll,
		NixVersion:        f.NixVersion,
		AgentVersion:      o.AgentVersion,
		IssuedAt:          time.Unix(now.Unix(), 0).UTC(),
	}
	if a.SSHPort == 0 {
		a.SSHPort = DefaultSSHPort
	}
	if a.SpeedFactor == 0 {
		a.SpeedFactor = DefaultSpeedFactor
	}
	if a.Systems == nil && f.System != "" {
		a.Systems = append([]string{f.System}, f.ExtraPlatforms...)
	}
	if a.SupportedFeatures == nil {
		a.SupportedFeatures = f.SystemFeatures
	}
	a.Systems = dedup(a.Systems)
	a.SupportedFeatures = dedup(a.SupportedFeatures)
	a.MandatoryFeatures = dedup(a.MandatoryFeatures)
	if a.MaxJobs == 0 {
		a.MaxJobs = f.MaxJobs
		if a.MaxJobs == 0 {
			return nil, fmt.Errorf("build advert: %w", &wire.FieldError{Field: "max_jobs",
				Reason: "the Nix config says max-jobs = 0 (this machine builds nothing itself): set --max-jobs"})
		}
	}
	if err := a.Validate(); err != nil {
		return nil, fmt.Errorf("build advert: %w", err)
	}
	return a, nil
}

// dedup drops repeated items, keeping the first of each; nil for none.
func dedup(items []string) []string {
	var out []string
	for _, it := range items {
		if !slices.Contains(out, it) {
			out = append(out, it)
		}
	}
	return out
}
