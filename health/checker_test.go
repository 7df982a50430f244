package health

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/internal/sshdtest"
	"golang.org/x/crypto/ssh"
)

// nixLane is a Nix that answers behind the loopback test sshd: the host's
// Debian nix-bin 2.8, whose sshd_config (SetEnv, ForceCommand) the rows
// shape freely. TestCheckLanes (health_lane_test.go) runs the checks that
// need a real Nix of each version, 2.8 and 2.26, on namespace builders.
type nixLane struct {
	name       string
	nixVersion string // what the daemon reports
	protocol   string // worker protocol the daemon announces
	start      func(t testing.TB, o sshdtest.Options) *sshdtest.SSHD
}

func nixLanes() []nixLane {
	return []nixLane{
		{name: "nix-2.8", nixVersion: "2.8.0", protocol: "1.34", start: sshdtest.Start},
	}
}

// harness is one row's world: a real sshd with a real Nix behind it, a
// Checker, and the Target as a client would build it.
type harness struct {
	sshd   *sshdtest.SSHD
	c      *Checker
	target Target
}

func (h *harness) check(t *testing.T) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return h.c.Check(ctx, h.target)
}

type healthRow struct {
	name     string
	protocol string // default ssh-ng
	user     string // default root
	// env is set in every SSH session (sshd SetEnv); dir is the row's
	// scratch directory.
	env func(t *testing.T, dir string) map[string]string
	// extra returns more sshd_config lines (fake remotes only).
	extra        func(t *testing.T, dir string) []string
	unauthorized bool // the Checker's key is not in authorized_keys
	wrongHostKey bool // the Target pins another key
	// checker sets the Checker as the local Nix's rules would.
	checker func(c *Checker)
	// run drives the scenario and returns the Result under test; nil
	// means one Check.
	run    func(t *testing.T, h *harness) Result
	want   Reason
	verify func(t *testing.T, lane nixLane, h *harness, r Result)
}

