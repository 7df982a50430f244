//go:build linux

package e2e

import (
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestClientKill9WhileWriting kills the real client binary with SIGKILL at
// random moments while it rewrites the machines file as fast as a static
// file changes; after every kill the file is one Nix accepts (the real
// check-machines agrees) and the next start leaves no temporary file.
// Then a restart with nothing changed must not touch the file.
func TestClientKill9WhileWriting(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	static, machines := filepath.Join(dir, "static"), filepath.Join(dir, "machines")
	lines := []string{
		"ssh-ng://builder@alpha x86_64-linux - 4 1 kvm\n",
		"ssh-ng://builder@beta aarch64-linux - 2 1 -\nssh://root@gamma x86_64-linux,i686-linux - 8 2 big-parallel\n",
	}
	if err := os.WriteFile(static, []byte(lines[0]), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"client", "--tailnet=false", "--static", static, "--machines", machines,
		"--ssh-key", filepath.Join(dir, "id"), "--socket", filepath.Join(dir, "sock"), "--nix-version", "2.8", "--log-level", "error"}
	stopEditing := make(chan struct{})
	edited := make(chan struct{})
	go func() { // flip the static file so the client keeps rewriting
		defer close(edited)
		for i := 0; ; i++ {
			select {
			case <-stopEditing:
				return
			case <-time.After(time.Duration(110+rand.IntN(50)) * time.Millisecond): // just past the static file's 100 ms settle
			}
			tmp := static + ".tmp"
			if err := os.WriteFile(tmp, []byte(lines[i%2]), 0o644); err != nil {
				t.Error(err)
				return
			}
			if err := os.Rename(tmp, static); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for round := range 15 {
		cmd := exec.Command(bin, args...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(200+rand.IntN(600)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		if _, err := os.Stat(machines); err != nil {
			continue // killed before its first write
		}
		out, err := exec.Command(bin, "check-machines", "--nix-version", "2.8", machines).CombinedOutput()
		if err != nil {
			t.Fatalf("round %d: after SIGKILL the machines file is not valid: %v\n%s", round, err, out)
		}
	}
	close(stopEditing)
	<-edited

	// The next start sweeps what a killed write left behind.
	cmd := exec.Command(bin, args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, _ := os.ReadFile(machines)
		want, _ := os.ReadFile(static)
		if strings.Contains(string(b), strings.Fields(string(want))[0]) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the restarted client never wrote the current builders:\n%s", b)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The lock file (".machines.lock", one client per file) stays by
	// design; a write's temporary file must not.
	left, _ := filepath.Glob(filepath.Join(dir, ".machines*"))
	left = slices.DeleteFunc(left, func(p string) bool { return filepath.Base(p) == ".machines.lock" })
	if len(left) != 0 {
		t.Errorf("temporary files left after a restart: %v", left)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()

	// Restart with nothing changed: the file is not rewritten.
	old := time.Now().Add(-time.Hour)
	os.Chtimes(machines, old, old)
	before, _ := os.Stat(machines)
	cmd = exec.Command(bin, args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()
	after, _ := os.Stat(machines)
	if !after.ModTime().Equal(before.ModTime()) || !os.SameFile(before, after) {
		t.Error("a restarted client rewrote an unchanged machines file")
	}
}
