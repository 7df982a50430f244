package nixtest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Bounds on waiting for a builder.
const (
	readyTimeout = 15 * time.Second
	stopTimeout  = 5 * time.Second
)

// proc is a started sshd and the result of waiting for it.
type proc struct {
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// launch starts cmd, which ends by exec'ing sshd (so its PID is sshd's),
// with output appended to sshd.log.
func (b *Builder) launch(cmd *exec.Cmd) error {
	logf, err := os.OpenFile(filepath.Join(b.Dir, "sshd.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("sshd log: %w", err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C"}
	// Pdeathsig kills sshd if the test process dies (a later run's sweep
	// clears the rest). It is tied to the starting thread, so one locked
	// goroutine starts and waits for sshd.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		if err := cmd.Start(); err != nil {
			started <- err
			p.waitErr = err
			close(p.done)
			return
		}
		started <- nil
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("start sshd: %w", err)
	}
	b.mu.Lock()
	b.sshd = p
	b.mu.Unlock()
	return nil
}

// waitStarted waits for start.sh's PID files, the nix-daemon socket and
// the sshd banner.
func (b *Builder) waitStarted() error {
	deadline := time.Now().Add(readyTimeout)
	for {
		holder, err1 := readPID(filepath.Join(b.Dir, "holder.pid"))
		_, err2 := readPID(filepath.Join(b.Dir, "nix-daemon.pid"))
		_, err3 := os.Stat(filepath.Join(b.Dir, "nix/var/nix/daemon-socket/socket"))
		if err1 == nil && err2 == nil && err3 == nil {
			b.mu.Lock()
			b.holderPID, b.mntIno = holder, pidNS(holder, "mnt")
			b.mu.Unlock()
			break
		}
		if err := b.sshdGone(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nix-daemon not up after %v (%v, %v, %v); logs:\n%s",
				readyTimeout, err1, err2, err3, tail(b.Logs(), 30))
		}
		time.Sleep(20 * time.Millisecond)
	}
	return b.waitBanner(time.Until(deadline))
}

func readPID(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return pid, nil
}

// sshdGone returns an error if the current sshd has exited.
func (b *Builder) sshdGone() error {
	b.mu.Lock()
	p := b.sshd
	b.mu.Unlock()
	if p != nil && p.exited() {
		return fmt.Errorf("sshd exited: %v; logs:\n%s", p.waitErr, tail(b.Logs(), 30))
	}
	return nil
}

// WaitBanner waits up to d until the listening sshd answers a new TCP
// connection with its banner, as after ContSSHD or LinkUp.
func (b *Builder) WaitBanner(d time.Duration) error {
	if err := b.waitBanner(d); err != nil {
		return fmt.Errorf("builder %s: %w", b.Hostname, err)
	}
	return nil
}