func healthRows() []healthRow {
	return append(lifecycleRows(), []healthRow{
		{
			// The ssh-ng path: nix-daemon --stdio behind a real sshd.
			name: "ssh-ng-ok",
			want: ReasonOK,
			verify: func(t *testing.T, lane nixLane, h *harness, r Result) {
				if r.ProtocolVersion != lane.protocol || r.NixVersion != lane.nixVersion {
					t.Errorf("got protocol %q nix %q, want %q %q", r.ProtocolVersion, r.NixVersion, lane.protocol, lane.nixVersion)
				}
				if r.Trusted != TrustedUnknown {
					t.Errorf("Trusted = %v, want unknown (protocol %s has no trusted flag)", r.Trusted, lane.protocol)
				}
				if want := ssh.FingerprintSHA256(h.sshd.HostKey); r.PresentedKeyFingerprint != want {
					t.Errorf("PresentedKeyFingerprint = %q, want %q", r.PresentedKeyFingerprint, want)
				}
				if r.RTT <= 0 || r.Reused {
					t.Errorf("RTT = %v, Reused = %v; want a measured RTT on a new connection", r.RTT, r.Reused)
				}
			},
		},
		{
			// The ssh path: nix-store --serve --write.
			name:     "ssh-serve-ok",
			protocol: ProtocolSSH,
			want:     ReasonOK,
			verify: func(t *testing.T, _ nixLane, _ *harness, r Result) {
				if r.ProtocolVersion != "2.7" || r.NixVersion != "" || r.Trusted != TrustedUnknown {
					t.Errorf("got protocol %q nix %q trusted %v, want 2.7, none, unknown", r.ProtocolVersion, r.NixVersion, r.Trusted)
				}
			},
		},
		{
			// A Lix 2.94 laptop (render.LixVersion(2, 94, 0)
			// .MinDaemonProtocol() is 35) and the real Nix 2.8 daemon,
			// which speaks 1.34: Lix would refuse it over ssh-ng, so the
			// check does too, and says what to do.
			name:    "lix-2.94-client-old-daemon-ssh-ng",
			checker: func(c *Checker) { c.MinDaemonProtocol = 35 },
			want:    ReasonDaemonError,
			verify: func(t *testing.T, lane nixLane, _ *harness, r Result) {
				if !strings.Contains(r.Detail, lane.protocol) || !strings.Contains(r.Detail, "1.35") || !strings.Contains(r.Detail, "ssh://") {
					t.Errorf("Detail %q does not name the daemon's protocol %s, the minimum 1.35 and the ssh:// way out", r.Detail, lane.protocol)
				}
			},
		},
		{
			// The same daemon over ssh:// (nix-store --serve): Lix 2.94
			// still speaks it.
			name:     "lix-2.94-client-old-nix-ssh-serve",
			protocol: ProtocolSSH,
			checker:  func(c *Checker) { c.MinDaemonProtocol = 35 },
			want:     ReasonOK,
		},
		{
			name:         "wrong-pinned-host-key",
			wrongHostKey: true,
			want:         ReasonHostKeyMismatch,
			verify: func(t *testing.T, _ nixLane, h *harness, r Result) {
				presented := ssh.FingerprintSHA256(h.sshd.HostKey)
				pinned := ssh.FingerprintSHA256(h.target.HostKey)
				if !strings.Contains(r.Detail, presented) || !strings.Contains(r.Detail, pinned) {
					t.Errorf("Detail %q lacks presented %s or pinned %s", r.Detail, presented, pinned)
				}
				if r.PresentedKeyFingerprint != presented {
					t.Errorf("PresentedKeyFingerprint = %q, want %q", r.PresentedKeyFingerprint, presented)
				}
			},
		},
		{
			name:         "key-not-authorized",
			unauthorized: true,
			want:         ReasonAuthRefused,
		},
		{
			// Nix installed where only login shells find it: the session's
			// PATH lacks it, bash says "command not found", exit 127.
			name: "nix-not-on-path",
			user: sshdtest.User,
			env:  func(*testing.T, string) map[string]string { return map[string]string{"PATH": "/nonexistent"} },
			want: ReasonNixNotFound,
		},
		{
			name:     "nix-store-not-on-path",
			protocol: ProtocolSSH,
			user:     sshdtest.User,
			env:      func(*testing.T, string) map[string]string { return map[string]string{"PATH": "/nonexistent"} },
			want:     ReasonNixNotFound,
		},
		{
			// A multi-user builder whose nix-daemon is down: nix-daemon
			// --stdio cannot reach the daemon socket and exits.
			name: "daemon-socket-missing",
			env: func(_ *testing.T, dir string) map[string]string {
				return map[string]string{"NIX_REMOTE": "daemon", "NIX_DAEMON_SOCKET_PATH": filepath.Join(dir, "no-socket")}
			},
			want: ReasonDaemonError,
			verify: func(t *testing.T, _ nixLane, _ *harness, r Result) {
				if !strings.Contains(r.Detail, "no-socket") {
					t.Errorf("Detail %q does not quote the remote's error", r.Detail)
				}
			},
		},
		{
			// FAKE remote: sshd's ForceCommand replays what Nix 2.26's
			// daemon (announcing 1.38, negotiated down to our 1.37) says to
			// a user it does not trust: version, trusted flag 2. It pins
			// the mapping to ReasonNotTrusted over real SSH byte for byte;
			// TestCheckLanes/nix-2.26/ssh-ng-untrusted-user runs the real
			// daemon.
			name: "fake-1.38-daemon-not-trusted",
			extra: func(t *testing.T, dir string) []string {
				hello := new(wire).num(workerMagic2, 1<<8|38).str("2.26.3").num(2, stderrLast)
				f := filepath.Join(dir, "hello.bin")
				if err := os.WriteFile(f, hello.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
				return []string{"ForceCommand cat " + f + "; exec cat >/dev/null"}
			},
			want: ReasonNotTrusted,
			verify: func(t *testing.T, _ nixLane, _ *harness, r Result) {
				if r.ProtocolVersion != "1.38" || r.NixVersion != "2.26.3" || r.Trusted != TrustedNo {
					t.Errorf("got %q %q %v, want 1.38 2.26.3 not trusted", r.ProtocolVersion, r.NixVersion, r.Trusted)
				}
				if !strings.Contains(r.Detail, "trusted-users") {
					t.Errorf("Detail %q does not name the fix", r.Detail)
				}
			},
		},
		{
			// The classic pitfall: ~/.bashrc (which bash sources for sshd
			// sessions) prints text, which lands in front of the daemon's
			// answer. Real bash, real nix-daemon.
			name: "bashrc-prints-text",
			env: func(t *testing.T, dir string) map[string]string {
				rc := filepath.Join(dir, ".bashrc")
				if err := os.WriteFile(rc, []byte("echo 'Welcome to the builder'\n"), 0o644); err != nil {
					t.Fatal(err)
				}
				return map[string]string{"HOME": dir}
			},
			want: ReasonDaemonError,
			verify: func(t *testing.T, _ nixLane, _ *harness, r Result) {
				if !strings.Contains(r.Detail, "Welcome to the builder") {
					t.Errorf("Detail %q does not quote what the remote printed", r.Detail)
				}
			},
		},
		{
			// A daemon that accepts but never answers (a fake daemon
			// socket behind the real nix-daemon --stdio, which forwards to
			// it): the handshake step is cut off at Timeout.
			name: "daemon-hangs-fake-socket",
			env: func(t *testing.T, dir string) map[string]string {
				sock := filepath.Join(dir, "hung.sock")
				l, err := net.Listen("unix", sock)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { l.Close() })
				go func() {
					for {
						c, err := l.Accept()
						if err != nil {
							return
						}
						t.Cleanup(func() { c.Close() })
					}
				}()
				return map[string]string{"NIX_REMOTE": "daemon", "NIX_DAEMON_SOCKET_PATH": sock}
			},
			run: func(t *testing.T, h *harness) Result {
				h.c.Timeout = 1500 * time.Millisecond
				r := h.check(t)
				if r.Took < h.c.Timeout || r.Took > h.c.Timeout+time.Second {
					t.Errorf("took %v, want about Timeout %v", r.Took, h.c.Timeout)
				}
				return r
			},
			want: ReasonTimeout,
		},
	}...)
}

