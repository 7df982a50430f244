//go:build linux

// Package e2e runs the built nixrb-discover binaries as separate processes
// on hosts made of network namespaces, with real sshd, real Nix and real
// multicast, and checks what users see: the machines file and list.
package e2e

import (
	"bytes"

	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/nixrb-discover/nixrb-discover/internal/clienttest"
	"github.com/nixrb-discover/nixrb-discover/internal/hoststate"
	"github.com/nixrb-discover/nixrb-discover/internal/netnstest"
	"github.com/nixrb-discover/nixrb-discover/internal/nixtest"
)

// host is one machine of the test: a namespace on the hub bridge and a
// root-owned work directory outside /tmp (sshd refuses /tmp-based paths).
type host struct {
	*netnstest.Host
	dir string
}

func newHost(t *testing.T, topo *netnstest.Topology, name string) *host {
	return newHostTB(t, topo, name)
}

func newHostTB(t testing.TB, topo *netnstest.Topology, name string) *host {
	t.Helper()
	return &host{Host: topo.AddHost(t, name), dir: nixtest.WorkDir(t, "e2e-"+name)}
}

// start runs a command on the host, stopped (SIGTERM, then SIGKILL) at cleanup.
func (h *host) start(t testing.TB, logName string, name string, args ...string) *exec.Cmd {
	t.Helper()
	return h.run(t, logName, h.Command(name, args...))
}

// run starts cmd (made to run on the host), logging to logName.log
// (appended: a restarted process keeps its earlier log), stopped
// (SIGTERM, then SIGKILL) at cleanup.
func (h *host) run(t testing.TB, logName string, cmd *exec.Cmd) *exec.Cmd {
	t.Helper()
	name := cmd.Path
	logf, err := os.OpenFile(filepath.Join(h.dir, logName+".log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := h.Start(t, cmd); err != nil {
		t.Fatalf("%s on %s: %v", name, h.Name, err)
	}
	t.Cleanup(func() {
		// Stop it before the work directory goes: a client would restore
		// its machines file while the directory is being removed. It is
		// reaped later (netnstest); a test may be waiting for it too, so
		// only /proc says when it has exited.
		pid := cmd.Process.Pid
		if running(pid) {
			cmd.Process.Signal(syscall.SIGTERM)
			for deadline := time.Now().Add(5 * time.Second); running(pid) && time.Now().Before(deadline); {
				time.Sleep(10 * time.Millisecond)
			}
			if running(pid) {
				cmd.Process.Kill()
				for deadline := time.Now().Add(5 * time.Second); running(pid) && time.Now().Before(deadline); {
					time.Sleep(10 * time.Millisecond)
				}
			}
		}
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("--- %s on %s:\n%s", logName, h.Name, b)
		}
	})
	return cmd
}

// running reports whether pid exists and has not exited (a zombie, not
// yet reaped, has).
func running(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z' && s[i+2] != 'X'
}

// startSSHD runs a real OpenSSH sshd on the host's address that lets the
// client key in as root; nix-daemon --stdio comes from the host's Nix.
func (h *host) startSSHD(t testing.TB, clientPub string) string {
	t.Helper()
	hoststate.EnsureSSHDPrivsepDir(t)
	key := filepath.Join(h.dir, "ssh_host_ed25519_key")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", key).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v %s", err, out)
	}
	ak := filepath.Join(h.dir, "authorized_keys")
	if err := os.WriteFile(ak, []byte(clientPub+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(h.dir, "sshd_config")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`ListenAddress %s:22
HostKey %s
AuthorizedKeysFile %s
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PidFile none
StrictModes no
SetEnv TMPDIR=%s
`, h.IP, key, ak, h.dir)), 0o644); err != nil {
		t.Fatal(err)
	}
	h.start(t, "sshd", "/usr/sbin/sshd", "-D", "-e", "-f", cfg)
	return key + ".pub"
}

func buildBinary(t *testing.T) string { return buildBinaryTB(t) }

func buildBinaryTB(t testing.TB) string {
	return clienttest.BuildBinary(t, nixtest.WorkDir(t, "e2e-bin"))
}

