package nixtest

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func buildCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// rootKnownHosts describes root's known_hosts (size and time, or absent).
func rootKnownHosts(t *testing.T) string {
	u, err := user.Lookup("root")
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(u.HomeDir, ".ssh", "known_hosts"))
	if err != nil {
		return "absent"
	}
	return fmt.Sprintf("%d bytes, modified %v", fi.Size(), fi.ModTime())
}

// handLine writes a machines line by hand, as a user would.
func handLine(proto string, b *Builder, key string) string {
	return fmt.Sprintf("%s://%s@%s %s %s 1 1 - - %s", proto, b.User, b.Addr, System, key,
		base64.StdEncoding.EncodeToString([]byte(b.HostKey())))
}

// shareTrixie keeps one unpacked chroot for all of t's subtests (else
// each 2.26 subtest unpacks and removes its own).
func shareTrixie(t *testing.T) {
	t.Helper()
	start := time.Now()
	EnsureTrixie(t)
	t.Logf("trixie chroot ready in %v", time.Since(start).Round(time.Millisecond))
}

func startTimed(t *testing.T, opts BuilderOptions) *Builder {
	t.Helper()
	start := time.Now()
	b := StartBuilder(t, opts)
	t.Logf("builder %s (%s, user %s) started in %v", b.Hostname, b.Version, b.User, time.Since(start).Round(time.Millisecond))
	return b
}

func buildTimed(t *testing.T, opts ClientOptions) (string, string, error) {
	t.Helper()
	start := time.Now()
	out, stderr, err := NixBuild(t, buildCtx(t), opts)
	t.Logf("%s client build took %v", opts.Version, time.Since(start).Round(time.Millisecond))
	return out, stderr, err
}

func TestOffloadSameVersion(t *testing.T) {
	shareTrixie(t)
	knownHosts := rootKnownHosts(t)
	t.Cleanup(func() {
		if got := rootKnownHosts(t); got != knownHosts {
			t.Errorf("root's known_hosts changed: %s, was %s", got, knownHosts)
		}
	})
	for _, v := range Versions {
		t.Run(v.String(), func(t *testing.T) {
			key := NewClientKey(t)
			b := startTimed(t, BuilderOptions{Version: v, AuthorizedKeys: []string{key.Public}})
			for _, proto := range []string{"ssh", "ssh-ng"} {
				t.Run(proto, func(t *testing.T) {
					machines := WriteMachinesFile(t, handLine(proto, b, key.Path))
					out, stderr, err := buildTimed(t, ClientOptions{Version: v, MachinesFile: machines, Expr: TrivialDerivation("same-" + proto)})
					if err != nil {
						t.Fatalf("%v\n%s", err, stderr)
					}
					if out != b.Hostname+"\n" {
						t.Fatalf("output %q, want the builder's hostname %q", out, b.Hostname)
					}
				})
			}
		})
	}
}

func TestOffloadCrossVersion(t *testing.T) {
	shareTrixie(t)
	for _, client := range Versions {
		for _, builder := range Versions {
			if client == builder {
				continue
			}
			t.Run(client.String()+"-client/"+builder.String()+"-builder", func(t *testing.T) {
				key := NewClientKey(t)
				// A non-root trusted user: covers user creation too.
				b := startTimed(t, BuilderOptions{Version: builder, SSHUser: "nixtest", AuthorizedKeys: []string{key.Public}})
				for _, proto := range []string{"ssh", "ssh-ng"} {
					t.Run(proto, func(t *testing.T) {
						machines := WriteMachinesFile(t, b.MachineLine(proto, key.Path))
						out, stderr, err := buildTimed(t, ClientOptions{Version: client, MachinesFile: machines, Expr: TrivialDerivation("cross")})
						if err != nil {
							t.Fatalf("%v\n%s", err, stderr)
						}
						if out != b.Hostname+"\n" {
							t.Fatalf("output %q, want the builder's hostname %q", out, b.Hostname)
						}
					})
				}
			})
		}
	}
}

