package headscaletest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Version is the headscale release the lane runs. It is the cache key: a
// new version builds a new binary beside the old one.
const Version = "v0.29.0"

// modulePath is headscale's Go module; its cmd/headscale is the server
// and the CLI in one binary.
const modulePath = "github.com/juanfont/headscale"

// BuildMax bounds one build of headscale (~5 min on 2 busy cores, module
// downloads included); LockWait is how long a second process waits for
// the build another one is running.
const (
	BuildMax = 15 * time.Minute
	LockWait = BuildMax + 2*time.Minute
)

// buildGoMod is the throwaway module headscale is built from: it requires
// headscale at exactly Version and nothing else, so that headscale's own
// go.mod (its pinned tailscale.com, sqlite, …) decides every other
// version. It never touches our go.mod. `go install ...@Version` would do
// the same, but it also asks the proxy for headscale's version list (a
// deprecation check), which the proxy here refuses.
const buildGoMod = "module nixrb-discover.internal/headscale-build\n\ngo 1.26\n\nrequire " + modulePath + " " + Version + "\n"

// CachePath returns where the built headscale binary is cached:
// os.UserCacheDir()/nixrb-discover/headscale-<Version>/headscale.
func CachePath() (string, error) {
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("headscale cache: %w", err)
	}
	return filepath.Join(dir, "nixrb-discover", "headscale-"+Version, "headscale"), nil
}

// Prepare builds headscale Version into the cache if it is not there yet
// and returns the binary's path. Parallel test processes are safe: one
// builds while the others wait on a file lock. The build runs `go build`
// in a module of its own under the cache directory, bounded by BuildMax;
// logf hears what it does.
func Prepare(ctx context.Context, logf func(format string, args ...any)) (string, error) {
	bin, err := CachePath()
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	dir := filepath.Dir(bin)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("headscale cache: %w", err)
	}
	lock, err := lockFile(filepath.Join(dir, "build.lock"), LockWait)
	if err != nil {
		return "", fmt.Errorf("headscale cache: %w", err)
	}
	defer lock.Close()
	if _, err := os.Stat(bin); err == nil {
		return bin, nil // built by another process while we waited
	}
	if err := build(ctx, dir, bin, logf); err != nil {
		return "", fmt.Errorf("headscale cache %s: %w", bin, err)
	}
	return bin, nil
}

// build compiles cmd/headscale into bin through a temporary file in dir,
// renamed into place only when the build succeeded.
func build(ctx context.Context, dir, bin string, logf func(string, ...any)) error {
	src := filepath.Join(dir, "src")
	_ = os.RemoveAll(src) // left by a dead build; we hold the lock
	if err := os.MkdirAll(src, 0o755); err != nil {
		return err
	}
	defer os.RemoveAll(src)
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte(buildGoMod), 0o644); err != nil {
		return err
	}
	goBin, err := goCommand()
	if err != nil {
		return err
	}
	tmp := bin + ".tmp"
	defer os.Remove(tmp)
	start := time.Now()
	logf("headscaletest: building headscale %s (once; cached at %s)", Version, bin)
	ctx, cancel := context.WithTimeout(ctx, BuildMax)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", tmp, modulePath+"/cmd/headscale")
	cmd.Dir = src
	cmd.Env = append(os.Environ(),
		"GOFLAGS=-mod=mod", // record headscale's requirements in the throwaway go.mod
		"GOWORK=off",
		"GOTOOLCHAIN=local",
	)
	cmd.WaitDelay = 10 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (bounded by %v)", ctx.Err(), BuildMax)
		}
		return fmt.Errorf("go build %s/cmd/headscale@%s: %w\n%s", modulePath, Version, err, tail(out.String(), 4000))
	}
	if err := os.Rename(tmp, bin); err != nil {
		return fmt.Errorf("publish binary: %w", err)
	}
	logf("headscaletest: built headscale %s in %v", Version, time.Since(start).Round(time.Second))
	return nil
}

// goCommand finds the go command: PATH, else the toolchain this test
// binary was built with.
func goCommand() (string, error) {
	if p, err := exec.LookPath("go"); err == nil {
		return p, nil
	}
	p := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(p); err != nil {
		return "", errors.New("headscale build: no go command on PATH or in GOROOT")
	}
	return p, nil
}

// lockFile takes an exclusive flock on path, waiting at most wait.
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

// tail is the last n bytes of s, cut at a line start.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[len(s)-n:]
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return "…\n" + s
}
