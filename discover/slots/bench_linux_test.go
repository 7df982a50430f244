package slots

import (
	"fmt"
	"testing"
)

// benchLocker tracks 100 machines of 4 slots, holding want of each.
func benchLocker(b *testing.B, want int) (*Locker, []string) {
	l, err := New(b.TempDir(), Rendered)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	uris := make([]string, 100)
	for i := range uris {
		uris[i] = fmt.Sprintf("ssh-ng://nix-ssh@b%d.tail1234.ts.net", i)
		if _, err := l.Set(uris[i], 4, want); err != nil {
			b.Fatal(err)
		}
	}
	return l, uris
}

// BenchmarkSetUnchanged is one round of the client loop over 100 machines
// when nothing changed: no system call (see TestUnchangedSetMakesNoSystemCall).
func BenchmarkSetUnchanged(b *testing.B) {
	for _, want := range []int{4, 2, 0} {
		b.Run(fmt.Sprintf("hold-%d-of-4", want), func(b *testing.B) {
			l, uris := benchLocker(b, want)
			for b.Loop() {
				for _, u := range uris {
					if _, err := l.Set(u, 4, want); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

// BenchmarkScan is one fleet-load round over 100 machines holding 2 of 4
// slots: per machine 2 stats (held) and 2 probes (open, flock, close).
func BenchmarkScan(b *testing.B) {
	l, uris := benchLocker(b, 2)
	for b.Loop() {
		for _, u := range uris {
			if _, err := l.Scan(u, 4); err != nil {
				b.Fatal(err)
			}
		}
	}
}
