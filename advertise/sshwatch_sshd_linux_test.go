package advertise

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestSSHWatchRealSSHD watches a real OpenSSH sshd on 127.0.0.1 and a
// free port through its life: up, SIGSTOP (stopped), SIGCONT (up),
// SIGKILL (not listening).
func TestSSHWatchRealSSHD(t *testing.T) {
	const sshd = "/usr/sbin/sshd"
	if _, err := os.Stat(sshd); err != nil {
		t.Skipf("needs OpenSSH's sshd (apt-get install openssh-server): %v", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: sshd runs as root with its own config")
	}
	if _, err := exec.LookPath("ssh-keygen"); err != nil {
		t.Skipf("needs ssh-keygen: %v", err)
	}
	dir := t.TempDir()
	key := filepath.Join(dir, "ssh_host_ed25519_key")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", key).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v %s", err, out)
	}
	port := freePort(t)
	cfg := filepath.Join(dir, "sshd_config")
	conf := fmt.Sprintf("ListenAddress 127.0.0.1:%d\nHostKey %s\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nPidFile none\nStrictModes no\n", port, key)
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	log, _ := os.Create(filepath.Join(dir, "sshd.log"))
	cmd := exec.Command(sshd, "-D", "-e", "-f", cfg)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatalf("start sshd: %v", err)
	}
	pid := cmd.Process.Pid
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		// A stopped sshd ignores SIGTERM until it is continued.
		syscall.Kill(pid, syscall.SIGCONT)
		syscall.Kill(pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			syscall.Kill(pid, syscall.SIGKILL)
			<-exited
		}
		if t.Failed() {
			b, _ := os.ReadFile(log.Name())
			t.Logf("sshd log:\n%s", b)
		}
	})

	w := &SSHWatch{Port: port}
	expect := func(what string, want SSHStatus, wantPID int) {
		t.Helper()
		var st SSHState
		deadline := time.Now().Add(5 * time.Second)
		for {
			st = w.Check()
			if st.Status == want && (wantPID == 0 || st.PID == wantPID) {
				t.Logf("%s: %v", what, st)
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: Check = %v (status %d, pid %d, pid err %v), want status %d pid %d within 5s",
					what, st, st.Status, st.PID, st.PIDErr, want, wantPID)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	expect("started", SSHUp, pid)
	syscall.Kill(pid, syscall.SIGSTOP)
	expect("SIGSTOP", SSHStopped, pid)
	syscall.Kill(pid, syscall.SIGCONT)
	expect("SIGCONT", SSHUp, pid)
	syscall.Kill(pid, syscall.SIGKILL)
	<-exited
	expect("SIGKILL", SSHNotListening, 0)
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
