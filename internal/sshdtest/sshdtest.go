// Package sshdtest gives tests a real OpenSSH sshd of their own: its own
// config, host key and authorized keys, on a free loopback port. Nix
// behind it is the host's (Debian's nix-bin 2.8): a handshake runs no
// build, so sharing the host store is fine. For builders that really
// build (their own /nix), use internal/nixtest.
package sshdtest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nixrb-discover/nixrb-discover/internal/hoststate"
)

// Path is the sshd binary (Debian's openssh-server).
const Path = "/usr/sbin/sshd"

// User is a non-root account for cases that need a user of their own
// (bash as login shell, no home: no startup files of the host's root).
const User = "nixrbhealth"

// Options configures one test sshd.
type Options struct {
	// Authorized are the keys allowed to log in (as any allowed user).
	Authorized []ssh.PublicKey
	// Env is set for every session (sshd SetEnv); TMPDIR is always set.
	Env map[string]string
	// Users allowed to log in; default root.
	Users []string
	// Extra lines for sshd_config (e.g. ForceCommand).
	Extra []string
}

// SSHD is a running sshd, stopped (by PID) in the cleanup of the test that
// started it.
type SSHD struct {
	// Addr is the host:port it listens on (127.0.0.1).
	Addr string
	// HostKey is its host key.
	HostKey ssh.PublicKey
	// Dir holds its config, keys and logs (0755, outside t.TempDir).
	Dir string

	cmd     *exec.Cmd
	exited  chan struct{}
	logFile string
	once    sync.Once
}

// Log returns what sshd wrote (-e: to its stderr, a file here: with a
// pipe, exec.Cmd.Wait would wait for every session process too).
func (s *SSHD) Log() string {
	b, _ := os.ReadFile(s.logFile)
	return string(b)
}

// Require skips unless the test can run a real sshd (root, installed).
func Require(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run sshd (run under .ci/run)")
	}
	if _, err := os.Stat(Path); err != nil {
		t.Skipf("needs openssh-server: %v", err)
	}
	if _, err := exec.LookPath("nix-daemon"); err != nil {
		t.Skipf("needs nix-bin on PATH: %v", err)
	}
	hoststate.EnsureSSHDPrivsepDir(t)
}

// EnsureUser creates User if missing: bash as shell, no home,
// unlocked for public key login (sshd with UsePAM no refuses a locked
// account).
func EnsureUser(t testing.TB) {
	t.Helper()
	if _, err := user.Lookup(User); err == nil {
		return
	}
	out, err := exec.Command("useradd", "--system", "--no-create-home",
		"--home-dir", "/nonexistent", "--shell", "/bin/bash", User).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "already exists") {
		t.Fatalf("useradd %s: %v: %s", User, err, out)
	}
	if out, err := exec.Command("usermod", "-p", "*", User).CombinedOutput(); err != nil {
		t.Fatalf("usermod %s: %v: %s", User, err, out)
	}
}