func mustOK(t *testing.T, r Result) {
	t.Helper()
	if !r.OK {
		t.Fatalf("check failed: %s: %s", r.Reason, r.Detail)
	}
}

func equalBools(a, b []bool) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestCheckRealSSHD(t *testing.T) {
	sshdtest.Require(t)
	for _, lane := range nixLanes() {
		for _, row := range healthRows() {
			t.Run(lane.name+"/"+row.name, func(t *testing.T) {
				runHealthRow(t, lane, row)
			})
		}
	}
}

func runHealthRow(t *testing.T, lane nixLane, row healthRow) {
	user := row.user
	if user == "" {
		user = "root"
	}
	if user == sshdtest.User {
		sshdtest.EnsureUser(t)
	}
	signer := sshdtest.NewSigner(t)
	opts := sshdtest.Options{Authorized: []ssh.PublicKey{signer.PublicKey()}, Users: []string{user}}
	if row.env != nil {
		opts.Env = row.env(t, t.TempDir())
	}
	if row.extra != nil {
		opts.Extra = row.extra(t, scratchDir(t))
	}
	s := lane.start(t, opts)
	// A generous step timeout: the host's Nix store is shared with other
	// tests, and its lock contention has stalled a handshake past 3 s.
	// Rows about timeouts set their own.
	c := &Checker{Signer: signer, Timeout: 10 * time.Second}
	if row.unauthorized {
		c.Signer = sshdtest.NewSigner(t)
	}
	if row.checker != nil {
		row.checker(c)
	}
	t.Cleanup(func() { _ = c.Close() })
	proto := row.protocol
	if proto == "" {
		proto = ProtocolSSHNG
	}
	h := &harness{sshd: s, c: c, target: Target{
		Key: "static:" + s.Addr, Addr: s.Addr, User: user, Protocol: proto, HostKey: s.HostKey,
	}}
	if row.wrongHostKey {
		h.target.HostKey = sshdtest.NewSigner(t).PublicKey()
	}
	run := row.run
	if run == nil {
		run = func(t *testing.T, h *harness) Result { return h.check(t) }
	}
	r := run(t, h)
	t.Logf("result: ok=%v reason=%q rtt=%v took=%v detail=%s", r.OK, r.Reason, r.RTT, r.Took, r.Detail)
	if r.Reason != row.want || r.OK != (row.want == ReasonOK) {
		t.Fatalf("got ok=%v reason %q (%s), want reason %q", r.OK, r.Reason, r.Detail, row.want)
	}
	if r.When.IsZero() || r.Took <= 0 {
		t.Errorf("When %v / Took %v not set", r.When, r.Took)
	}
	if row.verify != nil {
		row.verify(t, lane, h, r)
	}
}

func TestCheckInvalid(t *testing.T) {
	signer := sshdtest.NewSigner(t)
	ok := Target{Key: "k", Addr: "127.0.0.1:1", User: "root", Protocol: ProtocolSSHNG, HostKey: signer.PublicKey()}
	closed := &Checker{Signer: signer}
	_ = closed.Close()
	for _, tc := range []struct {
		name string
		c    *Checker
		t    Target
	}{
		{"no-signer", &Checker{}, ok},
		{"no-host-key", &Checker{Signer: signer}, Target{Key: "k", Addr: ok.Addr, User: "root", Protocol: ProtocolSSH}},
		{"no-user", &Checker{Signer: signer}, Target{Key: "k", Addr: ok.Addr, Protocol: ProtocolSSH, HostKey: ok.HostKey}},
		{"unknown-protocol", &Checker{Signer: signer}, Target{Key: "k", Addr: ok.Addr, Protocol: "ssh-ng-v2", HostKey: ok.HostKey}},
		{"closed", closed, ok},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.c.Check(context.Background(), tc.t)
			if r.OK || r.Reason != ReasonInvalid {
				t.Errorf("got %v %q (%s), want invalid", r.OK, r.Reason, r.Detail)
			}
		})
	}
}

// scratchDir is a world-readable temporary directory (t.TempDir's parent
// is 0700, and sshd sessions of other users read files from here).
func scratchDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "nixrb-health-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}
