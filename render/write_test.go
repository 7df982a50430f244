package render

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fileOf returns a complete, valid machines file whose content identifies
// generation i (its builder's max jobs), padded so that writes are not
// trivially small.
func fileOf(t testing.TB, i int) []byte {
	m := builder()
	m.MaxJobs = uint32(i%1000 + 1)
	out, err := Format([]Machine{m}, FormatOptions{Header: "managed by nixrb-discover (generation " + strconv.Itoa(i) + ")\n" + strings.Repeat("x", 2000)})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestWriteAtomic(t *testing.T) {
	t.Run("new-file-gets-default-mode", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "machines")
		res, err := WriteAtomic(path, fileOf(t, 1))
		if err != nil || !res.Changed {
			t.Fatalf("WriteAtomic = %+v, %v", res, err)
		}
		fi, _ := os.Stat(path)
		if fi.Mode().Perm() != DefaultMode {
			t.Errorf("mode %v, want %v", fi.Mode().Perm(), DefaultMode)
		}
	})
	t.Run("file-exists-same-content-is-not-touched", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "machines")
		writeFile(t, path, string(fileOf(t, 1)))
		old := time.Now().Add(-time.Hour)
		os.Chtimes(path, old, old)
		before, _ := os.Stat(path)
		res, err := WriteAtomic(path, fileOf(t, 1))
		if err != nil || res.Changed {
			t.Fatalf("WriteAtomic = %+v, %v; want unchanged", res, err)
		}
		after, _ := os.Stat(path)
		if !after.ModTime().Equal(before.ModTime()) || !os.SameFile(before, after) {
			t.Error("unchanged content was rewritten")
		}
	})
	t.Run("file-exists-mode-and-owner-kept", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "machines")
		writeFile(t, path, "old\n")
		os.Chmod(path, 0o640)
		uid, gid := os.Getuid(), os.Getgid()
		if os.Getuid() == 0 {
			uid, gid = 65534, 65534
			if err := os.Chown(path, uid, gid); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := WriteAtomic(path, fileOf(t, 2)); err != nil {
			t.Fatal(err)
		}
		fi, _ := os.Stat(path)
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode().Perm() != 0o640 || int(st.Uid) != uid || int(st.Gid) != gid {
			t.Errorf("mode %v owner %d:%d, want 0640 %d:%d", fi.Mode().Perm(), st.Uid, st.Gid, uid, gid)
		}
		if got, _ := os.ReadFile(path); !bytes.Equal(got, fileOf(t, 2)) {
			t.Error("content not replaced")
		}
	})
	t.Run("store-symlink-refused", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "machines")
		os.Symlink("/nix/store/abc-machines", path)
		_, err := WriteAtomic(path, fileOf(t, 1))
		if !errors.Is(err, ErrStoreSymlink) {
			t.Fatalf("WriteAtomic over a store symlink = %v, want ErrStoreSymlink", err)
		}
		if dest, _ := os.Readlink(path); dest != "/nix/store/abc-machines" {
			t.Errorf("symlink replaced: now %q", dest)
		}
		if !strings.Contains(StoreSymlinkHint, "nix.settings.builders") {
			t.Error("hint does not tell the user about nix.settings.builders")
		}
	})
	t.Run("other-symlink-refused-target-untouched", func(t *testing.T) {
		// A symlink we did not create points at someone's file: writing
		// through it would replace their file, so it is refused.
		dir := t.TempDir()
		real := filepath.Join(dir, "real")
		link := filepath.Join(dir, "machines")
		writeFile(t, real, "old\n")
		os.Symlink("real", link)
		_, err := WriteAtomic(link, fileOf(t, 3))
		if !errors.Is(err, ErrSymlink) {
			t.Fatalf("WriteAtomic through a symlink = %v, want ErrSymlink", err)
		}
		if fi, _ := os.Lstat(link); fi.Mode()&os.ModeSymlink == 0 {
			t.Error("symlink replaced by a file")
		}
		if got, _ := os.ReadFile(real); string(got) != "old\n" {
			t.Errorf("target overwritten: %q", got)
		}
	})
}

