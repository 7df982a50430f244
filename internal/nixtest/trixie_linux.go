package nixtest

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The trixie chroot recipe. Any change here changes the cache key.
const (
	trixieSuite    = "trixie"
	trixieVariant  = "minbase"
	trixieInclude  = "nix-bin,libdbi-perl,openssh-server,openssh-client" // libdbi-perl: else configure fails on a virtual package
	trixieFormat   = "nixtest-trixie-v1"                                 // bump when the post-processing below changes
	trixieBuildMax = 10 * time.Minute
	trixieLockWait = trixieBuildMax + 2*time.Minute
	defaultMirror  = "http://deb.debian.org/debian"
)

// trixieNixConf is the chroot's default /etc/nix/nix.conf; builders and
// clients bind their own over /etc/nix.
const trixieNixConf = "sandbox = false\nsubstituters =\nbuild-users-group =\n"

// TrixieCacheKey identifies the cached chroot tarball: it hashes the suite,
// variant, package set and post-processing version.
func TrixieCacheKey() string {
	sum := sha256.Sum256([]byte(strings.Join([]string{trixieSuite, trixieVariant, trixieInclude, trixieFormat}, "|")))
	return hex.EncodeToString(sum[:])[:12]
}

// TrixieCachePath returns where the trixie tarball is cached:
// os.UserCacheDir()/nixrb-discover/trixie-<key>.tar.zst.
func TrixieCachePath() (string, error) {
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("trixie cache: %w", err)
	}
	return filepath.Join(dir, "nixrb-discover", "trixie-"+TrixieCacheKey()+".tar.zst"), nil
}

// DebianMirror returns the Debian archive URL this machine's apt sources
// use (deb822 "URIs:" or one-line "deb" entries in /etc/apt/sources.list
// and sources.list.d), or http://deb.debian.org/debian if none is found.
// NIXTEST_DEBIAN_MIRROR overrides it.
func DebianMirror() string {
	if m := os.Getenv("NIXTEST_DEBIAN_MIRROR"); m != "" {
		return m
	}
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*")
	files = append([]string{"/etc/apt/sources.list"}, files...)
	for _, f := range files {
		if m := mirrorFrom(f); m != "" {
			return m
		}
	}
	return defaultMirror
}

// mirrorFrom returns the first Debian main-archive URI in an apt sources
// file (not the security archive, not a third-party repository).
func mirrorFrom(path string) string {
	fh, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		var uris []string
		switch {
		case len(f) >= 2 && f[0] == "URIs:":
			uris = f[1:]
		case len(f) >= 3 && f[0] == "deb":
			uri := f[1]
			if strings.HasPrefix(uri, "[") { // deb [options] uri suite
				for i := 1; i < len(f); i++ {
					if strings.HasSuffix(f[i], "]") && i+1 < len(f) {
						uri = f[i+1]
						break
					}
				}
			}
			uris = []string{uri}
		}
		for _, u := range uris {
			u = strings.TrimSuffix(u, "/")
			if strings.HasSuffix(u, "/debian") && (strings.HasPrefix(u, "http://") || strings.HasPrefix(u, "https://")) {
				return u
			}
		}
	}
	return ""
}

// PrepareTrixieCache builds the trixie chroot tarball if it is not cached
// yet and returns its path. It is safe to call from parallel test
// processes: one builds while the others wait on a file lock. Building runs
// debootstrap (~45 s) bounded by 10 minutes.
func PrepareTrixieCache(ctx context.Context, logf func(format string, args ...any)) (string, error) {
	tarball, err := TrixieCachePath()
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(tarball); err == nil {
		return tarball, nil
	}
	dir := filepath.Dir(tarball)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("trixie cache: %w", err)
	}
	lock, err := lockFile(strings.TrimSuffix(tarball, ".tar.zst")+".lock", trixieLockWait)
	if err != nil {
		return "", fmt.Errorf("trixie cache: %w", err)
	}
	defer lock.Close()
	if _, err := os.Stat(tarball); err == nil {
		return tarball, nil // built by another process while we waited
	}
	// We hold the lock: any build directory left here is from a dead run.
	stale, _ := filepath.Glob(filepath.Join(dir, "trixie-build-*"))
	for _, s := range stale {
		_ = removeTree(s)
	}
	build, err := os.MkdirTemp(dir, "trixie-build-")
	if err != nil {
		return "", fmt.Errorf("trixie cache: %w", err)
	}
	defer removeTree(build)
	if err := buildTrixie(ctx, build, tarball, logf); err != nil {
		return "", fmt.Errorf("trixie cache %s: %w", tarball, err)
	}
	return tarball, nil
}