// NewSigner returns a fresh ed25519 SSH identity.
func NewSigner(t testing.TB) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Start starts sshd and waits until it sends its banner. It is
// stopped (by PID) in t.Cleanup.
func Start(t testing.TB, opts Options) *SSHD {
	t.Helper()
	Require(t)
	// Not t.TempDir: its parent is 0700, and sshd reads authorized_keys
	// (and sessions their startup files) as the logged-in user.
	dir, err := os.MkdirTemp("", "nixrb-sshd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	_, hostPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(hostPriv, "")
	if err != nil {
		t.Fatal(err)
	}
	hostKeyFile := filepath.Join(dir, "ssh_host_ed25519_key")
	if err := os.WriteFile(hostKeyFile, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	hostSigner, err := ssh.NewSignerFromKey(hostPriv)
	if err != nil {
		t.Fatal(err)
	}
	var ak bytes.Buffer
	for _, k := range opts.Authorized {
		ak.Write(ssh.MarshalAuthorizedKey(k))
	}
	akFile := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(akFile, ak.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, "tmp")
	if err := os.Mkdir(tmp, 0o1777); err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(tmp, 0o1777)
	// An empty HOME keeps the host's own ~/.bashrc (sourced by bash for
	// sshd sessions) out of the tests.
	home := filepath.Join(dir, "home")
	if err := os.Mkdir(home, 0o755); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"TMPDIR": tmp, "HOME": home}
	for k, v := range opts.Env {
		env[k] = v
	}
	users := opts.Users
	if len(users) == 0 {
		users = []string{"root"}
	}

	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		cfg := filepath.Join(dir, "sshd_config")
		if err := os.WriteFile(cfg, []byte(sshdConfig(port, hostKeyFile, akFile, env, users, opts.Extra)), 0o644); err != nil {
			t.Fatal(err)
		}
		s := &SSHD{
			Addr:    net.JoinHostPort("127.0.0.1", fmt.Sprint(port)),
			HostKey: hostSigner.PublicKey(),
			Dir:     dir,
			exited:  make(chan struct{}),
			logFile: filepath.Join(dir, fmt.Sprintf("sshd-%d.log", attempt)),
		}
		logf, err := os.Create(s.logFile)
		if err != nil {
			t.Fatal(err)
		}
		s.cmd = exec.Command(Path, "-D", "-e", "-f", cfg)
		s.cmd.Stdout, s.cmd.Stderr = logf, logf
		err = s.cmd.Start()
		logf.Close()
		if err != nil {
			t.Fatalf("start sshd: %v", err)
		}
		go func() { _ = s.cmd.Wait(); close(s.exited) }()
		if lastErr = s.waitReady(5 * time.Second); lastErr == nil {
			t.Cleanup(func() {
				s.Stop()
				if t.Failed() {
					t.Logf("sshd log:\n%s", s.Log())
				}
			})
			return s
		}
		s.Stop()
		if !strings.Contains(s.Log(), "Address already in use") {
			break
		}
	}
	t.Fatalf("sshd did not start: %v", lastErr)
	return nil
}

func sshdConfig(port int, hostKey, authorizedKeys string, env map[string]string, users, extra []string) string {
	var envs []string
	for k, v := range env {
		envs = append(envs, k+"="+v)
	}
	sort.Strings(envs)
	return strings.Join(append([]string{
		fmt.Sprintf("Port %d", port),
		"ListenAddress 127.0.0.1",
		"HostKey " + hostKey,
		"PidFile none",
		"UsePAM no",
		"StrictModes no",
		"AuthorizedKeysFile " + authorizedKeys,
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"PermitRootLogin prohibit-password",
		"AllowUsers " + strings.Join(users, " "),
		"Subsystem sftp none",
		"SetEnv " + strings.Join(envs, " "),
	}, append(extra, "")...), "\n")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitReady polls until sshd answers with a banner, it exits, or d passes.
func (s *SSHD) waitReady(d time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	for {
		select {
		case <-s.exited:
			return errors.New("sshd exited: " + s.Log())
		default:
		}
		conn, err := net.DialTimeout("tcp", s.Addr, 200*time.Millisecond)
		if err == nil {
			_ = conn.SetDeadline(time.Now().Add(time.Second))
			_, err = bufio.NewReader(conn).ReadString('\n')
			conn.Close()
			if err == nil {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no banner from %s within %s: %v", s.Addr, d, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Pause stops the listening sshd (SIGSTOP): the kernel still accepts TCP
// connections into the backlog, but no banner comes. Established sessions
// (their own processes) keep working.
func (s *SSHD) Pause(t testing.TB) {
	t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP sshd: %v", err)
	}
}

// Resume continues a paused sshd.
func (s *SSHD) Resume(t testing.TB) {
	t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatalf("SIGCONT sshd: %v", err)
	}
}

// Stop ends the listening sshd by PID (SIGCONT first: a stopped sshd
// ignores SIGTERM until continued) and waits for it, bounded.
func (s *SSHD) Stop() {
	s.once.Do(func() {
		p := s.cmd.Process
		_ = p.Signal(syscall.SIGCONT)
		_ = p.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(3 * time.Second):
			_ = p.Kill()
			<-s.exited
		}
	})
}
