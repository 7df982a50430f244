package doctor

import (
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/internal/nixtest"
)

// fixture is a client side made of temp files: the machines file, a nix
// wrapper whose NIX_CONF_DIR holds a nix.conf with builders = @machines,
// our ssh_config and a root ssh_config.
type fixture struct {
	dir      string
	machines string
	nixConf  string
	hosts    map[string]string // what LookupHost answers
	opts     Options
}

func newFixture(t *testing.T, lines ...string) *fixture {
	t.Helper()
	nixtest.RequireTools(t)
	dir := nixtest.WorkDir(t, "doctor")
	f := &fixture{dir: dir, machines: filepath.Join(dir, "machines"), nixConf: filepath.Join(dir, "etc-nix", "nix.conf")}
	if err := os.MkdirAll(filepath.Dir(f.nixConf), 0o755); err != nil {
		t.Fatal(err)
	}
	f.writeMachines(t, lines...)
	f.writeNixConf(t, "builders = @"+f.machines)
	nix := filepath.Join(dir, "nix")
	script := fmt.Sprintf("#!/bin/sh\nNIX_CONF_DIR=%s TMPDIR=%s exec nix \"$@\"\n", filepath.Dir(f.nixConf), dir)
	write(t, nix, script, 0o755)
	f.opts = Options{
		MachinesPath:   f.machines,
		SSHConfigPath:  filepath.Join(dir, "ssh_config"),
		RootSSHConfigs: []string{filepath.Join(dir, "root_ssh_config")},
		NixPath:        nix,
		NixStateDir:    dir,
		RootHome:       filepath.Join(dir, "home"),
		// Generous: builders share two cores with other tests.
		Timeout: 5 * time.Second,
		// No test query leaves the machine: names resolve from f.hosts.
		LookupHost: func(ctx context.Context, host string) ([]string, error) {
			if a, ok := f.hosts[host]; ok {
				return []string{a}, nil
			}
			return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
		},
	}
	return f
}

func (f *fixture) writeMachines(t *testing.T, lines ...string) {
	write(t, f.machines, strings.Join(lines, "\n")+"\n", 0o644)
}

func (f *fixture) writeNixConf(t *testing.T, extra string) {
	write(t, f.nixConf, "sandbox = false\nsubstituters =\nbuild-users-group =\n"+extra+"\n", 0o644)
}

func write(t *testing.T, path, data string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
}

// run runs the doctor with a bounded context and logs the report.
func (f *fixture) run(t *testing.T) Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	start := time.Now()
	rep := Run(ctx, f.opts)
	t.Logf("doctor took %v:\n%s", time.Since(start).Round(time.Millisecond), dump(rep))
	return rep
}

