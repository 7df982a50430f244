package advertise

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/internal/hoststate"
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
	hoststate.EnsureSSHDPrivsepDir(t)
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

	// A client connects to the stopped sshd: the kernel completes the
	// handshake and the connection waits in the accept queue.
	conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second)
	if err != nil {
		t.Fatalf("connect to the stopped sshd: %v", err)
	}
	defer conn.Close()
	expect("SIGSTOP, a connection waiting", SSHStopped, pid) // stopped says more than stalled
	// Without capabilities (as the shipped systemd unit runs the agent)
	// sshd's fds are unreadable: no owner, but the queue shows the stall.
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Logf("no setpriv: not checking the watch without capabilities: %v", err)
	} else {
		got := checkWithoutCaps(t, port)
		if len(got) != 2 || got[0].Status != SSHUp || got[0].PIDErr == "" || got[1].Status != SSHStalled {
			t.Errorf("without capabilities: %+v, want up (owner unknown) then stalled", got)
		}
		t.Logf("without capabilities: %+v", got)
	}
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

// helperPortEnv makes the test binary a helper for checkWithoutCaps.
const helperPortEnv = "NIXRB_SSHWATCH_HELPER_PORT"

// helperResult is one Check of the helper, as it prints it.
type helperResult struct {
	Status SSHStatus
	PID    int
	PIDErr string
}

// checkWithoutCaps runs two Checks of port, 50 ms apart, in this test
// binary started by setpriv without any capability (root like the
// shipped unit's agent, CapabilityBoundingSet= empty).
func checkWithoutCaps(t *testing.T, port int) []helperResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "setpriv", "--bounding-set", "-all", "--inh-caps", "-all", "--",
		os.Args[0], "-test.run", "^TestSSHWatchHelper$", "-test.count", "1")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d", helperPortEnv, port))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	var res []helperResult
	for _, l := range strings.Split(string(out), "\n") {
		if j, ok := strings.CutPrefix(l, "sshwatch: "); ok {
			var r helperResult
			if err := json.Unmarshal([]byte(j), &r); err != nil {
				t.Fatalf("helper said %q: %v", l, err)
			}
			res = append(res, r)
		}
	}
	return res
}

// TestSSHWatchHelper is the other side of checkWithoutCaps; run alone, it
// skips.
func TestSSHWatchHelper(t *testing.T) {
	port, err := strconv.Atoi(os.Getenv(helperPortEnv))
	if err != nil {
		t.Skip("a helper process of TestSSHWatchRealSSHD")
	}
	w := &SSHWatch{Port: port}
	for i := range 2 {
		if i > 0 {
			time.Sleep(50 * time.Millisecond)
		}
		st := w.Check()
		r := helperResult{Status: st.Status, PID: st.PID}
		if st.PIDErr != nil {
			r.PIDErr = st.PIDErr.Error()
		}
		b, _ := json.Marshal(r)
		fmt.Printf("sshwatch: %s\n", b)
	}
}
