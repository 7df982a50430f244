//go:build linux

package e2e

import (
	"fmt"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"
)

// BenchmarkFlappingBuilderRewrites: the file rewrites an hour of builders
// flapping costs (goal 0). Three builder hosts and the laptop's client as
// in TestBuildFleet; every period (NIXRB_FLAP_PERIOD, default 1m) each
// builder goes down for a third of it and comes back, each time in
// another of four ways (sshd killed, sshd hung, link down, agent
// restarted: SIGTERM, started again), for NIXRB_FLAP_WINDOW (default 10m;
// 1h for the figure). Every flap is confirmed seen (all the
// builder's slots held, then released) so that a quiet file means the
// client rode through it, not that it missed it. The machines file is
// polled every 20 ms; each change (inode, mtime or bytes) is a rewrite.
//
//	go test -run '^$' -bench BenchmarkFlappingBuilderRewrites -benchtime 1x -timeout 30m ./e2e
func BenchmarkFlappingBuilderRewrites(b *testing.B) {
	period, window := envDuration(b, "NIXRB_FLAP_PERIOD", time.Minute), envDuration(b, "NIXRB_FLAP_WINDOW", 10*time.Minute)
	f := newFleet(b)
	f.startClient(b)
	for _, fb := range f.builders {
		f.startAgent(b, fb)
	}
	for _, fb := range f.builders {
		waitFor(b, joinWithin, fb.name+" in use", f.inUse(fb))
	}
	for b.Loop() {
		before, err := snapFile(f.machines)
		if err != nil {
			b.Fatal(err)
		}
		stop := make(chan struct{})
		var rewrites int
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			last := before
			for {
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
				if s, err := snapFile(f.machines); err == nil && !s.same(last) {
					rewrites++
					last = s
				}
			}
		}()
		start, flaps := time.Now(), map[string]int{}
		for cycle := 0; time.Since(start) < window; cycle++ {
			cycleStart := time.Now()
			var repairs []func()
			for j, fb := range f.builders {
				kind, down, up := f.flap(b, fb, (cycle+j)%4)
				down()
				flaps[kind]++
				repairs = append(repairs, up)
			}
			for _, fb := range f.builders {
				waitFor(b, leaveWithin, fmt.Sprintf("cycle %d: %s out of use", cycle, fb.name), f.outOfUse(fb))
			}
			time.Sleep(time.Until(cycleStart.Add(period / 3)))
			for _, up := range repairs {
				up()
			}
			for _, fb := range f.builders {
				waitFor(b, joinWithin, fmt.Sprintf("cycle %d: %s back in use", cycle, fb.name), f.inUse(fb))
			}
			time.Sleep(time.Until(cycleStart.Add(period)))
		}
		took := time.Since(start)
		close(stop)
		wg.Wait()
		n := 0
		for _, c := range flaps {
			n += c
		}
		b.Logf("%d flaps (%v) of %d builders every %v over %v: %d machines-file rewrites (%.1f per hour)",
			n, flaps, len(f.builders), period, took.Round(time.Second), rewrites, float64(rewrites)/took.Hours())
		b.ReportMetric(float64(rewrites)/took.Hours(), "rewrites/h")
		b.ReportMetric(float64(n), "flaps")
	}
}

// flap is the kind'th way (of 4) of taking fb down and bringing it back.
func (f *fleet) flap(b *testing.B, fb *fleetBuilder, kind int) (name string, down, up func()) {
	must := func(what string, err error) {
		if err != nil {
			b.Fatalf("%s %s: %v", fb.name, what, err)
		}
	}
	switch kind {
	case 0:
		return "sshd-killed", func() { must("kill sshd", fb.nix.KillSSHD()) }, func() { must("restart sshd", fb.nix.RestartSSHD()) }
	case 1:
		return "sshd-hung", func() { must("stop sshd", fb.nix.StopSSHD()) }, func() { must("continue sshd", fb.nix.ContSSHD()) }
	case 2:
		return "link-down", func() { must("link down", fb.host.LinkDown()) }, func() { must("link up", fb.host.LinkUp()) }
	default:
		return "agent-restarted", func() {
				must("stop the agent", fb.agent.Process.Signal(syscall.SIGTERM))
				// netnstest reaps it: only /proc says it has exited.
				for deadline := time.Now().Add(10 * time.Second); running(fb.agent.Process.Pid); {
					if time.Now().After(deadline) {
						b.Fatalf("%s's agent still running 10 s after SIGTERM", fb.name)
					}
					time.Sleep(10 * time.Millisecond)
				}
			}, func() {
				f.startAgent(b, fb)
			}
	}
}

// envDuration is the duration in environment variable name, or def.
func envDuration(t testing.TB, name string, def time.Duration) time.Duration {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		t.Fatalf("%s=%q: want a positive duration like 10m", name, v)
	}
	return d
}
