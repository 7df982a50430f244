package discover_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/internal/nixtest"
)

// buildBinary builds the real nixrb-discover into dir, as nix/package.nix
// builds the shipped one: CGO_ENABLED=0, a static binary (no libc mapped,
// about 2 MiB less RSS than a cgo build). NIXRB_BENCH_CGO=1 builds with
// the toolchain's default instead.
func buildBinary(tb testing.TB, dir string) string {
	tb.Helper()
	bin := filepath.Join(dir, "nixrb-discover")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/nixrb-discover/nixrb-discover/cmd/nixrb-discover")
	if os.Getenv("NIXRB_BENCH_CGO") != "1" {
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		tb.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// cpuTicks reads utime+stime of pid (clock ticks) and its RSS in KiB.
func cpuTicks(tb testing.TB, pid int) (ticks int64, rssKiB int64) {
	tb.Helper()
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		tb.Fatal(err)
	}
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			rssKiB, _ = strconv.ParseInt(strings.Fields(l)[1], 10, 64)
		}
	}
	return ut + st, rssKiB
}

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
	bin := buildBinary(b, dir)
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
	os.WriteFile(static, []byte(strings.Join(lines, "\n")+"\n"), 0o644)
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
	t0, _ := cpuTicks(b, cmd.Process.Pid)
	b.ResetTimer()
	time.Sleep(measure)
	b.StopTimer()
	t1, rss := cpuTicks(b, cmd.Process.Pid)
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
