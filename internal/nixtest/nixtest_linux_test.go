package nixtest

import (
	"context"
	"encoding/base64"
	"fmt"
	"net"
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

// handLine writes a machines line by hand, as a user would.
func handLine(proto string, b *Builder, key string) string {
	return fmt.Sprintf("%s://%s@%s %s %s 1 1 - - %s", proto, b.User, b.Addr, System, key,
		base64.StdEncoding.EncodeToString([]byte(b.HostKey())))
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
// untrusted user: ssh-ng from Nix 2.26 refuses to build an input-addressed
// derivation there.
func TestUntrustedUser(t *testing.T) {
	for _, v := range Versions {
		t.Run(v.String(), func(t *testing.T) {
			key := NewClientKey(t)
			b := startTimed(t, BuilderOptions{Version: v, SSHUser: "nixtest", TrustedUsers: []string{"root"}, AuthorizedKeys: []string{key.Public}})
			machines := WriteMachinesFile(t, b.MachineLine("ssh-ng", key.Path))
			_, stderr, err := buildTimed(t, ClientOptions{Version: V226, MachinesFile: machines, Expr: TrivialDerivation("untrusted")})
			if err == nil {
				t.Fatalf("build as untrusted user succeeded; stderr:\n%s", stderr)
			}
			if !strings.Contains(stderr, "not privileged") && !strings.Contains(stderr, "trusted") {
				t.Fatalf("want a not-privileged/trusted error, got %v\n%s", err, stderr)
			}
			t.Logf("refused as expected: %s", firstLineWith(stderr, "privileged", "trusted"))
		})
	}
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
	for _, v := range Versions {
		t.Run(v.String(), func(t *testing.T) {
			key := NewClientKey(t)
			b := startTimed(t, BuilderOptions{Version: v, AuthorizedKeys: []string{key.Public}, SystemFeatures: []string{"nixtest-feature"}})
			addr := net.JoinHostPort(b.Addr.String(), strconv.Itoa(b.Port))
			build := func(name string) (string, string, error) {
				machines := WriteMachinesFile(t, b.MachineLine("ssh-ng", key.Path))
				return buildTimed(t, ClientOptions{Version: v, MachinesFile: machines, Expr: TrivialDerivation(name, "nixtest-feature")})
			}

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
				if err := b.waitBanner(5 * time.Second); err != nil {
					t.Fatal(err)
				}
			})
			t.Run("link-down-drops", func(t *testing.T) {
				if err := b.LinkDown(); err != nil {
					t.Fatal(err)
				}
				if err := readBanner(addr); err == nil {
					t.Error("banner read over a down link")
				}
				if err := b.LinkUp(); err != nil {
					t.Fatal(err)
				}
				if err := b.waitBanner(10 * time.Second); err != nil {
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
