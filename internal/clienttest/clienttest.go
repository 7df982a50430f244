// Package clienttest holds what tests and benchmarks of the client share:
// building the real binary, waiting on its machines file, reading a
// process's CPU time and memory from /proc, summarising latencies, and a
// log buffer safe for concurrent writers. One copy of each, so that every
// benchmark measures the same way.
package clienttest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// BuildBinary builds the real nixrb-discover into dir, as nix/package.nix
// builds the shipped one: CGO_ENABLED=0, a static binary (no libc mapped,
// about 2 MiB less RSS than a cgo build). NIXRB_BENCH_CGO=1 builds with
// the toolchain's default instead.
func BuildBinary(tb testing.TB, dir string) string {
	tb.Helper()
	bin := filepath.Join(dir, "nixrb-discover")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/nixrb-discover/nixrb-discover/cmd/nixrb-discover")
	if os.Getenv("NIXRB_BENCH_CGO") != "1" {
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// CPUTicks reads utime+stime of pid (clock ticks) and its RSS in KiB.
func CPUTicks(tb testing.TB, pid int) (ticks, rssKiB int64) {
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

// Quantiles returns the median and the 95th percentile of ds (zero for
// none); ds is not changed.
func Quantiles(ds []time.Duration) (p50, p95 time.Duration) {
	if len(ds) == 0 {
		return 0, 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2], s[min(len(s)-1, len(s)*95/100)]
}

// WaitFile polls the file at path until ok says yes, for at most 30 s,
// and returns its content and how long that took; what names the awaited
// state in the failure message.
func WaitFile(tb testing.TB, path string, what string, ok func(string) bool) (string, time.Duration) {
	tb.Helper()
	start := time.Now()
	deadline := start.Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(path)
		if ok(string(b)) {
			return string(b), time.Since(start)
		}
		if time.Now().After(deadline) {
			tb.Fatalf("machines file never %s; it holds:\n%s", what, b)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Contains is a WaitFile condition: the file contains s.
func Contains(s string) func(string) bool {
	return func(f string) bool { return strings.Contains(f, s) }
}

// NotContains is a WaitFile condition: the file does not contain s.
func NotContains(s string) func(string) bool {
	return func(f string) bool { return !strings.Contains(f, s) }
}

// WriteFile writes a test fixture and fails tb if it cannot.
func WriteFile(tb testing.TB, path, content string) {
	tb.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		tb.Fatalf("write %s: %v", path, err)
	}
}

// SyncBuffer is a bytes.Buffer safe for a logger's and a test's
// goroutines.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
