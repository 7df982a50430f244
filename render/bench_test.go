package render

import (
	"bytes"
	"fmt"
	"path/filepath"
	"testing"
)

func fleet(n int) []Machine {
	ms := make([]Machine, n)
	for i := range ms {
		m := builder()
		m.URI.Host = fmt.Sprintf("b%05d.tail1234.ts.net", i)
		ms[i] = m
	}
	return ms
}

// BenchmarkFormatCompare is the client's per-change cost: merge, format
// and compare with the bytes already on disk.
func BenchmarkFormatCompare(b *testing.B) {
	for _, n := range []int{10, 1000, 10000} {
		b.Run(fmt.Sprintf("machines=%d", n), func(b *testing.B) {
			ms := fleet(n)
			prev, _ := Format(Merge(nil, ms), FormatOptions{NixVersion: nix226})
			b.ReportAllocs()
			for b.Loop() {
				out, err := Format(Merge(nil, ms), FormatOptions{NixVersion: nix226})
				if err != nil || !bytes.Equal(out, prev) {
					b.Fatal("changed")
				}
			}
		})
	}
}

// BenchmarkWriteAtomic compares an unchanged write (read + compare only)
// with a changed one (temp file, fsync, rename, directory fsync).
func BenchmarkWriteAtomic(b *testing.B) {
	path := filepath.Join(b.TempDir(), "machines")
	a, _ := Format(fleet(10), FormatOptions{})
	c, _ := Format(fleet(11), FormatOptions{})
	b.Run("unchanged", func(b *testing.B) {
		WriteAtomic(path, a)
		for b.Loop() {
			if res, err := WriteAtomic(path, a); err != nil || res.Changed {
				b.Fatal(res, err)
			}
		}
	})
	last := a // what the file holds; the sub-benchmark may run several times
	b.Run("changed", func(b *testing.B) {
		for b.Loop() {
			content := c
			if bytes.Equal(last, c) {
				content = a
			}
			last = content
			if res, err := WriteAtomic(path, content); err != nil || !res.Changed {
				b.Fatal(res, err)
			}
		}
	})
}
