package doctor

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/nixrb-discover/nixrb-discover/internal/localnix"
	"github.com/nixrb-discover/nixrb-discover/render"
)

// Defaults for the zero fields of Options.
const (
	DefaultMachinesPath  = "/var/lib/nixrb-discover/machines"
	DefaultSSHConfigPath = "/var/lib/nixrb-discover/ssh_config"
	DefaultNixPath       = "nix"
	DefaultUser          = "root"
	DefaultTimeout       = 3 * time.Second
	// DefaultNixStateDir is the daemon's state directory.
	DefaultNixStateDir = "/nix/var/nix"
)

// DefaultRootSSHConfigs are the ssh_config files root's ssh reads, user
// file first.
var DefaultRootSSHConfigs = []string{"/root/.ssh/config", "/etc/ssh/ssh_config"}

// Options say what to check and where the files are. The zero value checks
// the defaults of a client installed the usual way.
type Options struct {
	// MachinesPath is the machines file the client writes; default
	// DefaultMachinesPath.
	MachinesPath string
	// SSHConfigPath is the file of ssh_config Host aliases the client
	// writes for builders on a non-22 port; default DefaultSSHConfigPath.
	SSHConfigPath string
	// RootSSHConfigs are the ssh_config files root's ssh reads, one of
	// which must Include SSHConfigPath; default DefaultRootSSHConfigs.
	RootSSHConfigs []string
	// NixPath is the nix program; default "nix" from PATH.
	NixPath string
	// NixStateDir is the state directory of the Nix that reads the
	// machines file, where the client holds slot locks in current-load/;
	// default DefaultNixStateDir.
	NixStateDir string
	// NixVersion is the local Nix version; zero asks `NixPath --version`.
	NixVersion render.NixVersion
	// Builder, when set, limits the per-builder checks to the machines
	// whose host, name or alias target equals it.
	Builder string
	// User is the SSH user for a URI without one: the user Nix's build
	// hook runs as; default "root".
	User string
	// RootHome is where ssh looks for root's default keys when field 3
	// is empty; default "/root".
	RootHome string
	// Timeout bounds each step (each command, lookup, connect and SSH
	// step); default DefaultTimeout.
	Timeout time.Duration
	// LookupHost resolves a host name; nil uses net.DefaultResolver.
	LookupHost func(ctx context.Context, host string) ([]string, error)
	// Tailnet is the local tailscaled's LocalAPI, to tell whether the
	// tailnet's control server is too old for tags (headscale < 0.28);
	// nil skips that check.
	Tailnet TailnetAPI
}

func (o *Options) defaults() {
	if o.MachinesPath == "" {
		o.MachinesPath = DefaultMachinesPath
	}
	if o.SSHConfigPath == "" {
		o.SSHConfigPath = DefaultSSHConfigPath
	}
	// Nix reads `builders = @PATH` with an absolute path; name it so.
	if a, err := filepath.Abs(o.MachinesPath); err == nil {
		o.MachinesPath = a
	}
	if a, err := filepath.Abs(o.SSHConfigPath); err == nil {
		o.SSHConfigPath = a
	}
	if o.RootSSHConfigs == nil {
		o.RootSSHConfigs = DefaultRootSSHConfigs
	}
	if o.NixPath == "" {
		o.NixPath = DefaultNixPath
	}
	if o.User == "" {
		o.User = DefaultUser
	}
	if o.NixStateDir == "" {
		o.NixStateDir = DefaultNixStateDir
	}
	if o.RootHome == "" {
		o.RootHome = "/root"
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
}

// Check is one step of the diagnosis.
type Check struct {
	// Name says what was checked, as a statement that holds when OK
	// ("builder b1: TCP reaches 10.0.0.2:22").
	Name string
	// OK is true when the check passed.
	OK bool
	// Detail is what was found: a version, a fingerprint, an error, or
	// one problem per line (FILE:LINE: …).
	Detail string
	// Fix is the concrete fix when the check failed.
	Fix string
}

// Report is the outcome of Run: every check, in order.
type Report struct {
	Checks []Check
}

// OK reports whether every check passed.
func (r Report) OK() bool {
	for _, c := range r.Checks {
		if !c.OK {
			return false
		}
	}
	return true
}

func (r *Report) pass(name, detail string) {
	r.Checks = append(r.Checks, Check{Name: name, OK: true, Detail: detail})
}

func (r *Report) fail(name, detail, fix string) {
	r.Checks = append(r.Checks, Check{Name: name, Detail: detail, Fix: fix})
}

// Run checks everything Nix needs to offload a build through the machines
// file and returns one Check per step. It returns when every step is done
// or has timed out, or ctx is done.
func Run(ctx context.Context, opts Options) Report {
	opts.defaults()
	var r Report
	if os.Geteuid() == 0 {
		r.pass("doctor runs as root, the user nix-daemon builds as", "")
	} else {
		r.fail("doctor runs as root, the user nix-daemon builds as",
			fmt.Sprintf("running as uid %d: root's keys, resolver and ssh_config may differ", os.Geteuid()),
			"run it with sudo")
	}
	v := opts.NixVersion
	if !v.Known() {
		v = nixVersion(ctx, &r, opts)
	}
	checkBuildersSetting(ctx, &r, opts)
	checkSlotLocks(&r, opts)
	machines := checkMachinesFile(&r, opts, v)
	aliases := checkAliases(&r, opts, v, machines)
	checkTailnetControl(ctx, &r, opts)
	checkBuilders(ctx, &r, opts, v, machines, aliases)
	return r
}

// nixVersion asks the local nix for its version and records the check.
func nixVersion(ctx context.Context, r *Report, opts Options) render.NixVersion {
	out, err := runNix(ctx, opts, "--version")
	name := "local Nix runs (" + opts.NixPath + " --version)"
	if err != nil {
		r.fail(name, err.Error(), "install Nix, or pass --nix PATH (doctor runs as root: check root's PATH)")
		return render.NixVersion{}
	}
	v, err := render.ParseNixVersion(out)
	if err != nil {
		r.fail(name, err.Error(), "pass --nix PATH of a working nix")
		return render.NixVersion{}
	}
	r.pass(name, v.String()+": the machines file is read by its rules (port "+v.PortStyle().String()+
		map[bool]string{true: ", fractional speed factors", false: ", whole speed factors"}[v.FractionalSpeed()]+")")
	return v
}

// runNix runs the local nix with args, bounded by twice the timeout.
func runNix(ctx context.Context, opts Options, args ...string) (string, error) {
	out, err := localnix.Run(ctx, opts.NixPath, 2*opts.Timeout, args...)
	return string(out), err
}