func (b *Builder) waitBanner(d time.Duration) error {
	deadline := time.Now().Add(d)
	addr := net.JoinHostPort(b.Addr.String(), strconv.Itoa(b.Port))
	var last error
	for {
		if err := b.sshdGone(); err != nil {
			return err
		}
		if last = b.readBanner(addr); last == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no sshd banner from %s after %v: %w; logs:\n%s", addr, d, last, tail(b.Logs(), 30))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// readBanner reads sshd's banner from the root namespace, or from inside
// the caller's namespace the builder runs in (not reachable from the root
// namespace).
func (b *Builder) readBanner(addr string) error {
	if b.slot != nil {
		return readBanner(addr)
	}
	return inNetns(b.Netns, func() error { return readBanner(addr) })
}

// inNetns runs fn on a thread that has entered the network namespace ns
// (as in `ip netns list`). The thread is never unlocked, so it ends with
// its goroutine instead of going back to the scheduler in ns.
func inNetns(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open("/run/netns/" + ns)
		if err != nil {
			errc <- fmt.Errorf("netns %s: %w", ns, err)
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", ns, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

func readBanner(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("read banner: %w", err)
	}
	if !strings.HasPrefix(line, "SSH-") {
		return fmt.Errorf("unexpected banner %q", line)
	}
	return nil
}

// SSHDPID returns the PID of the listening sshd, or 0 if it is not running.
func (b *Builder) SSHDPID() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sshd == nil || b.sshd.exited() {
		return 0
	}
	return b.sshd.cmd.Process.Pid
}

func (b *Builder) signalSSHD(sig syscall.Signal) (*proc, error) {
	b.mu.Lock()
	p := b.sshd
	b.mu.Unlock()
	if p == nil || p.exited() {
		return nil, fmt.Errorf("builder %s: sshd is not running", b.Hostname)
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		return nil, fmt.Errorf("builder %s: signal sshd %d: %w", b.Hostname, p.cmd.Process.Pid, err)
	}
	return p, nil
}

// KillSSHD kills the listening sshd with SIGKILL and waits until it is
// gone: new connections are refused, while sessions already open (sshd's
// per-connection processes) and nix-daemon keep running.
func (b *Builder) KillSSHD() error {
	p, err := b.signalSSHD(syscall.SIGKILL)
	if err != nil {
		return err
	}
	return b.waitExit(p)
}

func (b *Builder) waitExit(p *proc) error {
	select {
	case <-p.done:
		return nil
	case <-time.After(stopTimeout):
		return fmt.Errorf("builder %s: sshd %d still running after %v", b.Hostname, p.cmd.Process.Pid, stopTimeout)
	}
}

// DropSessions kills (SIGKILL, by PID) every sshd process of the builder
// but the listening one: every open SSH connection ends at once, as when
// the builder reboots, while new connections are still accepted.
func (b *Builder) DropSessions() error {
	listener := b.SSHDPID()
	for _, pid := range netnsPIDs(b.netIno) {
		if pid == listener || !isSSHD(pid) {
			continue
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(stopTimeout)
	for {
		left := 0
		for _, pid := range netnsPIDs(b.netIno) {
			if pid != listener && isSSHD(pid) {
				left++
			}
		}
		if left == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("builder %s: %d sshd session processes survived SIGKILL", b.Hostname, left)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// isSSHD reports whether pid runs sshd (its executable, or what sshd-session
// and privilege-separated children call themselves).
func isSSHD(pid int) bool {
	comm, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	if err != nil {
		return false
	}
	c := strings.TrimSpace(string(comm))
	return c == "sshd" || strings.HasPrefix(c, "sshd-")
}

// StopSSHD freezes the listening sshd with SIGSTOP: the kernel still
// accepts TCP connections, but no banner comes (a hung builder).
func (b *Builder) StopSSHD() error {
	_, err := b.signalSSHD(syscall.SIGSTOP)
	return err
}

// ContSSHD resumes an sshd frozen by StopSSHD.
func (b *Builder) ContSSHD() error {
	_, err := b.signalSSHD(syscall.SIGCONT)
	return err
}

// RestartSSHD stops the listening sshd if it runs (SIGCONT, SIGTERM, then
// SIGKILL after a bound), starts a new one in the builder's namespaces with
// the current config and host key, and waits for its banner.
func (b *Builder) RestartSSHD() error {
	b.mu.Lock()
	p, holder := b.sshd, b.holderPID
	b.mu.Unlock()
	if p != nil && !p.exited() {
		_ = p.cmd.Process.Signal(syscall.SIGCONT)
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		if err := b.waitExit(p); err != nil {
			_ = p.cmd.Process.Signal(syscall.SIGKILL)
			if err := b.waitExit(p); err != nil {
				return err
			}
		}
	}
	// The holder is a sleep that start.sh left in the builder's network,
	// mount and UTS namespaces; check it is still ours before entering.
	if !alive(holder) || pidNetns(holder) != b.netIno {
		return fmt.Errorf("builder %s: namespace holder %d is gone", b.Hostname, holder)
	}
	cmd := exec.Command("nsenter", "--target", strconv.Itoa(holder), "--net", "--mount", "--uts",
		"--", "sh", filepath.Join(b.Dir, "sshd.sh"))
	if err := b.launch(cmd); err != nil {
		return fmt.Errorf("builder %s: %w", b.Hostname, err)
	}
	if err := b.waitBanner(readyTimeout); err != nil {
		return fmt.Errorf("builder %s: %w", b.Hostname, err)
	}
	return nil
}

// NixDaemonPID returns the PID of the builder's nix-daemon (the one that
// serves non-root users), or 0 if it has exited.
func (b *Builder) NixDaemonPID() int {
	pid, err := readPID(filepath.Join(b.Dir, "nix-daemon.pid"))
	if err != nil || !alive(pid) || pidNetns(pid) != b.netIno {
		return 0
	}
	return pid
}

// Exec runs a command inside the builder (its namespaces and, for V226,
// its chroot) as root and returns its combined output, bounded by ctx and
// one minute.
func (b *Builder) Exec(ctx context.Context, args ...string) (string, error) {
	full, err := b.nsenterArgs()
	if err != nil {
		return "", err
	}
	out, err := runCmd(ctx, time.Minute, "nsenter", append(full, args...)...)
	if err != nil {
		return out, fmt.Errorf("builder %s: %w", b.Hostname, err)
	}
	return out, nil
}

// nsenterArgs are nsenter's arguments to run a command inside the builder:
// its namespaces, entered through the holder process start.sh left in
// them (checked to be still ours), and for V226 its chroot.
func (b *Builder) nsenterArgs() ([]string, error) {
	b.mu.Lock()
	holder := b.holderPID
	b.mu.Unlock()
	if !alive(holder) || pidNetns(holder) != b.netIno {
		return nil, fmt.Errorf("builder %s: namespace holder %d is gone", b.Hostname, holder)
	}
	full := []string{"--target", strconv.Itoa(holder), "--net", "--mount", "--uts", "--"}
	if b.Version == V226 {
		full = append(full, "chroot", b.Root)
	}
	return full, nil
}

// Command returns a command that runs inside the builder (its network,
// mount and UTS namespaces and, for V226, its chroot) as root, for a
// long-running process such as an agent that must see the builder's own
// /nix and /etc/nix. The caller starts and stops it; whatever is still
// running in the builder at cleanup is stopped then. It fails if the
// builder's namespaces are gone.
func (b *Builder) Command(name string, args ...string) (*exec.Cmd, error) {
	full, err := b.nsenterArgs()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("nsenter", append(append(full, name), args...)...)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C"}
	return cmd, nil
}

// SetHostKey replaces the host key with priv (nil: a new ed25519 key) and
// restarts sshd. HostKey returns the new public key afterwards.
func (b *Builder) SetHostKey(priv []byte) error {
	if err := b.writeHostKey(priv); err != nil {
		return fmt.Errorf("builder %s: %w", b.Hostname, err)
	}
	return b.RestartSSHD()
}

// LinkDown sets the builder's end of its veth down: packets to Addr are
// silently dropped until LinkUp, so connections time out (Nix 2.8 waits
// ~135 s) rather than being refused. Sessions already open stall.
func (b *Builder) LinkDown() error {
	return b.setLink("down")
}

// LinkUp undoes LinkDown.
func (b *Builder) LinkUp() error {
	return b.setLink("up")
}

func (b *Builder) setLink(state string) error {
	if b.slot == nil {
		return fmt.Errorf("builder %s: link %s: the builder runs in the caller's namespace %s; set the caller's link %s", b.Hostname, state, b.Netns, state)
	}
	if _, err := runCmd(context.Background(), 10*time.Second, "ip", "-n", b.Netns, "link", "set", peerIfName, state); err != nil {
		return fmt.Errorf("builder %s: link %s: %w", b.Hostname, state, err)
	}
	return nil
}

// userMu serialises user creation in this process; a file lock covers
// other processes on the host.
var userMu sync.Mutex

// ensureUser creates name (if missing) on the host (V28) or in the chroot
// at root (V226), with a home, /bin/sh and an unlocked password field
// (sshd with UsePAM no refuses locked accounts).
func ensureUser(ctx context.Context, v Version, root, name string) error {
	if name == "root" {
		return nil
	}
	userMu.Lock()
	defer userMu.Unlock()
	exists := func() (bool, error) {
		if v == V28 {
			_, err := user.Lookup(name)
			if err == nil {
				return true, nil
			}
			var unknown user.UnknownUserError
			if errors.As(err, &unknown) {
				return false, nil
			}
			return false, fmt.Errorf("look up user %s: %w", name, err)
		}
		data, err := os.ReadFile(filepath.Join(root, "etc/passwd"))
		if err != nil {
			return false, fmt.Errorf("look up user %s: %w", name, err)
		}
		return strings.HasPrefix(string(data), name+":") || strings.Contains(string(data), "\n"+name+":"), nil
	}
	if ok, err := exists(); err != nil || ok {
		return err
	}
	args := []string{"useradd", "-m", "-s", "/bin/sh", "-p", "*", name}
	if v == V226 {
		args = append([]string{"chroot", root}, args...)
	} else {
		if err := os.MkdirAll("/run/nixrb-nixtest", 0o755); err != nil {
			return err
		}
		lock, err := lockFile("/run/nixrb-nixtest/useradd.lock", 30*time.Second)
		if err != nil {
			return fmt.Errorf("create user %s: %w", name, err)
		}
		defer lock.Close()
		if ok, err := exists(); err != nil || ok {
			return err
		}
	}
	if _, err := runCmd(ctx, 30*time.Second, args[0], args[1:]...); err != nil {
		return fmt.Errorf("create user %s: %w", name, err)
	}
	return nil
}
