package discover

import (
	"context"
	"time"
)

// Probe is the cheap check between full ones: a fresh TCP connection and
// the SSH banner, nothing more. It catches exactly what stalls Nix (a dead
// or hung sshd, dropped packets) without starting a Nix process on the
// builder. OK means the banner came.
func (c *Checker) Probe(ctx context.Context, t Target) Result {
	start := time.Now()
	r, ok := c.probe(ctx, t.Addr)
	r.OK = ok
	r.When = start
	r.Took = time.Since(start)
	if ok {
		r.RTT = r.Took
	} else {
		c.Forget(t.Key)
	}
	return r
}
