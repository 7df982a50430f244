package nixtest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// defaultBuildTimeout bounds NixBuild when ctx has no deadline.
const defaultBuildTimeout = 3 * time.Minute

// ClientOptions configure [NixBuild].
type ClientOptions struct {
	// Version is the client's Nix: V28 from the host, V226 from the
	// trixie chroot. Required.
	Version Version
	// MachinesFile is passed as --builders @MachinesFile. For V226 its
	// directory, and the directory of every key named in its field 3, are
	// bind-mounted at the same paths inside the chroot.
	MachinesFile string
	// Builders is passed as --builders when MachinesFile is empty.
	Builders string
	// SSHKeyPath, if set, is passed to ssh as -i (in NIX_SSHOPTS) and made
	// visible inside the chroot. Machines lines usually name their key in
	// field 3 instead.
	SSHKeyPath string
	// Expr is the Nix expression to build. Default:
	// TrivialDerivation("nixtest").
	Expr string
	// SSHOpts is prepended to NIX_SSHOPTS (split on spaces by Nix).
	SSHOpts string
	// Args are extra nix-build arguments, such as "--option", "k", "v".
	Args []string
	// ExtraNixConf is appended to the client's nix.conf.
	ExtraNixConf string
	// BindPaths are more host directories to make visible at the same
	// paths inside the chroot (V226).
	BindPaths []string
	// Netns, if set, is the network namespace (as in `ip netns list`)
	// nix-build runs in, such as a laptop host of an internal/netnstest
	// topology. Default: the root namespace.
	Netns string
	// NixDir, if set, is an existing host directory (such as one from
	// [WorkDir]) that nix-build uses as its /nix instead of a fresh one,
	// so a test can watch or hold the build hook's slot locks in
	// ClientStateDir(NixDir)/current-load before and while the build
	// runs. Builds that share a NixDir share a store. Default: a fresh
	// directory per build.
	NixDir string
}

// ClientStateDir returns the Nix state directory (Nix's /nix/var/nix) of
// a client whose ClientOptions.NixDir is nixDir, as seen from the host:
// the build hook's slot locks are in its current-load subdirectory.
func ClientStateDir(nixDir string) string {
	return filepath.Join(nixDir, "var", "nix")
}

// NixBuild runs a real `nix-build --no-out-link --builders @FILE
// --max-jobs 0 -E EXPR` (so a build can only happen on a remote builder)
// with a fresh store, nix.conf (sandbox = false, substituters =,
// build-users-group =), HOME and TMPDIR of its own, in a private mount and
// PID namespace: on return, or when ctx ends, nothing it started is left.
// Root's known_hosts is never written: Nix pins host keys from field 8.
//
// It returns the content of the output when it is a regular file, Nix's
// stderr, and an error if nix-build failed or timed out (bounded by ctx,
// or 3 minutes if ctx has no deadline).
func NixBuild(t testing.TB, ctx context.Context, opts ClientOptions) (out, stderr string, err error) {
	t.Helper()
	RequireTools(t)
	if !opts.Version.valid() {
		return "", "", fmt.Errorf("nix-build: invalid version %v", opts.Version)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultBuildTimeout)
		defer cancel()
	}
	var root string
	if opts.Version == V226 {
		root = EnsureTrixie(t)
	}
	dir := newWorkDir(t, "client")
	nixDir := filepath.Join(dir, "nix")
	subdirs := []string{"nix", "etc-nix", "tmp", "home"}
	if opts.NixDir != "" {
		fi, err := os.Stat(opts.NixDir)
		if err != nil {
			return "", "", fmt.Errorf("nix-build: NixDir: %w", err)
		}
		if !fi.IsDir() || !filepath.IsAbs(opts.NixDir) {
			return "", "", fmt.Errorf("nix-build: NixDir %s: not an absolute directory path", opts.NixDir)
		}
		nixDir = filepath.Clean(opts.NixDir)
		subdirs = subdirs[1:]
	}
	for _, d := range subdirs {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			return "", "", fmt.Errorf("nix-build: %w", err)
		}
	}
	if err := os.Chmod(filepath.Join(dir, "tmp"), 0o1777); err != nil {
		return "", "", fmt.Errorf("nix-build: %w", err)
	}
	conf := "sandbox = false\nsubstituters =\nbuild-users-group =\n" + opts.ExtraNixConf + "\n"
	if err := os.WriteFile(filepath.Join(dir, "etc-nix", "nix.conf"), []byte(conf), 0o644); err != nil {
		return "", "", fmt.Errorf("nix-build: %w", err)
	}
	script, err := clientScript(opts, dir, nixDir, root)
	if err != nil {
		return "", "", fmt.Errorf("nix-build: %w", err)
	}
	scriptPath := filepath.Join(dir, "run.sh")
	if err := os.WriteFile(scriptPath, []byte(script), 0o755); err != nil {
		return "", "", fmt.Errorf("nix-build: %w", err)
	}

	expr := opts.Expr
	if expr == "" {
		expr = TrivialDerivation("nixtest")
	}
	builders := opts.Builders
	if opts.MachinesFile != "" {
		builders = "@" + opts.MachinesFile
	}
	args := []string{"--mount", "--propagation", "private", "--pid", "--fork", "--kill-child"}
	if opts.Version == V28 {
		args = append(args, "--mount-proc")
	}
	args = append(args, "sh", scriptPath, "--no-out-link", "--builders", builders, "--max-jobs", "0", "-E", expr)
	args = append(args, opts.Args...)
	cmd := exec.CommandContext(ctx, "unshare", args...)
	if opts.Netns != "" {
		// ip netns exec execs unshare in the namespace: same PID.
		cmd = exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", opts.Netns, "unshare"}, args...)...)
	}
	// Setsid: no controlling terminal, so ssh can never prompt.
	// Pdeathsig: if the test process dies, so does the build. It is tied
	// to the starting thread, which stays locked until Wait returns.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
	// Killing unshare kills its child (--kill-child), the PID
	// namespace's init, and with it every process in the namespace.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	sshOpts := strings.TrimSpace(opts.SSHOpts)
	if opts.SSHKeyPath != "" {
		sshOpts = strings.TrimSpace(sshOpts + " -i " + opts.SSHKeyPath)
	}
	cmd.Env = []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"LANG=C", "USER=root", "TMPDIR=/tmp", "NIX_SSHOPTS=" + sshOpts,
	}
	if opts.Version == V28 {
		cmd.Env = append(cmd.Env, "HOME="+filepath.Join(dir, "home"), "NIX_CONF_DIR="+filepath.Join(dir, "etc-nix"),
			"XDG_CACHE_HOME="+filepath.Join(dir, "home", ".cache"))
	} else {
		cmd.Env = append(cmd.Env, "HOME=/root")
	}
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	runtime.LockOSThread()
	runErr := cmd.Run()
	runtime.UnlockOSThread()
	stderr = se.String()
	if runErr != nil {
		if ctx.Err() != nil {
			runErr = fmt.Errorf("%w: %w", ctx.Err(), runErr)
		}
		return "", stderr, fmt.Errorf("nix-build (%s): %w: %s", opts.Version, runErr, tail(stderr, 5))
	}
	outPath := lastLine(so.String())
	if !strings.HasPrefix(outPath, "/nix/store/") {
		return "", stderr, fmt.Errorf("nix-build (%s): no store path on stdout: %q", opts.Version, so.String())
	}
	data, err := os.ReadFile(filepath.Join(nixDir, strings.TrimPrefix(outPath, "/nix/")))
	if err != nil {
		if errors.Is(err, syscall.EISDIR) {
			return "", stderr, nil
		}
		return "", stderr, fmt.Errorf("nix-build (%s): read output: %w", opts.Version, err)
	}
	return string(data), stderr, nil
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// clientScript is run.sh: it mounts the client's own /nix (nixDir) (and,
// for V226, the chroot's file systems and bind paths) and runs nix-build
// "$@".
func clientScript(opts ClientOptions, dir, nixDir, root string) (string, error) {
	q := shellQuote
	var s strings.Builder
	fmt.Fprintf(&s, "set -eu\nD=%s\nN=%s\n", q(dir), q(nixDir))
	if opts.Version == V28 {
		s.WriteString(`mkdir -p /nix
mount --bind "$N" /nix
mount --bind "$D/tmp" /tmp
nix-build "$@"
`)
		return s.String(), nil
	}
	fmt.Fprintf(&s, "R=%s\n", q(root))
	s.WriteString(`mount -t proc proc "$R/proc"
mount --rbind /dev "$R/dev"
mount -t sysfs sysfs "$R/sys"
mount -t tmpfs -o mode=0755 tmpfs "$R/run"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
mount --bind "$N" "$R/nix"
mount --bind "$D/etc-nix" "$R/etc/nix"
`)
	binds, err := bindPaths(opts)
	if err != nil {
		return "", err
	}
	for _, p := range binds {
		fmt.Fprintf(&s, "mkdir -p \"$R\"%s\nmount --bind %s \"$R\"%s\n", q(p), q(p), q(p))
	}
	s.WriteString(`chroot "$R" nix-build "$@"
`)
	return s.String(), nil
}

