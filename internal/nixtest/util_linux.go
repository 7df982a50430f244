package nixtest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// baseDir holds every work directory. sshd refuses key files and commands
// below a group- or world-writable directory (such as /tmp), so the tree is
// root-owned 0755 from / down.
const baseDir = "/var/lib/nixrb-nixtest"

// runCmd runs a short helper command, bounded by timeout, and returns its
// combined output. The error names the command and quotes its output.
func runCmd(ctx context.Context, timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// Pdeathsig is tied to the starting thread: keep it until Wait.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (after %v)", ctx.Err(), timeout)
		}
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, tail(string(out), 20))
	}
	return string(out), nil
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	s = strings.TrimRight(s, "\n")
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// lockFile takes an exclusive flock on path, waiting at most wait (0 means
// try once). The lock lasts until the returned file is closed or the
// process dies.
func lockFile(path string, wait time.Duration) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock: %w", err)
	}
	deadline := time.Now().Add(wait)
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("lock %s: still held by another process after %v: %w", path, wait, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var sweepOnce sync.Once

// newWorkDir creates a root-owned 0755 directory under baseDir, locked for
// as long as the test runs and removed in t.Cleanup. The first call in a
// process removes directories left by dead test processes.
func newWorkDir(t testing.TB, prefix string) string {
	t.Helper()
	if err := os.MkdirAll(baseDir, 0o755); err != nil {
		t.Fatalf("nixtest: %v", err)
	}
	if err := os.Chmod(baseDir, 0o755); err != nil {
		t.Fatalf("nixtest: %v", err)
	}
	sweepOnce.Do(sweepStale)
	dir, err := os.MkdirTemp(baseDir, prefix+"-")
	if err != nil {
		t.Fatalf("nixtest: work dir: %v", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("nixtest: %v", err)
	}
	lock, err := lockFile(filepath.Join(dir, ".lock"), 0)
	if err != nil {
		t.Fatalf("nixtest: work dir: %v", err)
	}
	t.Cleanup(func() {
		if err := removeTree(dir); err != nil {
			t.Errorf("nixtest: %v", err)
		}
		lock.Close()
	})
	return dir
}

// sweepStale removes work directories whose owning process is gone (its
// lock is free). Young directories are skipped: their creator may not have
// locked them yet.
func sweepStale() {
	entries, err := os.ReadDir(baseDir)
	if err != nil {
		return
	}
	for _, e := range entries {
		dir := filepath.Join(baseDir, e.Name())
		fi, err := os.Lstat(dir)
		if err != nil || !fi.IsDir() || time.Since(fi.ModTime()) < time.Minute {
			continue
		}
		lock, err := lockFile(filepath.Join(dir, ".lock"), 0)
		if err != nil {
			continue
		}
		_ = removeTree(dir)
		lock.Close()
	}
}

// removeTree removes dir, refusing if anything is mounted below it in this
// mount namespace (all fixture mounts live in private namespaces, so a
// mount here is a bug, and following it could delete host files).
func removeTree(dir string) error {
	mounts, err := mountsUnder(dir)
	if err != nil {
		return err
	}
	if len(mounts) > 0 {
		return fmt.Errorf("not removing %s: mounted below it: %s", dir, strings.Join(mounts, ", "))
	}
	// --one-file-system: never cross into a mount that appeared meanwhile.
	if _, err := runCmd(context.Background(), 2*time.Minute, "rm", "-rf", "--one-file-system", dir); err != nil {
		return fmt.Errorf("remove work dir: %w", err)
	}
	return nil
}

// mountsUnder lists mount points at or below dir in this mount namespace.
func mountsUnder(dir string) ([]string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	var found []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 5 {
			continue
		}
		mp := unescapeMount(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			found = append(found, mp)
		}
	}
	return found, nil
}

func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// shellQuote quotes s for sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// writeFile writes data to path with mode, failing the test on error.
func writeFile(t testing.TB, path string, data string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), mode); err != nil {
		t.Fatalf("nixtest: %v", err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatalf("nixtest: %v", err)
	}
}
