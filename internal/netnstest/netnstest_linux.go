package netnstest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// netnsDir is where iproute2 keeps named namespaces.
const netnsDir = "/run/netns"

// HostIface is the name of every host's veth inside its own namespace.
const HostIface = "veth0"

// RequireRoot skips the test unless the process can create network
// namespaces (root or CAP_NET_ADMIN + CAP_SYS_ADMIN) and iproute2 is
// installed.
func RequireRoot(t testing.TB) {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skipf("netnstest: network namespaces need Linux, this is %s", runtime.GOOS)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("netnstest: iproute2 (ip) is not installed: apt-get install iproute2")
	}
	if os.Geteuid() == 0 {
		return
	}
	var hdr = unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err == nil {
		const netAdmin, sysAdmin = unix.CAP_NET_ADMIN, unix.CAP_SYS_ADMIN
		has := func(c int) bool { return data[c/32].Effective&(1<<(uint(c)%32)) != 0 }
		if has(netAdmin) && has(sysAdmin) {
			return
		}
	}
	t.Skip("netnstest: needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN) to create network namespaces; run the test as root, as .ci/run does")
}

// Topology is a hub namespace with a bridge that hosts attach to.
type Topology struct {
	// Hub is the hub namespace's name.
	Hub string
	// Prefix is the IPv4 subnet hosts get their addresses from.
	Prefix netip.Prefix

	id string

	mu    sync.Mutex
	hosts []*Host
}

// Host is one namespace attached to a Topology's bridge.
type Host struct {
	// Name is the name the test gave the host.
	Name string
	// NS is the namespace's name (as in `ip netns list`).
	NS string
	// Iface is the host's veth inside NS (HostIface).
	Iface string
	// IP is the host's IPv4 address on Iface.
	IP netip.Addr

	topo *Topology
	peer string // hub side of the veth

	mu    sync.Mutex
	procs []*exec.Cmd
}

// New creates a hub namespace with a bridge, removed when the test ends.
func New(t testing.TB) *Topology {
	t.Helper()
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("netnstest: random id: %v", err)
	}
	id := hex.EncodeToString(b[:3])
	octet := 1 + int(b[3])%254
	topo := &Topology{
		Hub:    "nrbd-" + id + "-hub",
		Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 231, byte(octet), 0}), 24),
		id:     id,
	}
	if err := addNS(topo.Hub); err != nil {
		t.Fatalf("netnstest: %v", err)
	}
	t.Cleanup(func() { topo.cleanup(t) })
	cmds := [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", "br0", "type", "bridge"},
		{"link", "set", "br0", "up"},
	}
	if err := writeSysctls(topo.Hub); err != nil {
		t.Fatalf("netnstest: %v", err)
	}
	for _, c := range cmds {
		if err := ipIn(topo.Hub, c...); err != nil {
			t.Fatalf("netnstest: hub: %v", err)
		}
	}
	return topo
}

// AddHost creates a namespace named after name, joins it to the hub's
// bridge and gives it the next free address of Prefix.
func (topo *Topology) AddHost(t testing.TB, name string) *Host {
	t.Helper()
	topo.mu.Lock()
	idx := len(topo.hosts) + 1
	if idx > 250 {
		topo.mu.Unlock()
		t.Fatalf("netnstest: too many hosts in one topology")
	}
	h := &Host{
		Name:  name,
		NS:    fmt.Sprintf("nrbd-%s-%d", topo.id, idx),
		Iface: HostIface,
		IP:    hostAddr(topo.Prefix, idx+1),
		topo:  topo,
		peer:  fmt.Sprintf("h%d", idx),
	}
	topo.hosts = append(topo.hosts, h)
	topo.mu.Unlock()

	if err := addNS(h.NS); err != nil {
		t.Fatalf("netnstest: host %s: %v", name, err)
	}
	// Accept_dad must be 0 before the veth exists: its link-local address
	// would otherwise stay tentative for ~2 s.
	if err := writeSysctls(h.NS); err != nil {
		t.Fatalf("netnstest: host %s: %v", name, err)
	}
	cidr := netip.PrefixFrom(h.IP, topo.Prefix.Bits()).String()
	steps := []struct {
		ns   string
		args []string
	}{
		{h.NS, []string{"link", "set", "lo", "up"}},
		{h.NS, []string{"link", "add", h.Iface, "type", "veth", "peer", "name", h.peer, "netns", topo.Hub}},
		{topo.Hub, []string{"link", "set", h.peer, "master", "br0", "up"}},
		{h.NS, []string{"addr", "add", cidr, "dev", h.Iface}},
		{h.NS, []string{"link", "set", h.Iface, "multicast", "on", "up"}},
		{h.NS, []string{"route", "replace", "224.0.0.0/4", "dev", h.Iface}},
	}
	for _, s := range steps {
		if err := ipIn(s.ns, s.args...); err != nil {
			t.Fatalf("netnstest: host %s: %v", name, err)
		}
	}
	return h
}