func TestSweepStale(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "machines")
	for _, n := range []string{".machines123", ".machines9876543210", ".machines", ".machinesX1", "other123", ".m123"} {
		writeFile(t, filepath.Join(dir, n), "")
	}
	n, err := SweepStale(path)
	if err != nil || n != 2 {
		t.Fatalf("SweepStale = %d, %v; want 2 removed", n, err)
	}
	left, _ := filepath.Glob(filepath.Join(dir, ".*"))
	if len(left) != 3 {
		t.Errorf("left %v; want .machines, .machinesX1 and .m123 untouched", left)
	}
}

// TestWriteAtomicReaderNeverSeesPartialFile rewrites the file 10,000 times
// while another goroutine re-reads and parses it as fast as it can.
// It runs on a tmpfs when it can: rename atomicity is the same there, and
// 10,000 disk fsyncs would take minutes.
func TestWriteAtomicReaderNeverSeesPartialFile(t *testing.T) {
	dir := t.TempDir()
	if os.Getuid() == 0 {
		dir = mountTmpfs(t, "16m")
	}
	path := filepath.Join(dir, "machines")
	if _, err := WriteAtomic(path, fileOf(t, 0)); err != nil {
		t.Fatal(err)
	}
	const writes = 10000
	valid := map[string]bool{}
	for i := 0; i < writes; i++ {
		valid[string(fileOf(t, i))] = true
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	var reads int
	var readErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			b, err := os.ReadFile(path)
			if err != nil {
				readErr = err
				return
			}
			if !valid[string(b)] {
				readErr = fmt.Errorf("read a file that was never written whole (%d bytes)", len(b))
				return
			}
			if _, err := Parse(b, ParseOptions{}); err != nil {
				readErr = err
				return
			}
			reads++
		}
	}()
	for i := 1; i < writes; i++ {
		if _, err := WriteAtomic(path, fileOf(t, i)); err != nil {
			t.Fatal(err)
		}
	}
	close(done)
	wg.Wait()
	if readErr != nil {
		t.Fatalf("after %d good reads: %v", reads, readErr)
	}
	t.Logf("%d reads during %d writes", reads, writes)
}

// TestWriteAtomicSurvivesSIGKILL kills a writer process at random points:
// the file must always be a complete old or new version, and the next
// start's SweepStale must leave no temporary file behind.
func TestWriteAtomicSurvivesSIGKILL(t *testing.T) {
	if os.Getenv("RENDER_TEST_WRITER") != "" {
		return // the child's copy of this test does nothing
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "machines")
	if _, err := WriteAtomic(path, fileOf(t, 0)); err != nil {
		t.Fatal(err)
	}
	valid := map[string]bool{}
	for i := 0; i < 2000; i++ {
		valid[string(fileOf(t, i))] = true
	}
	for round := 0; round < 30; round++ {
		cmd := exec.Command(os.Args[0], "-test.run", "^TestWriterChild$")
		cmd.Env = append(os.Environ(), "RENDER_TEST_WRITER="+path)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(5+rand.IntN(40)) * time.Millisecond)
		cmd.Process.Kill()
		cmd.Wait()
		b, err := os.ReadFile(path)
		if err != nil || !valid[string(b)] {
			t.Fatalf("round %d: after SIGKILL the file is not a complete version (%v, %d bytes)", round, err, len(b))
		}
		if _, err := SweepStale(path); err != nil {
			t.Fatal(err)
		}
		left, _ := filepath.Glob(filepath.Join(dir, ".machines*"))
		if len(left) != 0 {
			t.Fatalf("round %d: temporary files left after sweep: %v", round, left)
		}
	}
}

// TestWriterChild is the writer process of TestWriteAtomicSurvivesSIGKILL.
func TestWriterChild(t *testing.T) {
	path := os.Getenv("RENDER_TEST_WRITER")
	if path == "" {
		t.Skip("run only as the child of TestWriteAtomicSurvivesSIGKILL")
	}
	for i := 1; ; i = i%1999 + 1 {
		if _, err := WriteAtomic(path, fileOf(t, i)); err != nil {
			t.Fatal(err)
		}
	}
}

// mountTmpfs mounts a small tmpfs for a test (root only).
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("needs root to mount a tmpfs (CI runs as root)")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0755", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount tmpfs here: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	return dir
}

