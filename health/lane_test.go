//go:build linux

package health

import (
	"context"
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nixrb-discover/nixrb-discover/internal/nixtest"
	"github.com/nixrb-discover/nixrb-discover/internal/sshdtest"
)

// laneSpec is what a real Nix builder of one lane says in the handshake.
type laneSpec struct {
	version    nixtest.Version
	nixVersion *regexp.Regexp // the daemon's Nix version
	protocol   string         // worker protocol the daemon announces
	// trusted is the daemon's answer for a user in trusted-users:
	// unknown before protocol 1.35 (the flag does not exist), never a
	// guessed "trusted".
	trusted Trusted
	// untrusted is the daemon's answer, and untrustedWant the verdict,
	// for a user missing from trusted-users.
	untrusted     Trusted
	untrustedWant Reason
}

func laneSpecs() []laneSpec {
	return []laneSpec{
		{
			version:    nixtest.V28,
			nixVersion: regexp.MustCompile(`^2\.8\.0$`),
			protocol:   "1.34",
			trusted:    TrustedUnknown,
			// Nix 2.8 will refuse to build for this user ("you are not
			// privileged to build input-addressed derivations"), but its
			// handshake cannot say so: the check must not claim either way.
			untrusted:     TrustedUnknown,
			untrustedWant: ReasonOK,
		},
		{
			version:       nixtest.V226,
			nixVersion:    regexp.MustCompile(`^2\.26\.\d+$`),
			protocol:      "1.38",
			trusted:       TrustedYes,
			untrusted:     TrustedNo,
			untrustedWant: ReasonNotTrusted,
		},
	}
}

// laneUser is the non-root SSH user of the lane builders: the daemon's
// trusted-users decides about it (root is always trusted).
const laneUser = "nixtest"

// laneHarness is one row's world: a namespace builder of the lane (sshd
// and nix-daemon of that Nix), a Checker with the key it authorizes, and
// the Target as a client would build it.
type laneHarness struct {
	b      *nixtest.Builder
	c      *Checker
	target Target
}

func (h *laneHarness) check(t *testing.T) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return h.c.Check(ctx, h.target)
}

type laneRow struct {
	name      string
	protocol  string // default ssh-ng
	user      string // default laneUser
	untrusted bool   // the user is not in the builder's trusted-users
	// untrustedBuilds is Checker.UntrustedBuilds: the local Nix (2.26
	// and later) builds as an untrusted user.
	untrustedBuilds bool
	wrongHostKey    bool // the Target pins another key
	// run drives the scenario and returns the Result under test; nil
	// means one Check.
	run    func(t *testing.T, h *laneHarness) Result
	want   func(l laneSpec) Reason
	verify func(t *testing.T, l laneSpec, h *laneHarness, r Result)
}

func wantReason(r Reason) func(laneSpec) Reason { return func(laneSpec) Reason { return r } }

// checkTook fails t unless r took about the banner timeout: a hung sshd
// is noticed that fast, not after the step timeout.
func checkTook(t *testing.T, h *laneHarness, r Result) {
	t.Helper()
	bt := h.c.bannerTimeout()
	if r.Took < bt*9/10 || r.Took > bt+500*time.Millisecond {
		t.Errorf("took %v, want about the banner timeout %v", r.Took, bt)
	}
}