func waitFor(t testing.TB, within time.Duration, what string, ok func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !ok() {
		if time.Since(start) > within {
			t.Fatalf("not within %v: %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}

func fileHas(path, s string) func() bool {
	return func() bool { b, _ := os.ReadFile(path); return bytes.Contains(b, []byte(s)) }
}

// listJSON runs `nixrb-discover list --json` against the client's socket.
func listJSON(t *testing.T, bin, socket string) *discover.Status {
	t.Helper()
	st, err := tryListJSON(bin, socket)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// tryListJSON is listJSON returning its error.
func tryListJSON(bin, socket string) (*discover.Status, error) {
	out, err := exec.Command(bin, "list", "--json", "--socket", socket).Output()
	if err != nil {
		return nil, fmt.Errorf("list --json: %w", err)
	}
	var st discover.Status
	if err := json.Unmarshal(out, &st); err != nil {
		return nil, fmt.Errorf("list --json: %w\n%s", err, out)
	}
	return &st, nil
}

// TestMDNSFleet: a builder with a signed advert, a rogue with an unsigned
// one, and a laptop running the client, each a namespace on one bridge,
// each running the real binary. The signed builder (with its real Nix
// facts) enters the machines file; the rogue never does and list says
// why; a dropped link takes it out of use (all its Nix slots held, its
// line kept); stopping the builder's agent does so at once.
func TestMDNSFleet(t *testing.T) {
	nixtest.RequireTools(t)
	netnstest.RequireRoot(t)
	bin := buildBinary(t)
	topo := netnstest.New(t)
	laptop, b1, rogue := newHost(t, topo, "laptop"), newHost(t, topo, "b1"), newHost(t, topo, "rogue")

	fleet := filepath.Join(laptop.dir, "fleet")
	if out, err := exec.Command(bin, "keygen", "--out", fleet).CombinedOutput(); err != nil {
		t.Fatalf("keygen: %v %s", err, out)
	}
	// The builders get the private half; the laptop trusts the public one.
	signKey := filepath.Join(b1.dir, "fleet")
	k, _ := os.ReadFile(fleet)
	if err := os.WriteFile(signKey, k, 0o600); err != nil {
		t.Fatal(err)
	}

	clientKey := filepath.Join(laptop.dir, "id_ed25519")
	machines := filepath.Join(laptop.dir, "machines")
	socket := filepath.Join(laptop.dir, "client.sock")
	if out, err := exec.Command(bin, "client", "--once", "--tailnet=false", "--static", "/dev/null", "--ssh-key", clientKey, "--machines", filepath.Join(laptop.dir, "first")).CombinedOutput(); err != nil {
		t.Fatalf("create the client key: %v %s", err, out)
	}
	clientPub, _ := os.ReadFile(clientKey + ".pub")

	b1HostKey := b1.startSSHD(t, strings.TrimSpace(string(clientPub)))
	rogueHostKey := rogue.startSSHD(t, strings.TrimSpace(string(clientPub)))

	// The client holds Nix's slot locks in a state dir of its own, not
	// the host's /nix/var/nix.
	stateDir := filepath.Join(laptop.dir, "nix-state")
	if err := os.Mkdir(stateDir, 0o755); err != nil {
		t.Fatal(err)
	}
	laptop.start(t, "client", bin, "client", "--tailnet=false", "--mdns", "--mdns-iface", netnstest.HostIface,
		"--trust-key", fleet+".pub", "--ssh-key", clientKey, "--machines", machines, "--socket", socket,
		"--nix-state-dir", stateDir, "--log-level", "debug")
	agent := b1.start(t, "advertise", bin, "advertise", "--tailnet=false", "--mdns", "--mdns-iface", netnstest.HostIface,
		"--sign-key", signKey, "--ssh-user", "root", "--ssh-host-key", b1HostKey, "--hostname", "b1", "--log-level", "debug")
	rogue.start(t, "advertise", bin, "advertise", "--tailnet=false", "--mdns", "--mdns-iface", netnstest.HostIface,
		"--ssh-user", "root", "--ssh-host-key", rogueHostKey, "--hostname", "rogue", "--log-level", "debug")

	took := waitFor(t, 30*time.Second, "b1 in the machines file", fileHas(machines, "ssh-ng://root@"+b1.IP.String()))
	t.Logf("signed builder in the machines file %v after its agent started", took)

	// Real Nix facts: the line carries what this machine's nix reports.
	nixOut, err := exec.Command("nix", "--extra-experimental-features", "nix-command", "show-config", "--json").Output()
	if err != nil {
		t.Fatalf("nix show-config: %v", err)
	}
	var conf map[string]struct{ Value any }
	json.Unmarshal(nixOut, &conf)
	system, _ := conf["system"].Value.(string)
	file, _ := os.ReadFile(machines)
	if !bytes.Contains(file, []byte(" "+system)) || !bytes.Contains(file, []byte(" "+clientKey+" ")) {
		t.Errorf("b1's line lacks the real system %q or the client key:\n%s", system, file)
	}

	st := listJSON(t, bin, socket)
	var sawRogue bool
	for _, b := range st.Builders {
		switch {
		case b.Name == "b1" && (!b.InFile || b.State != discover.StateHealthy || !b.Trusted):
			t.Errorf("list says b1 is %+v, want healthy, trusted, in the file", b)
		case strings.Contains(b.Key, "untrusted"):
			sawRogue = true
			if b.InFile || b.Trusted || !strings.Contains(b.TrustHint, "--trust-key") && !strings.Contains(b.TrustHint, "--pin") {
				t.Errorf("rogue listed as %+v; want untrusted, out of the file, with the flag that would trust it", b)
			}
		}
	}
	if !sawRogue {
		t.Errorf("list --json does not show the rogue at all: %+v", st.Builders)
	}
	if bytes.Contains(file, []byte(rogue.IP.String())) {
		t.Fatalf("the unsigned rogue is in the machines file:\n%s", file)
	}
	out, _ := exec.Command(bin, "list", "--all", "--socket", socket).CombinedOutput()
	if !bytes.Contains(out, []byte("untrusted")) || !bytes.Contains(out, []byte("b1")) {
		t.Errorf("list --all does not explain both builders:\n%s", out)
	}
	t.Logf("list --all:\n%s", out)

	// Packets dropped (link down): the kernel's TCP keepalive on the
	// client's SSH connection goes unanswered and the builder is out of
	// use: all its slots held, its line still in the file (the time is
	// logged; BenchmarkMDNSJoinLeave measures it).
	inFile := fileHas(machines, "ssh-ng://root@"+b1.IP.String())
	if err := b1.LinkDown(); err != nil {
		t.Fatal(err)
	}
	took = waitFor(t, 10*time.Second, "b1 out of use after its link went down", func() bool {
		st, _ := findBuilder(bin, socket, "b1")
		return slotsHeld(st) && st.Slots.Reason == reasonDown && inFile()
	})
	t.Logf("link down: out of use after %v", took)
	if err := b1.LinkUp(); err != nil {
		t.Fatal(err)
	}
	took = waitFor(t, 30*time.Second, "b1's slots released after its link came up", func() bool {
		st, _ := findBuilder(bin, socket, "b1")
		return slotsReleased(st) && inFile()
	})
	t.Logf("link up: slots released after %v", took)

	// A clean stop publishes a signed draining advert: out of use at once
	// (all its slots held for draining; the line stays until it is gone
	// for good).
	stopped := time.Now()
	agent.Process.Signal(syscall.SIGTERM)
	took = waitFor(t, 10*time.Second, "b1 out of use after its agent stopped", func() bool {
		st, _ := findBuilder(bin, socket, "b1")
		return slotsHeld(st) && st.Slots.Reason == reasonDraining && inFile()
	})
	t.Logf("clean stop: out of use %v after SIGTERM", took)
	done := make(chan error, 1)
	go func() { done <- agent.Wait() }()
	select {
	case <-done:
		if since := time.Since(stopped); since > 2*time.Second {
			t.Errorf("agent took %v to exit after SIGTERM, want < 2s", since)
		}
	case <-time.After(5 * time.Second):
		t.Errorf("agent did not exit within 5s of SIGTERM")
	}

}
