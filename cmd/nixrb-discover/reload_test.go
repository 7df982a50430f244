package main

import (
	"bytes"
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

// TestClientKeepsRunningOnBadConfigChange: a running client whose
// --config file changes into one that does not parse keeps running on
// the old one, says why (file, line, key) in its log and in list, and
// applies the next good change.
func TestClientKeepsRunningOnBadConfigChange(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "nixrb-discover")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	a, b := filepath.Join(dir, "static-a"), filepath.Join(dir, "static-b")
	os.WriteFile(a, []byte("ssh-ng://builder@alpha x86_64-linux\n"), 0o644)
	os.WriteFile(b, []byte("ssh-ng://builder@beta aarch64-linux\n"), 0o644)
	machines, conf, sock := filepath.Join(dir, "machines"), filepath.Join(dir, "client.json"), filepath.Join(dir, "sock")
	write := func(staticKey, static string) {
		js := `{"tailnet": false, "machines": "` + machines + `", "ssh-key": "` + filepath.Join(dir, "id") + `",` + "\n" +
			`"socket": "` + sock + `", "nix-version": "2.8", "nix-state-dir": "",` + "\n" +
			`"` + staticKey + `": "` + static + `"}`
		tmp := conf + ".tmp"
		if err := os.WriteFile(tmp, []byte(js), 0o644); err != nil {
			t.Fatal(err)
		}
		os.Rename(tmp, conf)
	}
	write("static", a)
	var logs syncBuffer
	cmd := exec.Command(bin, "client", "--config", conf)
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				f, _ := os.ReadFile(machines)
				t.Fatalf("%s never happened; machines file:\n%s\nlog:\n%s", what, f, logs.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	fileHas := func(s string) func() bool {
		return func() bool { f, _ := os.ReadFile(machines); return strings.Contains(string(f), s) }
	}
	waitFor("first render", fileHas("@alpha "))

	write("statc", b)
	want := conf + `:3: key "statc": no such setting (did you mean "static"?)`
	waitFor("the refusal in the log", func() bool {
		return strings.Contains(logs.String(), "still running on the previous configuration") &&
			strings.Contains(logs.String(), strings.Trim(strconv.Quote(want), `"`)) // slog quotes the error
	})
	if err := cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("the daemon is gone after a bad config change: %v\n%s", err, logs.String())
	}
	out, err := exec.Command(bin, "list", "--socket", sock).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "config not applied, running on the previous one: "+want) {
		t.Errorf("list does not say the config was refused (err %v):\n%s", err, out)
	}
	if !fileHas("@alpha ")() {
		t.Error("the machines file lost the running configuration's builder")
	}

	write("static", b)
	waitFor("render after the config was fixed", fileHas("@beta "))
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
