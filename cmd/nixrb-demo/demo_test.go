package main

import (
	"bytes"
	"context"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestDemo runs the demo as `go run ./cmd/nixrb-demo` does and checks the
// story it tells: both tagged builders reach the machines file, the
// untagged peer never does, the stopped builder and the killed one leave,
// and all of it well within the time a newcomer waits.
func TestDemo(t *testing.T) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var out, logs bytes.Buffer
	if err := run(ctx, nil, &out, &logs); err != nil {
		t.Fatalf("run: %v\noutput:\n%s", err, out.String())
	}
	took := time.Since(start)
	t.Logf("demo took %v; output:\n%s", took, out.String())
	if took > 60*time.Second {
		t.Errorf("the demo took %v, want under 60s", took)
	}
	if logs.Len() > 0 {
		t.Errorf("without -v the demo logged:\n%s", logs.String())
	}

	o := out.String()
	files := machinesFiles(o)
	if len(files) != 2 {
		t.Fatalf("want the machines file printed twice (before and after), got %d:\n%s", len(files), o)
	}
	first, last := files[0], files[1]
	const b1, b2, untagged = "@b1.tail-scale.ts.net ", "@b2.tail-scale.ts.net ", "untagged.tail-scale.ts.net"
	// Faults and a clean stop hold the builders' Nix slots; their lines
	// stay, and the file is not rewritten (the two printed files are the
	// same).
	for _, b := range []string{b1, b2} {
		if !strings.Contains(first, b) {
			t.Errorf("first machines file lacks %s:\n%s", b, first)
		}
	}
	if last != first {
		t.Errorf("the machines file changed across the faults:\nbefore:\n%s\nafter:\n%s", first, last)
	}
	for _, f := range files {
		if strings.Contains(f, untagged) {
			t.Errorf("the untagged peer is in the machines file:\n%s", f)
		}
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^\s+simulated\s+each builder's SSH endpoint`),
		regexp.MustCompile(`untagged\.tail-scale\.ts\.net\s+no tags\s+NOT a candidate`),
		regexp.MustCompile(`b2's Nix slots are held \d+(\.\d)? m?s after its agent stopped`),
		regexp.MustCompile(`b1's Nix slots are held \d+(\.\d)? m?s after its SSH endpoint died`),
		regexp.MustCompile(`b2\.tail-scale\.ts\.net\s+draining\s.*\s4/4 held \(draining\)`),
		regexp.MustCompile(`b1\.tail-scale\.ts\.net\s+down\s.*\s8/8 held \(down\)`),
		regexp.MustCompile(`ssh-ng://nixrb-builder@b1\.tail-scale\.ts\.net\s+8 of 8 held`),
	} {
		if !want.MatchString(o) {
			t.Errorf("output does not match %s", want)
		}
	}
	// The table's rows start with the builder's name.
	if regexp.MustCompile(`(?m)^untagged\.`).MatchString(o) {
		t.Errorf("the untagged peer is a row of the list table:\n%s", o)
	}
}

// machinesFiles returns the machines file contents the demo printed after
// each `$ cat` line.
func machinesFiles(out string) []string {
	var files []string
	parts := strings.Split(out, "\n$ cat ")
	for _, p := range parts[1:] {
		_, body, _ := strings.Cut(p, "\n")
		body, _, _ = strings.Cut(body, "\n\n")
		files = append(files, body)
	}
	return files
}

// TestDemoNotInProductionBinary keeps the demo (and with it tsnet and
// testcontrol) out of nixrb-discover; cmd/nixrb-discover/deps_test.go
// checks the rest of that binary's dependencies.
func TestDemoNotInProductionBinary(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/nixrb-discover/nixrb-discover/cmd/nixrb-discover").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, d := range strings.Fields(string(out)) {
		if strings.HasSuffix(d, "/internal/demo") || d == "tailscale.com/tsnet" || strings.HasPrefix(d, "tailscale.com/tstest") {
			t.Errorf("nixrb-discover links %s", d)
		}
	}
}

// TestRunRejectsArguments checks the usage errors.
func TestRunRejectsArguments(t *testing.T) {
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"extra"}, &out, &errb); err == nil || !strings.Contains(err.Error(), "no arguments") {
		t.Errorf("run(extra) = %v, want a no-arguments error", err)
	}
	if err := run(context.Background(), []string{"-bogus"}, &out, &errb); err == nil {
		t.Errorf("run(-bogus) = nil, want a flag error")
	}
}
