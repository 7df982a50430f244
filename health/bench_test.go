package health

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/internal/sshdtest"
	"golang.org/x/crypto/ssh"
)

// BenchmarkCheck compares a check on a reused authenticated connection
// (banner probe + keepalive + Nix handshake in a new session) with one
// that makes a new connection every time (banner probe + TCP + SSH key
// exchange + auth + the same Nix handshake), against a real sshd and the
// host's nix-daemon. It reports the median as median-ms.
func BenchmarkCheck(b *testing.B) {
	for _, bc := range []struct {
		name    string
		refresh int
	}{
		{"reused", 1 << 30},
		{"fresh", -1},
	} {
		b.Run(bc.name, func(b *testing.B) {
			signer := sshdtest.NewSigner(b)
			s := sshdtest.Start(b, sshdtest.Options{Authorized: []ssh.PublicKey{signer.PublicKey()}})
			c := &Checker{Signer: signer, RefreshChecks: bc.refresh, Timeout: 10 * time.Second}
			b.Cleanup(func() { _ = c.Close() })
			tg := Target{Key: "bench", Addr: s.Addr, User: "root", Protocol: ProtocolSSHNG, HostKey: s.HostKey}
			ctx := context.Background()
			if r := c.Check(ctx, tg); !r.OK { // warm: the reused case starts with a connection
				b.Fatalf("%s: %s", r.Reason, r.Detail)
			}
			var took []time.Duration
			retried := 0
			b.ResetTimer()
			for b.Loop() {
				r := c.Check(ctx, tg)
				if !r.OK {
					b.Fatalf("%s: %s", r.Reason, r.Detail)
				}
				if r.Reused != (bc.refresh > 0) {
					retried++ // a stalled handshake on the reused connection, redone afresh
				}
				took = append(took, r.Took)
			}
			slices.Sort(took)
			b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "median-ms")
			b.ReportMetric(float64(retried), "retried")
		})
	}
}