// Do runs fn on a new goroutine locked to an OS thread that has entered
// h's network namespace, and returns fn's error. The thread is never
// unlocked, so it dies with the goroutine instead of going back to the
// scheduler in the wrong namespace. Sockets fn creates itself live in h;
// goroutines fn starts do not.
func (h *Host) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: see above
		f, err := os.Open(filepath.Join(netnsDir, h.NS))
		if err != nil {
			errc <- fmt.Errorf("netnstest: open namespace %s: %w", h.NS, err)
			return
		}
		err = unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
		f.Close()
		if err != nil {
			errc <- fmt.Errorf("netnstest: enter namespace %s: %w", h.NS, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Command returns a command that runs name inside h's namespace (through
// `ip netns exec`). Start it with Start so that it is killed at cleanup.
func (h *Host) Command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command("ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd
}

// Start starts cmd (usually from Command) in its own process group; the
// topology's cleanup kills that group by PID and reaps it, unless the test
// already waited for it.
func (h *Host) Start(t testing.TB, cmd *exec.Cmd) error {
	t.Helper()
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("netnstest: start %s in %s: %w", cmd.Path, h.NS, err)
	}
	h.mu.Lock()
	h.procs = append(h.procs, cmd)
	h.mu.Unlock()
	return nil
}

// LinkDown takes h's veth down (its IPv4 address stays).
func (h *Host) LinkDown() error {
	return ipIn(h.NS, "link", "set", h.Iface, "down")
}

// LinkUp brings h's veth back up and restores the multicast route the
// kernel dropped with the link.
func (h *Host) LinkUp() error {
	if err := ipIn(h.NS, "link", "set", h.Iface, "up"); err != nil {
		return err
	}
	return ipIn(h.NS, "route", "replace", "224.0.0.0/4", "dev", h.Iface)
}

// killProcs kills every process started with Start by its process group
// and reaps it.
func (h *Host) killProcs() {
	h.mu.Lock()
	procs := h.procs
	h.procs = nil
	h.mu.Unlock()
	for _, cmd := range procs {
		if cmd.Process == nil || cmd.ProcessState != nil {
			continue
		}
		pid := cmd.Process.Pid
		_ = unix.Kill(-pid, unix.SIGCONT)
		_ = unix.Kill(-pid, unix.SIGKILL)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
		}
	}
}

func (topo *Topology) cleanup(t testing.TB) {
	topo.mu.Lock()
	hosts := topo.hosts
	topo.mu.Unlock()
	for _, h := range hosts {
		h.killProcs()
	}
	for _, h := range hosts {
		if err := delNS(h.NS); err != nil {
			t.Errorf("netnstest: %v", err)
		}
	}
	if err := delNS(topo.Hub); err != nil {
		t.Errorf("netnstest: %v", err)
	}
}

// writeSysctls turns IPv6 duplicate address detection off in ns.
func writeSysctls(ns string) error {
	h := &Host{NS: ns}
	return h.Do(func() error {
		for _, p := range []string{
			"/proc/sys/net/ipv6/conf/all/accept_dad",
			"/proc/sys/net/ipv6/conf/default/accept_dad",
		} {
			if err := os.WriteFile(p, []byte("0\n"), 0o644); err != nil {
				return fmt.Errorf("sysctl in %s: %w", ns, err)
			}
		}
		return nil
	})
}

func addNS(ns string) error {
	out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip netns add %s: %w: %s", ns, err, bytes.TrimSpace(out))
	}
	return nil
}

func delNS(ns string) error {
	out, err := exec.Command("ip", "netns", "delete", ns).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "No such file") {
		return fmt.Errorf("ip netns delete %s: %w: %s", ns, err, bytes.TrimSpace(out))
	}
	return nil
}

// ipIn runs `ip -n ns args...`, which never touches the root namespace.
func ipIn(ns string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	full := append([]string{"-n", ns}, args...)
	out, err := exec.CommandContext(ctx, "ip", full...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(full, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// hostAddr is the n-th address of a /24 prefix.
func hostAddr(p netip.Prefix, n int) netip.Addr {
	a := p.Addr().As4()
	a[3] = byte(n)
	return netip.AddrFrom4(a)
}
