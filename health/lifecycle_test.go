package health

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/internal/sshdtest"
)

// lifecycleRows are the cases about connections: reuse and refresh, a
// dead or hung sshd under a cached connection, Forget, concurrency and
// cancellation.
func lifecycleRows() []healthRow {
	return []healthRow{
		{
			// Checks after the first reuse the authenticated connection, and
			// a new one is made after RefreshChecks uses.
			name: "reuse-then-refresh",
			run: func(t *testing.T, h *harness) Result {
				h.c.RefreshChecks = 2
				var reused []bool
				var last Result
				for range 4 {
					last = h.check(t)
					if !last.OK {
						t.Fatalf("check failed: %s: %s", last.Reason, last.Detail)
					}
					reused = append(reused, last.Reused)
				}
				if want := []bool{false, true, true, false}; !equalBools(reused, want) {
					t.Errorf("Reused sequence = %v, want %v", reused, want)
				}
				return last
			},
			want: ReasonOK,
		},
		{
			// The advert's host key changes while a connection is cached:
			// the cached connection (verified against the old key) must not
			// vouch for the new one.
			name: "pinned-key-changes-with-cached-connection",
			run: func(t *testing.T, h *harness) Result {
				mustOK(t, h.check(t))
				h.target.HostKey = sshdtest.NewSigner(t).PublicKey()
				return h.check(t)
			},
			want: ReasonHostKeyMismatch,
		},
		{
			// Forget drops the cached connection: the next check is new.
			name: "forget-then-check",
			run: func(t *testing.T, h *harness) Result {
				mustOK(t, h.check(t))
				if r := h.check(t); !r.Reused {
					t.Errorf("second check did not reuse the connection")
				}
				h.c.Forget(h.target.Key)
				r := h.check(t)
				if r.Reused {
					t.Errorf("check after Forget reused a connection")
				}
				return r
			},
			want: ReasonOK,
		},
		{
			// Checks of many keys at once (and of one key twice) are safe
			// and all pass; run under -race.
			name: "concurrent-checks",
			run: func(t *testing.T, h *harness) Result {
				results := make(chan Result, 8)
				for i := range 8 {
					go func() {
						tg := h.target
						tg.Key = fmt.Sprintf("%s#%d", tg.Key, i%4)
						ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
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
			want: ReasonOK,
		},
		{
			// A cancelled context ends the check at once.
			name: "cancelled-context",
			run: func(t *testing.T, h *harness) Result {
				ctx, cancel := context.WithCancel(context.Background())
				cancel()
				return h.c.Check(ctx, h.target)
			},
			want: ReasonTimeout,
		},
		{
			// sshd dies; the cached connection (its own process) lives on,
			// but Nix's next connection is refused: so is the check, fast.
			name: "sshd-killed",
			run: func(t *testing.T, h *harness) Result {
				mustOK(t, h.check(t))
				h.sshd.Stop()
				r := h.check(t)
				if r.Took > 500*time.Millisecond {
					t.Errorf("took %v to notice a dead sshd", r.Took)
				}
				t.Logf("dead sshd detected in %v: %s", r.Took, r.Detail)
				return r
			},
			want: ReasonUnreachable,
		},
		{
			// sshd hangs before the first check: the full connection's
			// banner read is bounded by BannerTimeout too.
			name: "sshd-stopped-no-cached-connection",
			run: func(t *testing.T, h *harness) Result {
				h.sshd.Pause(t)
				defer h.sshd.Resume(t)
				r := h.check(t)
				bt := h.c.bannerTimeout()
				if r.Took < bt*9/10 || r.Took > bt+500*time.Millisecond {
					t.Errorf("took %v, want about the banner timeout %v", r.Took, bt)
				}
				return r
			},
			want: ReasonTimeout,
		},
		{
			// sshd hangs (SIGSTOP): TCP still connects (kernel backlog),
			// the cached connection still works, but no banner comes. The
			// check must say timeout within about BannerTimeout.
			name: "sshd-stopped-with-cached-connection",
			run: func(t *testing.T, h *harness) Result {
				mustOK(t, h.check(t))
				h.sshd.Pause(t)
				defer h.sshd.Resume(t)
				r := h.check(t)
				bt := h.c.bannerTimeout()
				if r.Took < bt*9/10 || r.Took > bt+500*time.Millisecond {
					t.Errorf("took %v, want about the banner timeout %v", r.Took, bt)
				}
				t.Logf("hung sshd detected in %v: %s", r.Took, r.Detail)
				h.sshd.Resume(t)
				if again := h.check(t); !again.OK {
					t.Errorf("after SIGCONT: %s: %s", again.Reason, again.Detail)
				}
				return r
			},
			want: ReasonTimeout,
		},
	}
}