// TestUntrustedUser proves the setup health checks use to see an
// untrusted user, and pins what Nix does with one over ssh-ng: every
// combination fails with "you are not privileged to build input-addressed
// derivations", except a 2.26 client on a 2.26 builder. That client learns
// from the handshake (protocol 1.35+) that it is not trusted, so it copies
// the .drv over first and asks the daemon to build it by path, which an
// untrusted user may do.
func TestUntrustedUser(t *testing.T) {
	shareTrixie(t)
	for _, builder := range Versions {
		t.Run(builder.String()+"-builder", func(t *testing.T) {
			key := NewClientKey(t)
			b := startTimed(t, BuilderOptions{Version: builder, SSHUser: "nixtest", TrustedUsers: []string{"root"}, AuthorizedKeys: []string{key.Public}})
			machines := WriteMachinesFile(t, b.MachineLine("ssh-ng", key.Path))
			for _, client := range Versions {
				t.Run(client.String()+"-client", func(t *testing.T) {
					out, stderr, err := buildTimed(t, ClientOptions{Version: client, MachinesFile: machines, Expr: TrivialDerivation("trust-check")})
					if client == V226 && builder == V226 {
						if err != nil || out != b.Hostname+"\n" {
							t.Fatalf("2.26 to 2.26 as untrusted user: out %q, err %v, want a build on %s\n%s", out, err, b.Hostname, stderr)
						}
						return
					}
					const refusal = "you are not privileged to build input-addressed derivations"
					if err == nil || !strings.Contains(stderr, refusal) {
						t.Fatalf("untrusted user: out %q, err %v, want %q\n%s", out, err, refusal, stderr)
					}
				})
			}
		})
	}
}

// pidsWithArg lists processes with arg in their command line.
func pidsWithArg(arg string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if alive(pid) && strings.Contains(string(cmdline), arg) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func firstLineWith(s string, words ...string) string {
	for _, l := range strings.Split(s, "\n") {
		for _, w := range words {
			if strings.Contains(l, w) {
				return strings.TrimSpace(l)
			}
		}
	}
	return ""
}

// TestBuilderControl drives each failure a test can inject and checks how
// the real client and a banner read see it.
func TestBuilderControl(t *testing.T) {
	shareTrixie(t)
	for _, v := range Versions {
		t.Run(v.String(), func(t *testing.T) {
			key := NewClientKey(t)
			b := startTimed(t, BuilderOptions{Version: v, AuthorizedKeys: []string{key.Public}, SystemFeatures: []string{"nixtest-feature"}})
			addr := net.JoinHostPort(b.Addr.String(), strconv.Itoa(b.Port))
			build := func(name string) (string, string, error) {
				machines := WriteMachinesFile(t, b.MachineLine("ssh-ng", key.Path))
				return buildTimed(t, ClientOptions{Version: v, MachinesFile: machines, Expr: TrivialDerivation(name, "nixtest-feature")})
			}

			t.Run("exec-inside", func(t *testing.T) {
				out, err := b.Exec(buildCtx(t), "sh", "-c", "cat /proc/sys/kernel/hostname; nix-store --version; test -S /nix/var/nix/daemon-socket/socket && echo socket")
				if err != nil {
					t.Fatal(err)
				}
				want := map[Version]string{V28: "(Nix) 2.8", V226: "(Nix) 2.26"}[v]
				if !strings.HasPrefix(out, b.Hostname+"\n") || !strings.Contains(out, want) || !strings.Contains(out, "socket") {
					t.Fatalf("inside the builder: %q, want hostname %s, %s and the daemon socket", out, b.Hostname, want)
				}
				if b.NixDaemonPID() == 0 {
					t.Fatal("NixDaemonPID = 0")
				}
			})
			t.Run("kill-sshd-fails-fast", func(t *testing.T) {
				if err := b.KillSSHD(); err != nil {
					t.Fatal(err)
				}
				if pid := b.SSHDPID(); pid != 0 {
					t.Fatalf("SSHDPID = %d after KillSSHD, want 0", pid)
				}
				start := time.Now()
				_, stderr, err := build("killed")
				took := time.Since(start)
				if err == nil {
					t.Fatalf("build succeeded with sshd killed:\n%s", stderr)
				}
				if !strings.Contains(stderr, "Failed to find a machine for remote build") && !strings.Contains(stderr, "cannot build on") {
					t.Errorf("unexpected failure: %v\n%s", err, stderr)
				}
				if took > 15*time.Second {
					t.Errorf("failing build took %v, want fast (connection refused)", took)
				}
				t.Logf("failed in %v: %s", took.Round(time.Millisecond), firstLineWith(stderr, "cannot build on", "Failed to find"))
			})
			t.Run("restart-sshd", func(t *testing.T) {
				if err := b.RestartSSHD(); err != nil {
					t.Fatal(err)
				}
				if out, stderr, err := build("restarted"); err != nil || out != b.Hostname+"\n" {
					t.Fatalf("after restart: out %q, err %v\n%s", out, err, stderr)
				}
			})
			t.Run("stop-sshd-hangs-banner", func(t *testing.T) {
				if err := b.StopSSHD(); err != nil {
					t.Fatal(err)
				}
				if err := readBanner(addr); err == nil {
					t.Error("banner read from a stopped sshd")
				}
				if err := b.ContSSHD(); err != nil {
					t.Fatal(err)
				}
				if err := b.WaitBanner(5 * time.Second); err != nil {
					t.Fatal(err)
				}
			})
			t.Run("hung-sshd-bounded-by-ctx", func(t *testing.T) {
				// Nix waits forever on an sshd that accepts but never
				// answers: NixBuild must end with ctx and leave nothing.
				if err := b.StopSSHD(); err != nil {
					t.Fatal(err)
				}
				defer b.ContSSHD()
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				defer cancel()
				machines := WriteMachinesFile(t, b.MachineLine("ssh-ng", key.Path))
				expr := TrivialDerivation("hung")
				start := time.Now()
				_, stderr, err := NixBuild(t, ctx, ClientOptions{Version: v, MachinesFile: machines, Expr: expr})
				took := time.Since(start)
				if err == nil || !errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("build against a hung sshd: err %v, want deadline exceeded\n%s", err, stderr)
				}
				if took > 10*time.Second {
					t.Errorf("NixBuild returned %v after its 3s deadline", took)
				}
				if pids := pidsWithArg(expr); len(pids) > 0 {
					t.Errorf("nix-build processes %v outlived NixBuild", pids)
				}
			})
			t.Run("link-down-drops", func(t *testing.T) {
				if err := b.LinkDown(); err != nil {
					t.Fatal(err)
				}
				// Silently dropped: the connect times out, it is not refused
				// or unreachable (ARP would give up after ~3 s).
				_, err := net.DialTimeout("tcp", addr, 4*time.Second)
				var ne net.Error
				if err == nil || !errors.As(err, &ne) || !ne.Timeout() {
					t.Errorf("dial over a down link: %v, want a timeout", err)
				}
				if err := b.LinkUp(); err != nil {
					t.Fatal(err)
				}
				if err := b.WaitBanner(10 * time.Second); err != nil {
					t.Fatal(err)
				}
			})
			t.Run("set-host-key", func(t *testing.T) {
				oldLine := b.MachineLine("ssh-ng", key.Path)
				old := b.HostKey()
				if err := b.SetHostKey(nil); err != nil {
					t.Fatal(err)
				}
				if b.HostKey() == old {
					t.Fatal("host key unchanged")
				}
				machines := WriteMachinesFile(t, oldLine)
				_, stderr, err := buildTimed(t, ClientOptions{Version: v, MachinesFile: machines, Expr: TrivialDerivation("oldkey")})
				if err == nil || !strings.Contains(stderr, "Host key verification failed") {
					t.Fatalf("old host key: err %v, want host key verification failure\n%s", err, stderr)
				}
				if out, stderr, err := build("newkey"); err != nil || out != b.Hostname+"\n" {
					t.Fatalf("new host key: out %q, err %v\n%s", out, err, stderr)
				}
			})
		})
	}
}

