package advertise

import (
	"bytes"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeProc copies testdata/sshwatch/NAME into a temp dir and turns each
// PID/fd.txt ("FD TARGET" lines) into the PID/fd/FD symlinks procfs has
// (kept as text so the module zip holds no symlinks).
func fakeProc(t testing.TB, name string) string {
	t.Helper()
	src := filepath.Join("testdata", "sshwatch", name)
	dst := t.TempDir()
	err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		out := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(out, 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if d.Name() != "fd.txt" {
			return os.WriteFile(out, b, 0o644)
		}
		fdDir := filepath.Join(filepath.Dir(out), "fd")
		if err := os.MkdirAll(fdDir, 0o755); err != nil {
			return err
		}
		for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			fd, target, _ := strings.Cut(l, " ")
			if err := os.Symlink(target, filepath.Join(fdDir, fd)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("fake proc %s: %v", name, err)
	}
	return dst
}

func TestSSHWatchCheck(t *testing.T) {
	for _, tc := range []struct {
		name, tree string
		port       int
		want       SSHStatus
		pid        int
		says       string
	}{
		// sshd on 0.0.0.0:22 and [::]:22 among other sockets.
		{"listening on any address", "any", 22, SSHUp, 500, "sshd (pid 500) is listening on port 22"},
		{"sigstopped", "stopped", 22, SSHStopped, 500, "sshd (pid 500) is stopped"},
		{"stopped by a tracer", "traced", 22, SSHStopped, 500, "sshd (pid 500) is stopped"},
		// One IPv4 address, no tcp6 table (IPv6 off).
		{"listening on one address", "specific", 22, SSHUp, 700, "sshd (pid 700) is listening on port 22"},
		// [::1]:22; an outgoing session to some other port 22 does not count.
		{"listening on IPv6 only", "v6only", 22, SSHUp, 800, ""},
		// Only a session on local port 22 and a listener on 2222.
		{"dead", "none", 22, SSHNotListening, 0, "sshd is not listening on port 22"},
		{"another port", "none", 2222, SSHUp, 0, "sshd is listening on port 2222"},
		// One look at a full accept queue is not yet a stall.
		{"queue seen once", "queued", 22, SSHUp, 500, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := &SSHWatch{Port: tc.port, ProcRoot: fakeProc(t, tc.tree)}
			st := w.Check()
			if st.Status != tc.want || st.PID != tc.pid || tc.says != "" && st.String() != tc.says {
				t.Errorf("Check = %v (%d, pid %d), want %d pid %d %q", st, st.Status, st.PID, tc.want, tc.pid, tc.says)
			}
			if st.Healthy() != (tc.want == SSHUp) {
				t.Errorf("Healthy() = %v for %v", st.Healthy(), st)
			}
		})
	}
}

func TestSSHWatchNoOwner(t *testing.T) {
	// Port 2222's listener (inode 1301) is held by no process in the tree.
	st := (&SSHWatch{Port: 2222, ProcRoot: fakeProc(t, "none")}).Check()
	if st.Status != SSHUp || st.PIDErr == nil || !strings.Contains(st.PIDErr.Error(), "no process holds") {
		t.Errorf("Check = %+v, want up with a PIDErr", st)
	}
}

func TestSSHWatchUnreadable(t *testing.T) {
	st := (&SSHWatch{Port: 22, ProcRoot: t.TempDir()}).Check()
	if st.Status != SSHUnknown || st.Err == nil || !st.Healthy() {
		t.Errorf("Check on an empty proc = %+v, want unknown (healthy) with an error", st)
	}
	if !strings.HasPrefix(st.String(), "cannot tell whether sshd is up") {
		t.Errorf("String() = %q", st)
	}
}

func TestSSHWatchStalled(t *testing.T) {
	proc := fakeProc(t, "queued")
	tcp := filepath.Join(proc, "net", "tcp")
	queued, _ := os.ReadFile(tcp)
	moving := bytes.Replace(queued, []byte("00000080:00000003"), []byte("00000080:00000000"), 1)
	w := &SSHWatch{Port: 22, ProcRoot: proc}
	for i, step := range []struct {
		table []byte
		want  SSHStatus
	}{
		{queued, SSHUp},      // queue > 0 once: may be a burst
		{queued, SSHStalled}, // still > 0: nobody accepts
		{queued, SSHStalled},
		{moving, SSHUp}, // sshd took them
		{queued, SSHUp},
		{queued, SSHStalled},
	} {
		if err := os.WriteFile(tcp, step.table, 0o644); err != nil {
			t.Fatal(err)
		}
		if st := w.Check(); st.Status != step.want {
			t.Fatalf("check %d: %v, want status %d", i+1, st, step.want)
		}
	}
	if got := w.Check().String(); got != "sshd is not accepting connections" {
		t.Errorf("String() = %q", got)
	}
}

// TestSSHWatchOwnerCache: the fds are scanned once per listening inode,
// and again when sshd restarts with a new socket.
func TestSSHWatchOwnerCache(t *testing.T) {
	proc := fakeProc(t, "specific")
	w := &SSHWatch{Port: 22, ProcRoot: proc}
	if st := w.Check(); st.PID != 700 {
		t.Fatalf("first check: %v", st)
	}
	// Without a rescan, the cached owner stays even though its fd is gone.
	os.Remove(filepath.Join(proc, "700", "fd", "3"))
	if st := w.Check(); st.PID != 700 {
		t.Fatalf("second check rescanned: %v", st)
	}
	// sshd restarted: new pid, new socket inode.
	os.RemoveAll(filepath.Join(proc, "700"))
	os.MkdirAll(filepath.Join(proc, "900", "fd"), 0o755)
	if err := os.WriteFile(filepath.Join(proc, "900", "stat"), []byte("900 (sshd) T 1 900 900 0 -1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Symlink("socket:[4242]", filepath.Join(proc, "900", "fd", "3"))
	tcp := filepath.Join(proc, "net", "tcp")
	b, _ := os.ReadFile(tcp)
	if err := os.WriteFile(tcp, bytes.Replace(b, []byte(" 1101 "), []byte(" 4242 "), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	if st := w.Check(); st.Status != SSHStopped || st.PID != 900 {
		t.Fatalf("after the restart: %v, want pid 900 stopped", st)
	}
}

// TestSSHWatchOwnerGone: the owner vanished while its socket lives on
// (held by a child): no stopped verdict from a stale pid, and a rescan.
func TestSSHWatchOwnerGone(t *testing.T) {
	proc := fakeProc(t, "stopped")
	w := &SSHWatch{Port: 22, ProcRoot: proc}
	if st := w.Check(); st.Status != SSHStopped {
		t.Fatalf("first check: %v", st)
	}
	os.RemoveAll(filepath.Join(proc, "500"))
	if st := w.Check(); st.Status != SSHUp {
		t.Fatalf("owner gone: %v, want up", st)
	}
	if st := w.Check(); st.Status != SSHUp || st.PIDErr == nil {
		t.Fatalf("after the rescan: %+v, want up, owner unknown", st)
	}
}

// TestSSHHealth: the agent's view changes, and logs, once per transition.
func TestSSHHealth(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	up, stopped := fakeProc(t, "any"), fakeProc(t, "stopped")
	w := &SSHWatch{Port: 22, ProcRoot: up}
	h := &sshHealth{watch: w}
	for i, step := range []struct {
		proc    string
		changed bool
		bad     bool
		log     string
	}{
		{up, false, false, ""},
		{stopped, true, true, `level=WARN msg="sshd unhealthy, draining: sshd (pid 500) is stopped"`},
		{stopped, false, true, ""},
		{up, true, false, `level=INFO msg="sshd healthy again" sshd="sshd (pid 500) is listening on port 22"`},
		{up, false, false, ""},
	} {
		logs.Reset()
		w.ProcRoot = step.proc
		if changed := h.check(log); changed != step.changed || h.bad != step.bad {
			t.Errorf("step %d: changed %v bad %v, want %v %v", i, changed, h.bad, step.changed, step.bad)
		}
		if got := logs.String(); step.log == "" && got != "" || !strings.Contains(got, step.log) {
			t.Errorf("step %d: logged %q, want %q", i, got, step.log)
		}
	}
}

// TestSSHHealthArms: nothing listening before sshd was ever seen (sshd
// still starting, or SSH served elsewhere, like Tailscale SSH) does not
// drain; once sshd was seen, it does.
func TestSSHHealthArms(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	none, up := fakeProc(t, "none"), fakeProc(t, "any")
	w := &SSHWatch{Port: 22, ProcRoot: none}
	h := &sshHealth{watch: w}
	for i, step := range []struct {
		proc string
		bad  bool
	}{
		{none, false}, // not armed yet
		{none, false},
		{up, false}, // armed
		{none, true},
		{up, false},
	} {
		w.ProcRoot = step.proc
		h.check(log)
		if h.bad != step.bad {
			t.Errorf("step %d: bad %v, want %v", i, h.bad, step.bad)
		}
	}
	if n := strings.Count(logs.String(), "nothing listens on the SSH port yet"); n != 1 {
		t.Errorf("the not-yet note was logged %d times, want once:\n%s", n, &logs)
	}
}

// BenchmarkSSHWatchCheck measures one Check against the real /proc, on a
// port this process listens on (so the owner's stat is read as well):
// by sock_diag (what the agent does) and, for comparison, by reading
// /proc/net/tcp and tcp6, whose cost grows with the established hash
// table even when it is empty.
//
//	go test -run '^$' -bench SSHWatchCheck ./advertise
func BenchmarkSSHWatchCheck(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	for _, bc := range []struct{ name, netDir string }{
		{"sock_diag", ""},
		{"proc_net", "/proc/net"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			w := &SSHWatch{Port: port, NetDir: bc.netDir}
			if st := w.Check(); st.Status != SSHUp || st.PID != os.Getpid() {
				b.Fatalf("Check = %+v, want up, owned by this process", st)
			}
			if bc.netDir == "" && w.state.noDiag {
				b.Fatal("sock_diag failed")
			}
			b.ReportAllocs()
			for b.Loop() {
				w.Check()
			}
		})
	}
}