func laneRows() []laneRow {
	return []laneRow{
		{
			// ssh-ng to a user in trusted-users: the daemon's version,
			// protocol and (from 1.35) its "trusted" answer.
			name: "ssh-ng-trusted-user",
			want: wantReason(ReasonOK),
			verify: func(t *testing.T, l laneSpec, h *laneHarness, r Result) {
				if r.ProtocolVersion != l.protocol || !l.nixVersion.MatchString(r.NixVersion) {
					t.Errorf("got protocol %q nix %q, want %q %v", r.ProtocolVersion, r.NixVersion, l.protocol, l.nixVersion)
				}
				if r.Trusted != l.trusted {
					t.Errorf("Trusted = %v, want %v", r.Trusted, l.trusted)
				}
				if want := ssh.FingerprintSHA256(h.target.HostKey); r.PresentedKeyFingerprint != want {
					t.Errorf("PresentedKeyFingerprint = %q, want %q", r.PresentedKeyFingerprint, want)
				}
				if r.RTT <= 0 || r.Reused {
					t.Errorf("RTT = %v, Reused = %v; want a measured RTT on a new connection", r.RTT, r.Reused)
				}
			},
		},
		{
			// root, always trusted by Nix: the same answers as for a user
			// in trusted-users (2.26's nix-daemon --stdio serves root from
			// the store itself, others through the daemon's socket).
			name: "ssh-ng-root",
			user: "root",
			want: wantReason(ReasonOK),
			verify: func(t *testing.T, l laneSpec, _ *laneHarness, r Result) {
				if r.ProtocolVersion != l.protocol || !l.nixVersion.MatchString(r.NixVersion) || r.Trusted != l.trusted {
					t.Errorf("got protocol %q nix %q trusted %v, want %q %v %v", r.ProtocolVersion, r.NixVersion, r.Trusted, l.protocol, l.nixVersion, l.trusted)
				}
			},
		},
		{
			// ssh: nix-store --serve --write speaks serve protocol 2.7 on
			// both Nix versions, with neither a Nix version nor trust.
			name:     "ssh-serve",
			protocol: ProtocolSSH,
			want:     wantReason(ReasonOK),
			verify: func(t *testing.T, _ laneSpec, _ *laneHarness, r Result) {
				if r.ProtocolVersion != "2.7" || r.NixVersion != "" || r.Trusted != TrustedUnknown {
					t.Errorf("got protocol %q nix %q trusted %v, want 2.7, none, unknown", r.ProtocolVersion, r.NixVersion, r.Trusted)
				}
			},
		},
		{
			// A real user missing from the builder's trusted-users: Nix
			// 2.26 says "not trusted" (1.38 handshake, read at 1.37), Nix
			// 2.8 cannot say (1.34): unknown, not a false "trusted".
			name:      "ssh-ng-untrusted-user",
			untrusted: true,
			want:      func(l laneSpec) Reason { return l.untrustedWant },
			verify: func(t *testing.T, l laneSpec, h *laneHarness, r Result) {
				if r.Trusted != l.untrusted {
					t.Errorf("Trusted = %v, want %v", r.Trusted, l.untrusted)
				}
				if r.ProtocolVersion != l.protocol || !l.nixVersion.MatchString(r.NixVersion) {
					t.Errorf("got protocol %q nix %q, want %q %v", r.ProtocolVersion, r.NixVersion, l.protocol, l.nixVersion)
				}
				if r.Reason == ReasonNotTrusted {
					if !strings.Contains(r.Detail, "trusted-users") || !strings.Contains(r.Detail, strconv.Quote(laneUser)) {
						t.Errorf("Detail %q does not name the user and trusted-users", r.Detail)
					}
					// A failed check keeps no connection: the next one
					// asks the daemon afresh and gets the same answer.
					if again := h.check(t); again.Reason != ReasonNotTrusted || again.Reused {
						t.Errorf("second check: %q reused=%v, want not trusted on a new connection", again.Reason, again.Reused)
					}
				}
			},
		},
		{
			// The same user, for a local Nix that builds as an untrusted
			// user (Checker.UntrustedBuilds): the checker alone decides it
			// is healthy, says it is not trusted, and keeps the connection.
			name:            "ssh-ng-untrusted-user-local-nix-builds-untrusted",
			untrusted:       true,
			untrustedBuilds: true,
			want:            wantReason(ReasonOK),
			verify: func(t *testing.T, l laneSpec, h *laneHarness, r Result) {
				if r.Trusted != l.untrusted {
					t.Errorf("Trusted = %v, want %v", r.Trusted, l.untrusted)
				}
				if again := h.check(t); again.Reason != ReasonOK || !again.Reused || again.Trusted != l.untrusted {
					t.Errorf("second check: %q reused=%v trusted=%v, want OK on the kept connection, trusted %v", again.Reason, again.Reused, again.Trusted, l.untrusted)
				}
			},
		},
		{
			name:         "wrong-pinned-host-key",
			wrongHostKey: true,
			want:         wantReason(ReasonHostKeyMismatch),
			verify: func(t *testing.T, _ laneSpec, h *laneHarness, r Result) {
				presented := ssh.FingerprintSHA256(parseHostKey(t, h.b.HostKey()))
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
			// Later checks keep the daemon's answers while they reuse the
			// authenticated connection (keepalive and a new session on
			// it), and a new connection follows after RefreshChecks.
			name: "reuse-then-refresh",
			run: func(t *testing.T, h *laneHarness) Result {
				h.c.RefreshChecks = 2
				var reused []bool
				var last Result
				for range 4 {
					last = h.check(t)
					mustOK(t, last)
					reused = append(reused, last.Reused)
				}
				if want := []bool{false, true, true, false}; !equalBools(reused, want) {
					t.Errorf("Reused sequence = %v, want %v", reused, want)
				}
				return last
			},
			want: wantReason(ReasonOK),
			verify: func(t *testing.T, l laneSpec, _ *laneHarness, r Result) {
				if r.ProtocolVersion != l.protocol || r.Trusted != l.trusted {
					t.Errorf("got protocol %q trusted %v, want %q %v", r.ProtocolVersion, r.Trusted, l.protocol, l.trusted)
				}
			},
		},
		{
			// Checks of several keys at once (two per key) on one builder;
			// run under -race.
			name: "concurrent-checks",
			run: func(t *testing.T, h *laneHarness) Result {
				// One check first: on a brand-new store, Nix 2.8's daemon
				// workers race to create /nix/var/nix/gcroots/profiles,
				// and the loser ends the connection ("creating symlink
				// ... File exists"). A real builder's store is not new.
				mustOK(t, h.check(t))
				h.c.Forget(h.target.Key)
				results := make(chan Result, 8)
				for i := range 8 {
					go func() {
						tg := h.target
						tg.Key = tg.Key + "#" + strconv.Itoa(i%4)
						ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
						defer cancel()
						results <- h.c.Check(ctx, tg)
					}()
				}
				var last Result
				for range 8 {
					last = <-results
					if !last.OK {
						t.Errorf("concurrent check: %s: %s", last.Reason, last.Detail)
					}
				}
				return last
			},
			want: wantReason(ReasonOK),
		},
		{
			// The listening sshd dies under a cached connection (whose
			// session process lives on): Nix's next connection is refused,
			// and so is the check, at once.
			name: "sshd-killed",
			run: func(t *testing.T, h *laneHarness) Result {
				mustOK(t, h.check(t))
				if err := h.b.KillSSHD(); err != nil {
					t.Fatal(err)
				}
				r := h.check(t)
				if r.Took > 500*time.Millisecond {
					t.Errorf("took %v to notice a dead sshd", r.Took)
				}
				return r
			},
			want: wantReason(ReasonUnreachable),
		},
		{
			// sshd hangs (SIGSTOP) before the first check: the kernel
			// accepts TCP, no banner comes; the full connection's banner
			// read is bounded by BannerTimeout.
			name: "sshd-stopped-no-cached-connection",
			run: func(t *testing.T, h *laneHarness) Result {
				if err := h.b.StopSSHD(); err != nil {
					t.Fatal(err)
				}
				defer func() { _ = h.b.ContSSHD() }()
				r := h.check(t)
				checkTook(t, h, r)
				return r
			},
			want: wantReason(ReasonTimeout),
		},
		{
			// sshd hangs while a connection is cached (and still works):
			// the probe's banner read notices within BannerTimeout, and
			// the builder is healthy again once sshd continues.
			name: "sshd-stopped-with-cached-connection",
			run: func(t *testing.T, h *laneHarness) Result {
				mustOK(t, h.check(t))
				if err := h.b.StopSSHD(); err != nil {
					t.Fatal(err)
				}
				r := h.check(t)
				checkTook(t, h, r)
				if err := h.b.ContSSHD(); err != nil {
					t.Fatal(err)
				}
				if again := h.check(t); !again.OK {
					t.Errorf("after SIGCONT: %s: %s", again.Reason, again.Detail)
				}
				return r
			},
			want: wantReason(ReasonTimeout),
		},
	}
}

// TestCheckLanes runs the health check against real builders of every
// Nix lane (nixtest: Nix 2.8 from the host, Nix 2.26 with OpenSSH 10 from
// the trixie chroot), each row on a builder of its own.
func TestCheckLanes(t *testing.T) {
	nixtest.RequireTools(t)
	start := time.Now()
	nixtest.EnsureTrixie(t) // one chroot for every 2.26 subtest
	t.Logf("trixie chroot ready in %v", time.Since(start).Round(time.Millisecond))
	for _, l := range laneSpecs() {
		t.Run(l.version.String(), func(t *testing.T) {
			for _, row := range laneRows() {
				t.Run(row.name, func(t *testing.T) {
					runLaneRow(t, l, row)
				})
			}
		})
	}
}

func runLaneRow(t *testing.T, l laneSpec, row laneRow) {
	signer := sshdtest.NewSigner(t)
	user := row.user
	if user == "" {
		user = laneUser
	}
	opts := nixtest.BuilderOptions{
		Version:        l.version,
		SSHUser:        user,
		AuthorizedKeys: []string{strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))},
	}
	if row.untrusted {
		opts.TrustedUsers = []string{"root"}
	}
	start := time.Now()
	b := nixtest.StartBuilder(t, opts)
	t.Logf("builder %s (%s) started in %v", b.Hostname, b.Version, time.Since(start).Round(time.Millisecond))
	// A generous step timeout: builders share two cores with other tests.
	// Rows about timeouts rely on BannerTimeout, which stays the default.
	c := &Checker{Signer: signer, Timeout: 10 * time.Second, UntrustedBuilds: row.untrustedBuilds}
	t.Cleanup(func() { _ = c.Close() })
	proto := row.protocol
	if proto == "" {
		proto = ProtocolSSHNG
	}
	addr := net.JoinHostPort(b.Addr.String(), strconv.Itoa(b.Port))
	h := &laneHarness{b: b, c: c, target: Target{
		Key: "static:" + addr, Addr: addr, User: b.User, Protocol: proto, HostKey: parseHostKey(t, b.HostKey()),
	}}
	if row.wrongHostKey {
		h.target.HostKey = sshdtest.NewSigner(t).PublicKey()
	}
	run := row.run
	if run == nil {
		run = func(t *testing.T, h *laneHarness) Result { return h.check(t) }
	}
	r := run(t, h)
	t.Logf("result: ok=%v reason=%q protocol=%s nix=%s trusted=%v rtt=%v took=%v detail=%s",
		r.OK, r.Reason, r.ProtocolVersion, r.NixVersion, r.Trusted, r.RTT, r.Took, r.Detail)
	want := row.want(l)
	if r.Reason != want || r.OK != (want == ReasonOK) {
		t.Fatalf("got ok=%v reason %q (%s), want reason %q", r.OK, r.Reason, r.Detail, want)
	}
	if r.When.IsZero() || r.Took <= 0 {
		t.Errorf("When %v / Took %v not set", r.When, r.Took)
	}
	if row.verify != nil {
		row.verify(t, l, h, r)
	}
}

// parseHostKey parses an authorized_keys style public key line.
func parseHostKey(t *testing.T, line string) ssh.PublicKey {
	t.Helper()
	k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		t.Fatalf("host key %q: %v", line, err)
	}
	return k
}