func TestSplitMatch(t *testing.T) {
	tests := []struct{ name, in, head, matches string }{
		{"none", "MaxAuthTries 2\n", "MaxAuthTries 2\n", ""},
		{"match-first", "Match User x\n  ForceCommand y\n", "", "Match User x\n  ForceCommand y\n"},
		// Keywords are case-insensitive and may be indented.
		{"after-lower", "LogLevel DEBUG\n match user x\n", "LogLevel DEBUG\n", " match user x\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			head, matches := splitMatch(tt.in)
			if head != tt.head || matches != tt.matches {
				t.Errorf("splitMatch(%q) = %q, %q; want %q, %q", tt.in, head, matches, tt.head, tt.matches)
			}
		})
	}
}

// TestBuildUsersRunBuildsAsThemselves: a builder with build users runs a
// build as one of them (so an agent inside it can count running builds),
// from a passwd and group of its own: the host's files are unchanged.
func TestBuildUsersRunBuildsAsThemselves(t *testing.T) {
	shareTrixie(t)
	hostGroup, err := os.ReadFile("/etc/group")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range Versions {
		t.Run(v.String(), func(t *testing.T) {
			key := NewClientKey(t)
			b := startTimed(t, BuilderOptions{Version: v, AuthorizedKeys: []string{key.Public}, BuildUsers: 2})
			expr := fmt.Sprintf(`derivation { name = "whoami"; system = %q; builder = "/bin/sh"; `+
				`args = [ "-c" "while read k v rest; do [ $k = Uid: ] && echo $v > $out; done < /proc/self/status; test -s $out" ]; nonce = "%d"; }`,
				System, time.Now().UnixNano())
			out, stderr, err := buildTimed(t, ClientOptions{Version: v, MachinesFile: WriteMachinesFile(t, b.MachineLine("ssh-ng", key.Path)), Expr: expr})
			if err != nil {
				t.Fatalf("build: %v\n%s", err, stderr)
			}
			uid, err := strconv.Atoi(strings.TrimSpace(out))
			if err != nil {
				t.Fatalf("build output %q: %v", out, err)
			}
			if first, last := b.BuildUIDs(); uid < first || uid > last {
				t.Errorf("the build ran as UID %d, want a build user (%d to %d)", uid, first, last)
			}
			group, err := b.Exec(buildCtx(t), "getent", "group", BuildUsersGroup)
			if err != nil || !strings.Contains(group, BuildUsersGroup+"1,"+BuildUsersGroup+"2") {
				t.Errorf("inside the builder, getent group %s = %q, %v; want both members", BuildUsersGroup, group, err)
			}
		})
	}
	if now, _ := os.ReadFile("/etc/group"); string(now) != string(hostGroup) {
		t.Errorf("the host's /etc/group changed")
	}
}