// bindPaths lists the host directories a chroot client must see: those of
// the machines file, of every key it names, of SSHKeyPath and BindPaths.
func bindPaths(opts ClientOptions) ([]string, error) {
	var dirs []string
	add := func(p string, isDir bool) {
		if p == "" || p == "-" || !filepath.IsAbs(p) {
			return
		}
		if !isDir {
			p = filepath.Dir(p)
		}
		dirs = append(dirs, filepath.Clean(p))
	}
	add(opts.SSHKeyPath, false)
	for _, p := range opts.BindPaths {
		add(p, true)
	}
	if opts.MachinesFile != "" {
		add(opts.MachinesFile, false)
		f, err := os.Open(opts.MachinesFile)
		if err != nil {
			return nil, fmt.Errorf("machines file: %w", err)
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			line, _, _ := strings.Cut(sc.Text(), "#")
			if fields := strings.Fields(line); len(fields) >= 3 {
				add(fields[2], false)
			}
		}
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("machines file: %w", err)
		}
	}
	slices.Sort(dirs)
	return slices.Compact(dirs), nil
}

var nonce atomic.Uint64

// TrivialDerivation returns a Nix expression for a derivation named name
// whose output is a file holding the hostname of the machine that built it
// (one line). Every call returns a new derivation (a nonce), so it is
// always built, never found. Features become requiredSystemFeatures.
func TrivialDerivation(name string, features ...string) string {
	clean := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("+-._?=", r) {
			return r
		}
		return '-'
	}, name)
	if clean == "" || clean[0] == '.' {
		clean = "x" + clean
	}
	var req string
	if len(features) > 0 {
		quoted := make([]string, len(features))
		for i, f := range features {
			quoted[i] = fmt.Sprintf("%q", f)
		}
		req = " requiredSystemFeatures = [ " + strings.Join(quoted, " ") + " ];"
	}
	n := fmt.Sprintf("%d-%d-%d", os.Getpid(), time.Now().UnixNano(), nonce.Add(1))
	return fmt.Sprintf(`derivation { name = %q; system = %q; builder = "/bin/sh"; `+
		`args = [ "-c" "read h < /proc/sys/kernel/hostname; echo $h > $out" ]; nonce = %q;%s }`,
		clean, System, n, req)
}
