package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestClientRestartsOnConfigChange runs the built client with a JSON
// --config file, changes the file, and checks that the running daemon
// (same PID) applies it: the machines file follows the new static file.
func TestClientRestartsOnConfigChange(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "nixrb-discover")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	a, b := filepath.Join(dir, "static-a"), filepath.Join(dir, "static-b")
	if err := os.WriteFile(a, []byte("ssh-ng://builder@alpha x86_64-linux\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(b, []byte("ssh-ng://builder@beta aarch64-linux\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	machines, conf := filepath.Join(dir, "machines"), filepath.Join(dir, "client.json")
	write := func(static string) {
		js := `{"tailnet": false, "static": "` + static + `", "machines": "` + machines + `", "ssh-key": "` + filepath.Join(dir, "id") + `", "socket": "` + filepath.Join(dir, "sock") + `", "nix-version": "2.8"}`
		tmp := conf + ".tmp"
		if err := os.WriteFile(tmp, []byte(js), 0o644); err != nil {
			t.Fatal(err)
		}
		os.Rename(tmp, conf)
	}
	write(a)
	cmd := exec.Command(bin, "client", "--config", conf, "--log-level", "warn")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })
	waitFor := func(what, s string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			if f, _ := os.ReadFile(machines); strings.Contains(string(f), s) {
				return
			}
			if time.Now().After(deadline) {
				f, _ := os.ReadFile(machines)
				t.Fatalf("%s never happened; machines file:\n%s", what, f)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor("first render", "@alpha ")
	write(b)
	waitFor("render after the config changed", "@beta ")
	if err := cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("the daemon (pid %d) is gone after the reload: %v", cmd.Process.Pid, err)
	}
}
