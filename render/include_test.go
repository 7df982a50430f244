package render

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// includeChain writes the review's attack: a has n lines "@b", b has n
// lines "@c", c has one builder. Nix would read n*n builders.
func includeChain(tb testing.TB, n int) string {
	tb.Helper()
	dir := tb.TempDir()
	a, b, c := filepath.Join(dir, "a"), filepath.Join(dir, "b"), filepath.Join(dir, "c")
	for path, text := range map[string]string{c: "ssh://c x86_64-linux\n", b: strings.Repeat("@"+c+"\n", n), a: strings.Repeat("@"+b+"\n", n)} {
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	return a
}

// TestParseFileIncludeChainIsBounded: the N=2000 chain (4 million
// builders, minutes and gigabytes before) stops at the budget with one
// problem that says what ran out; what was read before it is kept.
func TestParseFileIncludeChainIsBounded(t *testing.T) {
	a := includeChain(t, 2000)
	es, err := ParseFile(a, ParseOptions{})
	var pe ParseErrors
	if !errors.As(err, &pe) || len(pe) != 1 || !errors.Is(pe[0], ErrIncludeBudget) || !strings.Contains(pe[0].Error(), fmt.Sprint(MaxIncludes)) {
		t.Fatalf("ParseFile of the chain = %v, want one ErrIncludeBudget problem naming the limit", err)
	}
	if len(es) == 0 || len(es) > MaxIncludes {
		t.Errorf("got %d machines, want some and at most %d (one per followed @include)", len(es), MaxIncludes)
	}
}

// TestParseFileIncludeDepthAndSpecsBounded: a chain nested deeper than
// MaxIncludeDepth, and a flat file with more than MaxTotalSpecs lines,
// each stop with ErrIncludeBudget.
func TestParseFileIncludeDepthAndSpecsBounded(t *testing.T) {
	dir := t.TempDir()
	var first string
	for i := 0; i < MaxIncludeDepth+3; i++ {
		p := filepath.Join(dir, fmt.Sprint(i))
		if i == 0 {
			first = p
		}
		writeFile(t, p, fmt.Sprintf("ssh://b%d x86_64-linux\n@%s\n", i, filepath.Join(dir, fmt.Sprint(i+1))))
	}
	es, err := ParseFile(first, ParseOptions{})
	if !errors.Is(err, ErrIncludeBudget) || !strings.Contains(err.Error(), "deeper than") {
		t.Fatalf("deep chain: %v, want ErrIncludeBudget for depth", err)
	}
	if len(es) != MaxIncludeDepth {
		t.Errorf("deep chain: %d machines, want the %d files within the depth", len(es), MaxIncludeDepth)
	}

	flat := filepath.Join(dir, "flat")
	writeFile(t, flat, strings.Repeat("b;", MaxTotalSpecs+1))
	es, err = ParseFile(flat, ParseOptions{})
	if !errors.Is(err, ErrIncludeBudget) || len(es) != MaxTotalSpecs {
		t.Fatalf("flat file of %d specs: %d machines, %v; want %d and ErrIncludeBudget", MaxTotalSpecs+1, len(es), err, MaxTotalSpecs)
	}
}

// TestParseFileRefusesAFIFO: a FIFO as the file, or behind an @include,
// is refused at once instead of blocking the reader forever.
func TestParseFileRefusesAFIFO(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	top := filepath.Join(dir, "machines")
	writeFile(t, top, "ssh://b1 x86_64-linux\n@"+fifo+"\n")
	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, err := ParseFile(fifo, ParseOptions{}); !errors.Is(err, ErrNotRegular) {
			t.Errorf("ParseFile(FIFO) = %v, want ErrNotRegular", err)
		}
		es, err := ParseFile(top, ParseOptions{})
		if err == nil || !strings.Contains(err.Error(), "not a regular file") || len(es) != 1 {
			t.Errorf("ParseFile with @FIFO = %d machines, %v; want b1 and ErrNotRegular", len(es), err)
		}
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("ParseFile blocked on a FIFO")
	}
}

// TestParseFileTakesDevNullAsEmpty: /dev/null, a character device, is
// how users say "no builders here" (--static /dev/null, @/dev/null): it
// reads as an empty file, while other devices stay refused.
func TestParseFileTakesDevNullAsEmpty(t *testing.T) {
	if es, err := ParseFile(os.DevNull, ParseOptions{}); err != nil || len(es) != 0 {
		t.Errorf("ParseFile(%s) = %d machines, %v; want none, no error", os.DevNull, len(es), err)
	}
	top := filepath.Join(t.TempDir(), "machines")
	writeFile(t, top, "ssh://b1 x86_64-linux\n@"+os.DevNull+"\n")
	if es, err := ParseFile(top, ParseOptions{}); err != nil || len(es) != 1 {
		t.Errorf("ParseFile with @%s = %d machines, %v; want b1, no error", os.DevNull, len(es), err)
	}
	if _, err := ParseFile("/dev/zero", ParseOptions{}); !errors.Is(err, ErrNotRegular) {
		t.Errorf("ParseFile(/dev/zero) = %v, want ErrNotRegular", err)
	}
}

// TestParseFileContextCancelled: a cancelled parse returns the context's
// error, not a partial list.
func TestParseFileContextCancelled(t *testing.T) {
	a := includeChain(t, 10)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	es, err := ParseFileContext(ctx, a, ParseOptions{})
	if !errors.Is(err, context.Canceled) || es != nil {
		t.Fatalf("ParseFileContext(cancelled) = %d machines, %v; want context.Canceled", len(es), err)
	}
}

// BenchmarkParseIncludeChain parses the review's N=2000 chain: with the
// budget it costs about as much as MaxIncludes small files.
func BenchmarkParseIncludeChain(b *testing.B) {
	a := includeChain(b, 2000)
	for b.Loop() {
		ParseFile(a, ParseOptions{})
	}
}