func buildTrixie(ctx context.Context, build, tarball string, logf func(string, ...any)) error {
	root := filepath.Join(build, "root")
	mirror := DebianMirror()
	start := time.Now()
	logf("nixtest: debootstrap %s %s from %s (once; cached at %s)", trixieSuite, trixieInclude, mirror, tarball)
	// debootstrap mounts /proc and /sys in the target: run it in a private
	// mount and PID namespace so nothing outlives it, even when killed.
	_, err := runCmd(ctx, trixieBuildMax, "unshare", "--mount", "--propagation", "private",
		"--pid", "--fork", "--kill-child",
		"debootstrap", "--variant="+trixieVariant, "--include="+trixieInclude,
		trixieSuite, root, mirror)
	if err != nil {
		return fmt.Errorf("debootstrap (bounded by %v): %w", trixieBuildMax, err)
	}
	if _, err := runCmd(ctx, 2*time.Minute, "chroot", root, "apt-get", "clean"); err != nil {
		return err
	}
	logf("nixtest: debootstrap took %v", time.Since(start).Round(time.Millisecond))
	lists, _ := filepath.Glob(filepath.Join(root, "var/lib/apt/lists/*_*"))
	for _, l := range lists {
		_ = os.Remove(l)
	}
	for _, d := range []string{"nix", "nixtest", "etc/nix"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(root, "etc/nix/nix.conf"), []byte(trixieNixConf), 0o644); err != nil {
		return err
	}
	tmp := tarball + ".tmp"
	tarStart := time.Now()
	if _, err := runCmd(ctx, 5*time.Minute, "tar", "--zstd", "--numeric-owner", "-cf", tmp, "-C", root, "."); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := syncFile(tmp); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, tarball); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("publish tarball: %w", err)
	}
	logf("nixtest: tarball written in %v", time.Since(tarStart).Round(time.Millisecond))
	return nil
}

func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", path, err)
	}
	return nil
}

// trixie is this process's unpacked chroot, shared by every test that
// holds a reference and removed when the last one finishes.
var trixie struct {
	mu   sync.Mutex
	refs int
	root string
	done func()
}

// EnsureTrixie returns the root of an unpacked Debian trixie chroot with
// Nix 2.26 and OpenSSH, valid until t finishes. The first use in a process
// unpacks the cached tarball (building it first if needed, see
// [PrepareTrixieCache]) into a root-owned directory under
// /var/lib/nixrb-nixtest; tests running at the same time share it, and the
// last one to finish removes it. Callers must not modify the tree outside
// their own mount namespaces: builders and clients bind their own /nix and
// /etc/nix over it.
func EnsureTrixie(t testing.TB) string {
	t.Helper()
	RequireTools(t)
	trixie.mu.Lock()
	defer trixie.mu.Unlock()
	if trixie.refs == 0 {
		root, done, err := unpackTrixie(t)
		if err != nil {
			t.Fatalf("nixtest: %v", err)
		}
		trixie.root, trixie.done = root, done
	}
	trixie.refs++
	t.Cleanup(func() {
		trixie.mu.Lock()
		defer trixie.mu.Unlock()
		trixie.refs--
		if trixie.refs == 0 {
			trixie.done()
			trixie.root, trixie.done = "", nil
		}
	})
	return trixie.root
}

// unpackTrixie unpacks the cached tarball and returns the root and a
// function that removes it. It cannot use newWorkDir: the tree outlives the
// test that unpacked it when others share it.
func unpackTrixie(t testing.TB) (root string, done func(), err error) {
	ctx := context.Background()
	tarball, err := PrepareTrixieCache(ctx, t.Logf)
	if err != nil {
		return "", nil, err
	}
	if err := os.MkdirAll(baseDir, 0o755); err != nil {
		return "", nil, err
	}
	sweepOnce.Do(sweepStale)
	dir, err := os.MkdirTemp(baseDir, "trixie-")
	if err != nil {
		return "", nil, fmt.Errorf("unpack trixie: %w", err)
	}
	lock, err := lockFile(filepath.Join(dir, ".lock"), 0)
	if err != nil {
		return "", nil, fmt.Errorf("unpack trixie: %w", err)
	}
	done = func() {
		if err := removeTree(dir); err != nil {
			fmt.Fprintf(os.Stderr, "nixtest: %v\n", err)
		}
		lock.Close()
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		done()
		return "", nil, err
	}
	root = filepath.Join(dir, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		done()
		return "", nil, err
	}
	start := time.Now()
	if _, err := runCmd(ctx, 5*time.Minute, "tar", "--zstd", "--numeric-owner", "-xpf", tarball, "-C", root); err != nil {
		done()
		return "", nil, fmt.Errorf("unpack trixie: %w", err)
	}
	if _, err := os.Stat(filepath.Join(root, "usr/bin/nix-daemon")); err != nil {
		done()
		return "", nil, fmt.Errorf("unpack trixie: %s looks broken (remove it to rebuild): %w", tarball, err)
	}
	lastUnpack.Store(int64(time.Since(start)))
	return root, done, nil
}

// lastUnpack is how long the latest unpack took, for the timing report.
var lastUnpack atomic.Int64
