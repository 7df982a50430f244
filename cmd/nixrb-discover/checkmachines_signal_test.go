package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/internal/clienttest"
)

// TestCheckMachinesHostileInputs runs the built binary on the review's
// inputs: the N=2000 @include chain ends with the budget's problem (exit
// 1), a FIFO argument is refused (exit 2) instead of waited on, and
// SIGINT or SIGTERM while standard input stays open ends it (exit 2).
func TestCheckMachinesHostileInputs(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "nixrb-discover")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	// run starts bin with args, optionally signals it once started, and
	// returns its exit status and output, bounded.
	run := func(t *testing.T, sig os.Signal, args ...string) (int, string) {
		t.Helper()
		cmd := exec.Command(bin, args...)
		var out clienttest.SyncBuffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if sig != nil {
			pr, pw, err := os.Pipe() // standard input that never ends
			if err != nil {
				t.Fatal(err)
			}
			defer pw.Close()
			defer pr.Close()
			cmd.Stdin = pr
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		if sig != nil {
			// Signal once it has said it is checking: past the signal
			// handler's setup, at the read of standard input.
			deadline := time.Now().Add(60 * time.Second)
			for !strings.Contains(out.String(), "checking machines files") && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			cmd.Process.Signal(sig)
		}
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Fatalf("check-machines %v did not end (signal %v):\n%s", args, sig, out.String())
		}
		return cmd.ProcessState.ExitCode(), out.String()
	}

	t.Run("include-chain-2000", func(t *testing.T) {
		d := t.TempDir()
		a, b, c := filepath.Join(d, "a"), filepath.Join(d, "b"), filepath.Join(d, "c")
		for path, text := range map[string]string{c: "ssh://c x86_64-linux\n", b: strings.Repeat("@"+c+"\n", 2000), a: strings.Repeat("@"+b+"\n", 2000)} {
			if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		code, out := run(t, nil, "check-machines", "--nix-version", "2.8", a)
		if code != 1 || !strings.Contains(out, "@include expansion too large") {
			t.Fatalf("exit %d, output:\n%s\nwant exit 1 and the budget's problem", code, out)
		}
	})
	t.Run("fifo-argument", func(t *testing.T) {
		fifo := filepath.Join(t.TempDir(), "fifo")
		if err := syscall.Mkfifo(fifo, 0o644); err != nil {
			t.Fatal(err)
		}
		code, out := run(t, nil, "check-machines", "--nix-version", "2.8", fifo)
		if code != 2 || !strings.Contains(out, "not a regular file") {
			t.Fatalf("exit %d, output:\n%s\nwant exit 2 and a refusal", code, out)
		}
	})
	for _, sig := range []os.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run("stdin-then-"+sig.String(), func(t *testing.T) {
			code, out := run(t, sig, "check-machines", "--nix-version", "2.8", "--log-level", "debug", "-")
			if code != 2 || !strings.Contains(out, "interrupted") {
				t.Fatalf("exit %d, output:\n%s\nwant exit 2 and 'interrupted'", code, out)
			}
		})
	}
}