func dump(rep Report) string {
	var b strings.Builder
	for _, c := range rep.Checks {
		mark := "✔"
		if !c.OK {
			mark = "✘"
		}
		fmt.Fprintf(&b, "%s %s: %s", mark, c.Name, c.Detail)
		if c.Fix != "" {
			fmt.Fprintf(&b, " — fix: %s", c.Fix)
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// wantFail asserts that exactly one check fails, its name contains name,
// and its detail and fix contain the given texts.
func wantFail(t *testing.T, rep Report, name, detail, fix string) Check {
	t.Helper()
	var failed []Check
	for _, c := range rep.Checks {
		if !c.OK {
			failed = append(failed, c)
		}
	}
	if len(failed) != 1 {
		t.Fatalf("want exactly one failed check (%q), got %d:\n%s", name, len(failed), dump(rep))
	}
	c := failed[0]
	if !strings.Contains(c.Name, name) || !strings.Contains(c.Detail, detail) || !strings.Contains(c.Fix, fix) {
		t.Fatalf("failed check %q\n detail %q\n fix %q\nwant name ~ %q, detail ~ %q, fix ~ %q", c.Name, c.Detail, c.Fix, name, detail, fix)
	}
	if rep.OK() {
		t.Fatal("Report.OK() with a failed check")
	}
	return c
}

func wantAllOK(t *testing.T, rep Report, names ...string) {
	t.Helper()
	if !rep.OK() {
		t.Fatalf("want every check to pass:\n%s", dump(rep))
	}
	all := dump(rep)
	for _, n := range names {
		if !strings.Contains(all, n) {
			t.Errorf("no check mentions %q:\n%s", n, all)
		}
	}
}

func startBuilder(t *testing.T, v nixtest.Version, key nixtest.ClientKey, mod func(*nixtest.BuilderOptions)) *nixtest.Builder {
	t.Helper()
	opts := nixtest.BuilderOptions{Version: v, AuthorizedKeys: []string{key.Public}}
	if mod != nil {
		mod(&opts)
	}
	return nixtest.StartBuilder(t, opts)
}

func TestHealthyBuilder(t *testing.T) {
	for _, proto := range []string{"ssh-ng", "ssh"} {
		t.Run(proto, func(t *testing.T) {
			key := nixtest.NewClientKey(t)
			b := startBuilder(t, nixtest.V28, key, nil)
			f := newFixture(t, b.MachineLine(proto, key.Path))
			rep := f.run(t)
			wantAllOK(t, rep, "Nix 2.8.0", "builders setting includes", "1 machines",
				"TCP reaches sshd on "+b.Addr.String()+":22", "host key matches field 8",
				"answers the Nix handshake", "is trusted")
		})
	}
}

// With a local Nix 2.26 (the trixie chroot), doctor reads `nix config
// show`, and the 2.26 daemon says whether the user is trusted.
func TestLocalNix226(t *testing.T) {
	root := nixtest.EnsureTrixie(t)
	key := nixtest.NewClientKey(t)
	b := startBuilder(t, nixtest.V226, key, nil)
	f := newFixture(t, b.MachineLine("ssh-ng", key.Path))
	// nix from the chroot, reading f's nix.conf; the mounts stay in a
	// mount namespace of its own. The deprecated show-config is refused,
	// so the check proves that doctor uses `nix config show`.
	script := fmt.Sprintf(`#!/bin/sh
case "$*" in *show-config*) echo "show-config refused by the test" >&2; exit 9;; esac
exec unshare --mount --propagation private sh -c 'R=$1; C=$2; shift 2
mount -t proc proc "$R/proc" && mount --bind "$C" "$R/etc/nix" && exec chroot "$R" nix "$@"' sh %s %s "$@"
`, root, filepath.Dir(f.nixConf))
	write(t, f.opts.NixPath, script, 0o755)
	wantAllOK(t, f.run(t), "Nix 2.26", "parses for Nix 2.26", "protocol 1.38", "root is a trusted user of the builder's Nix: the daemon says so")
}

// The rows below each break one thing on an otherwise healthy setup.
func TestFailures(t *testing.T) {
	t.Run("builders-setting-elsewhere", func(t *testing.T) {
		key := nixtest.NewClientKey(t)
		b := startBuilder(t, nixtest.V28, key, nil)
		f := newFixture(t, b.MachineLine("ssh-ng", key.Path))
		f.writeNixConf(t, "builders = @/etc/nix/machines")
		wantFail(t, f.run(t), "builders setting includes @"+f.machines,
			`builders = "@/etc/nix/machines"`, `nix.settings.builders = "@`+f.machines+`"`)
	})
	t.Run("builders-setting-through-include", func(t *testing.T) {
		key := nixtest.NewClientKey(t)
		b := startBuilder(t, nixtest.V28, key, nil)
		f := newFixture(t, b.MachineLine("ssh-ng", key.Path))
		other := filepath.Join(f.dir, "machines-main")
		write(t, other, "# hand-written\n@"+f.machines+"\n", 0o644)
		f.writeNixConf(t, "builders = @"+other)
		wantAllOK(t, f.run(t), "through @"+other)
	})
	t.Run("machines-file-unparsable", func(t *testing.T) {
		key := nixtest.NewClientKey(t)
		b := startBuilder(t, nixtest.V28, key, nil)
		f := newFixture(t, b.MachineLine("ssh-ng", key.Path), "ssh-ng://root@b2 x86_64-linux - many 1")
		wantFail(t, f.run(t), "parses for Nix 2.8.0", f.machines+":2: ", "Nix stops at the first bad line")
	})
	t.Run("machines-file-empty", func(t *testing.T) {
		f := newFixture(t, "# managed by nixrb-discover client")
		wantFail(t, f.run(t), "lists a remote builder", "Nix builds everything locally", "nixrb-discover list")
	})
	t.Run("machines-file-missing", func(t *testing.T) {
		f := newFixture(t)
		if err := os.Remove(f.machines); err != nil {
			t.Fatal(err)
		}
		wantFail(t, f.run(t), "parses for Nix 2.8.0", "no such file", "run the nixrb-discover client")
	})
	t.Run("key-not-authorized", func(t *testing.T) {
		key, other := nixtest.NewClientKey(t), nixtest.NewClientKey(t)
		b := startBuilder(t, nixtest.V28, other, nil)
		f := newFixture(t, b.MachineLine("ssh-ng", key.Path))
		wantFail(t, f.run(t), "accepts key "+key.Path+" for user root", "refused key", "authorized_keys")
	})
	t.Run("key-with-passphrase", func(t *testing.T) {
		key := nixtest.NewClientKey(t)
		b := startBuilder(t, nixtest.V28, key, nil)
		f := newFixture(t, b.MachineLine("ssh-ng", key.Path))
		if out, err := runCmd(t, "ssh-keygen", "-q", "-p", "-N", "secret", "-f", key.Path); err != nil {
			t.Fatalf("ssh-keygen: %v: %s", err, out)
		}
		wantFail(t, f.run(t), "is readable and has no passphrase", "passphrase", "ssh-keygen -p -N ''")
	})
	t.Run("key-readable-by-others", func(t *testing.T) {
		key := nixtest.NewClientKey(t)
		b := startBuilder(t, nixtest.V28, key, nil)
		f := newFixture(t, b.MachineLine("ssh-ng", key.Path))
		if err := os.Chmod(key.Path, 0o644); err != nil {
			t.Fatal(err)
		}
		wantFail(t, f.run(t), "is readable and has no passphrase", "UNPROTECTED", "chmod 600 "+key.Path)
	})
	t.Run("host-key-mismatch", func(t *testing.T) {
		key := nixtest.NewClientKey(t)
		b := startBuilder(t, nixtest.V28, key, nil)
		_, wrong, err := nixtest.GenerateKey("someone-else")
		if err != nil {
			t.Fatal(err)
		}
		line := strings.Replace(b.MachineLine("ssh-ng", key.Path), b.HostKeyBase64(), b64(wrong), 1)
		f := newFixture(t, line)
		wantFail(t, f.run(t), "host key matches field 8", "presented host key", "re-keyed or this is not the builder")
	})
	t.Run("nix-not-on-path", func(t *testing.T) {
		key := nixtest.NewClientKey(t)
		b := startBuilder(t, nixtest.V28, key, func(o *nixtest.BuilderOptions) {
			o.ExtraSSHDConfig = "SetEnv PATH=/nonexistent\n"
		})
		f := newFixture(t, b.MachineLine("ssh-ng", key.Path))
		wantFail(t, f.run(t), "Nix is on root's non-interactive PATH", "nix-daemon is not on the non-interactive PATH",
			"?remote-program=/nix/var/nix/profiles/default/bin/nix-daemon")
	})
	t.Run("user-not-trusted-nix-2.26", func(t *testing.T) {
		key := nixtest.NewClientKey(t)
		b := startBuilder(t, nixtest.V226, key, func(o *nixtest.BuilderOptions) {
			o.SSHUser = "nixtest"
			o.TrustedUsers = []string{"root"}
		})
		f := newFixture(t, b.MachineLine("ssh-ng", key.Path))
		wantFail(t, f.run(t), "nixtest is a trusted user", "does not trust user", "nix.settings.trusted-users")
	})
	t.Run("sshd-stopped", func(t *testing.T) {
		key := nixtest.NewClientKey(t)
		b := startBuilder(t, nixtest.V28, key, nil)
		f := newFixture(t, b.MachineLine("ssh-ng", key.Path))
		f.opts.Timeout = 2 * time.Second
		if err := b.StopSSHD(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = b.ContSSHD() })
		start := time.Now()
		wantFail(t, f.run(t), "TCP reaches sshd", "timeout: the connection was accepted but no SSH banner", "restart sshd")
		if took := time.Since(start); took > 3*f.opts.Timeout+5*time.Second {
			t.Errorf("doctor took %v on a hung sshd", took)
		}
	})
	t.Run("sshd-killed", func(t *testing.T) {
		key := nixtest.NewClientKey(t)
		b := startBuilder(t, nixtest.V28, key, nil)
		f := newFixture(t, b.MachineLine("ssh-ng", key.Path))
		if err := b.KillSSHD(); err != nil {
			t.Fatal(err)
		}
		wantFail(t, f.run(t), "TCP reaches sshd", "connection refused", "start sshd on the builder")
	})
	t.Run("magicdns-name-not-resolving", func(t *testing.T) {
		key := nixtest.NewClientKey(t)
		b := startBuilder(t, nixtest.V28, key, nil)
		line := strings.Replace(b.MachineLine("ssh-ng", key.Path), "@"+b.Addr.String(), "@b1.tail1234.ts.net", 1)
		f := newFixture(t, line)
		wantFail(t, f.run(t), "b1.tail1234.ts.net resolves (root's resolver)", "no such host",
			"a MagicDNS name resolves only when root's resolver asks tailscaled")
	})
	t.Run("name-resolving", func(t *testing.T) {
		key := nixtest.NewClientKey(t)
		b := startBuilder(t, nixtest.V28, key, nil)
		line := strings.Replace(b.MachineLine("ssh-ng", key.Path), "@"+b.Addr.String(), "@b1.tail1234.ts.net", 1)
		f := newFixture(t, line)
		f.hosts = map[string]string{"b1.tail1234.ts.net": b.Addr.String()}
		f.opts.Builder = "b1.tail1234.ts.net"
		wantAllOK(t, f.run(t), "b1.tail1234.ts.net resolves (root's resolver): "+b.Addr.String(),
			"TCP reaches sshd on "+b.Addr.String()+":22", "answers the Nix handshake")
	})
	t.Run("unknown-builder-argument", func(t *testing.T) {
		key := nixtest.NewClientKey(t)
		b := startBuilder(t, nixtest.V28, key, nil)
		f := newFixture(t, b.MachineLine("ssh-ng", key.Path))
		f.opts.Builder = "nope.example"
		wantFail(t, f.run(t), "builder nope.example is in", "no SSH machine", "nixrb-discover list")
	})
}

// A builder on port 2222 seen by the local Nix 2.8, which cannot read a
// port in the URI: it needs the ssh_config alias the client writes.
func TestPortAlias(t *testing.T) {
	key := nixtest.NewClientKey(t)
	b := startBuilder(t, nixtest.V28, key, func(o *nixtest.BuilderOptions) {
		o.ExtraSSHDConfig = "Port 2222\n" // with the fixture's Port 22: both
	})
	fields := strings.Fields(b.MachineLine("ssh-ng", key.Path))
	withHost := func(host string) string {
		f := append([]string{"ssh-ng://root@" + host}, fields[1:]...)
		return strings.Join(f, " ")
	}
	alias := "nixrb-" + strings.ReplaceAll(b.Hostname, ".", "-")

	t.Run("port-in-uri", func(t *testing.T) {
		f := newFixture(t, withHost(b.Addr.String()+":2222"))
		rep := f.run(t)
		var failed []string
		for _, c := range rep.Checks {
			if !c.OK {
				failed = append(failed, c.Name+" | "+c.Detail+" | "+c.Fix)
			}
		}
		if len(failed) != 2 ||
			!strings.Contains(failed[0], f.machines+":1: ") || !strings.Contains(failed[0], "use an ssh_config Host alias") ||
			!strings.Contains(failed[1], "Nix 2.8.0 can reach port 2222") || !strings.Contains(failed[1], "Port 2222") ||
			!strings.Contains(failed[1], "HostKeyAlias") || !strings.Contains(failed[1], "Include "+f.opts.SSHConfigPath) {
			t.Fatalf("want the parse error and the alias fix, got:\n%s", dump(rep))
		}
		// The builder itself is still diagnosed, on the port it listens on.
		if !strings.Contains(dump(rep), "TCP reaches sshd on "+b.Addr.String()+":2222") {
			t.Errorf("builder not checked on port 2222:\n%s", dump(rep))
		}
	})

	aliasFile := fmt.Sprintf("# managed by nixrb-discover client\nHost %s\n  HostName %s\n  Port 2222\n  HostKeyAlias %s\n", alias, b.Addr, alias)
	t.Run("alias-not-included", func(t *testing.T) {
		f := newFixture(t, withHost(alias))
		write(t, f.opts.SSHConfigPath, aliasFile, 0o644)
		write(t, f.opts.RootSSHConfigs[0], "Host *\n  SendEnv LANG\n", 0o644)
		wantFail(t, f.run(t), "root's ssh_config includes "+f.opts.SSHConfigPath, "never sees the aliases",
			"Include "+f.opts.SSHConfigPath)
	})
	t.Run("alias-without-hostkeyalias", func(t *testing.T) {
		f := newFixture(t, withHost(alias))
		write(t, f.opts.SSHConfigPath, strings.Replace(aliasFile, "  HostKeyAlias "+alias+"\n", "", 1), 0o644)
		write(t, f.opts.RootSSHConfigs[0], "Include "+f.opts.SSHConfigPath+"\n", 0o644)
		wantFail(t, f.run(t), "ssh_config alias "+alias, "HostKeyAlias", "HostKeyAlias "+alias)
	})
	t.Run("alias-missing", func(t *testing.T) {
		f := newFixture(t, withHost(alias))
		write(t, f.opts.SSHConfigPath, "# empty\n", 0o644)
		rep := f.run(t)
		if rep.OK() || !strings.Contains(dump(rep), "has no `Host "+alias+"`") {
			t.Fatalf("want the missing alias reported:\n%s", dump(rep))
		}
	})
	t.Run("alias-included", func(t *testing.T) {
		f := newFixture(t, withHost(alias))
		write(t, f.opts.SSHConfigPath, aliasFile, 0o644)
		// Nested and relative, as Debian's ssh_config.d does it.
		d := filepath.Join(f.dir, "ssh_config.d")
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(d, "50-nixrb.conf"), "Include "+f.opts.SSHConfigPath+"\n", 0o644)
		write(t, f.opts.RootSSHConfigs[0], "Include ssh_config.d/*.conf\nHost *\n  SendEnv LANG\n", 0o644)
		wantAllOK(t, f.run(t), "root's ssh_config includes", "TCP reaches sshd on "+b.Addr.String()+":2222",
			"answers the Nix handshake")
	})
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func runCmd(t *testing.T, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}
