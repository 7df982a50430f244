//go:build linux

package discover_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/internal/clienttest"
	"github.com/nixrb-discover/nixrb-discover/internal/nixtest"
)

// BenchmarkClientIdle runs the real client binary, as a process of its
// own, against 10 healthy builders (real sshd + nix-daemon, health-gated
// static entries) and reports its CPU share and RSS once it has settled,
// plus how often it rewrote the machines file at steady state (goal 0).
//
//	go test -run '^$' -bench BenchmarkClientIdle -benchtime 1x ./discover
func BenchmarkClientIdle(b *testing.B) {
	nixtest.RequireTools(b)
	const builders = 10
	dir := nixtest.WorkDir(b, "idle")
	bin := clienttest.BuildBinary(b, dir)
	keyPath := filepath.Join(dir, "id_ed25519")
	if out, err := exec.Command(bin, "client", "--once", "--tailnet=false", "--static", "/dev/null", "--ssh-key", keyPath, "--machines", filepath.Join(dir, "probe")).CombinedOutput(); err != nil {
		b.Fatalf("create key: %v\n%s", err, out)
	}
	pub, _ := os.ReadFile(keyPath + ".pub")
	var lines []string
	for i := range builders {
		nb := nixtest.StartBuilder(b, nixtest.BuilderOptions{Version: nixtest.V28, Hostname: fmt.Sprintf("idle%d", i), AuthorizedKeys: []string{strings.TrimSpace(string(pub))}})
		lines = append(lines, nb.MachineLine("ssh-ng", keyPath))
	}
	static := filepath.Join(dir, "static")
	if err := os.WriteFile(static, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	machines := filepath.Join(dir, "machines")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "client", "--tailnet=false", "--static", static, "--check-static",
		"--ssh-key", keyPath, "--machines", machines, "--socket", filepath.Join(dir, "sock"), "--log-level", "info")
	cmd.Args = append(cmd.Args, strings.Fields(os.Getenv("IDLE_CLIENT_ARGS"))...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { cancel(); cmd.Wait() }()
	settle, measure := 15*time.Second, 60*time.Second
	if testing.Short() {
		settle, measure = 5*time.Second, 15*time.Second
	}
	time.Sleep(settle)
	fi, err := os.Stat(machines)
	if err != nil {
		b.Fatalf("client wrote no machines file: %v", err)
	}
	t0, _ := clienttest.CPUTicks(b, cmd.Process.Pid)
	b.ResetTimer()
	time.Sleep(measure)
	b.StopTimer()
	t1, rss := clienttest.CPUTicks(b, cmd.Process.Pid)
	fi2, _ := os.Stat(machines)
	rewrites := 0.0
	if !fi2.ModTime().Equal(fi.ModTime()) {
		rewrites = 1
	}
	const hz = 100 // USER_HZ on Linux
	cpu := float64(t1-t0) / hz / measure.Seconds() * 100
	b.ReportMetric(cpu, "cpu%")
	b.ReportMetric(float64(rss)/1024, "rss-MiB")
	b.ReportMetric(rewrites, "rewrites")
	b.Logf("idle client, %d builders, %v: CPU %.3f%% of one core, RSS %.1f MiB, rewrites at steady state: %v", builders, measure, cpu, float64(rss)/1024, rewrites)
}