// TestBuildUsersOutliveTheHostsUseradd: the host's /etc/group replaced
// by a new file (as useradd or groupadd does, renaming it in; other tests
// do this while builders run) leaves a builder's build users in place,
// and two builders never share a UID (their build users would kill each
// other's builds: Nix kills a build user's processes, and builders
// share the host's /proc).
func TestBuildUsersOutliveTheHostsUseradd(t *testing.T) {
	a := startTimed(t, BuilderOptions{Version: V28, BuildUsers: 2})
	b := startTimed(t, BuilderOptions{Version: V28, BuildUsers: 2})
	if af, al := a.BuildUIDs(); func() bool { bf, bl := b.BuildUIDs(); return af <= bl && bf <= al }() {
		t.Errorf("two builders share UIDs: %d-%d and %v", af, al, fmt.Sprint(b.BuildUIDs()))
	}
	// Replace the host's /etc/group with a copy of itself, by rename.
	g, err := os.ReadFile("/etc/group")
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat("/etc/group")
	if err != nil {
		t.Fatal(err)
	}
	tmp := "/etc/group.nixtest-" + strconv.Itoa(os.Getpid())
	if err := os.WriteFile(tmp, g, fi.Mode().Perm()); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, "/etc/group"); err != nil {
		os.Remove(tmp)
		t.Fatal(err)
	}
	for _, bb := range []*Builder{a, b} {
		group, err := bb.Exec(buildCtx(t), "getent", "group", BuildUsersGroup)
		if err != nil || !strings.Contains(group, BuildUsersGroup+"1,"+BuildUsersGroup+"2") {
			t.Errorf("after the host's /etc/group was replaced, inside builder %s getent group %s = %q, %v; want both members", bb.Hostname, BuildUsersGroup, group, err)
		}
	}
}

// TestBuilderHasARunOfItsOwn: a V28 builder's /run (and so sshd's
// privilege separation directory /run/sshd) is its own, so a reset of the
// host's /run/sshd (scripts/fresh-check.sh) cannot break its sshd, and
// its sshd cannot be broken by the host's.
func TestBuilderHasARunOfItsOwn(t *testing.T) {
	key := NewClientKey(t)
	b := startTimed(t, BuilderOptions{Version: V28, AuthorizedKeys: []string{key.Public}})
	marker := fmt.Sprintf("/run/sshd/nixtest-%d", time.Now().UnixNano())
	if _, err := b.Exec(buildCtx(t), "touch", marker); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(marker); err == nil {
		_ = os.Remove(marker)
		t.Fatalf("%s made inside the builder is on the host: the builder shares the host's /run", marker)
	}
	out, stderr, err := buildTimed(t, ClientOptions{Version: V28, MachinesFile: WriteMachinesFile(t, b.MachineLine("ssh-ng", key.Path)), Expr: TrivialDerivation("own-run")})
	if err != nil {
		t.Fatalf("build: %v\n%s", err, stderr)
	}
	if strings.TrimSpace(out) != b.Hostname {
		t.Errorf("built on %q, want %q", out, b.Hostname)
	}
}