func TestWriteAtomicENOSPCKeepsOldFile(t *testing.T) {
	dir := mountTmpfs(t, "64k")
	path := filepath.Join(dir, "machines")
	old := fileOf(t, 1)
	if _, err := WriteAtomic(path, old); err != nil {
		t.Fatal(err)
	}
	// Fill the filesystem, then try a bigger file.
	filler, _ := os.Create(filepath.Join(dir, "filler"))
	filler.Write(make([]byte, 200<<10))
	filler.Close()
	_, err := WriteAtomic(path, bytes.Repeat(fileOf(t, 2), 8))
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("WriteAtomic on a full disk = %v, want ENOSPC", err)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, old) {
		t.Error("old file damaged by a failed write")
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".machines*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

func TestWriteAtomicReadOnlyDirectory(t *testing.T) {
	dir := mountTmpfs(t, "64k")
	path := filepath.Join(dir, "machines")
	old := fileOf(t, 1)
	if _, err := WriteAtomic(path, old); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-o", "remount,ro", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot remount read-only: %v: %s", err, out)
	}
	_, err := WriteAtomic(path, fileOf(t, 2))
	if !errors.Is(err, syscall.EROFS) || !strings.Contains(err.Error(), path) {
		t.Fatalf("WriteAtomic on a read-only filesystem = %v, want EROFS naming %s", err, path)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, old) {
		t.Error("old file damaged")
	}
}

// TestWriteAtomicRefusesADirectoryAnotherUserOwns: a non-root user who
// owns the machines file's directory plants machines -> a root-owned
// file; the root client's write is refused with an error that names the
// directory and the fix, and the root-owned file is untouched. A
// world-writable directory is refused the same way.
func TestWriteAtomicRefusesADirectoryAnotherUserOwns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown a directory to another user")
	}
	victim := filepath.Join(t.TempDir(), "shadow")
	if err := os.WriteFile(victim, []byte("root:secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "nix")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, 65534, 65534); err != nil { // nobody
		t.Fatal(err)
	}
	path := filepath.Join(dir, "machines")
	if err := os.Symlink(victim, path); err != nil {
		t.Fatal(err)
	}
	_, err := WriteAtomic(path, []byte("ssh://evil x86_64-linux\n"))
	if !errors.Is(err, ErrUnsafeDir) || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "uid 65534") || !strings.Contains(err.Error(), "chown root "+dir) {
		t.Fatalf("WriteAtomic into a directory uid 65534 owns = %v, want ErrUnsafeDir naming it and the fix", err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "root:secret\n" {
		t.Fatalf("the symlink's target was changed: %q", b)
	}
	// The same with a plain file planted there, owned by that user: not
	// replaced (and never chowned to the new file) either.
	os.Remove(path)
	if err := os.WriteFile(path, []byte("mine\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := WriteAtomic(path, []byte("x\n")); !errors.Is(err, ErrUnsafeDir) {
		t.Fatalf("WriteAtomic over a planted file = %v, want ErrUnsafeDir", err)
	}

	open := filepath.Join(t.TempDir(), "open")
	if err := os.Mkdir(open, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(open, 0o1777)
	if _, err := WriteAtomic(filepath.Join(open, "machines"), []byte("x\n")); !errors.Is(err, ErrUnsafeDir) || !strings.Contains(err.Error(), "chmod go-w "+open) {
		t.Fatalf("WriteAtomic into a mode 1777 directory = %v, want ErrUnsafeDir and the chmod fix", err)
	}
}

// TestWriteAtomicRefusesAFIFO: a FIFO at the machines path is refused at
// once, not waited on.
func TestWriteAtomicRefusesAFIFO(t *testing.T) {
	path := filepath.Join(t.TempDir(), "machines")
	if err := syscall.Mkfifo(path, 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := WriteAtomic(path, []byte("x\n")); done <- err }()
	select {
	case err := <-done:
		if !errors.Is(err, ErrNotRegular) {
			t.Fatalf("WriteAtomic on a FIFO = %v, want ErrNotRegular", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("WriteAtomic blocked on a FIFO")
	}
}
