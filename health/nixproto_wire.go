package health

// The Nix wire format: every number is a little-endian uint64; a string
// is its length as a uint64, the bytes, and zero padding to a multiple
// of 8 (libutil/serialise.hh). Reads are bounded; see nixproto.go.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// remoteError is an error that the remote Nix reported (STDERR_ERROR).
type remoteError struct{ Msg string }

func (e *remoteError) Error() string { return "remote nix: " + e.Msg }

// mismatchError says the remote did not answer with the expected magic:
// typically a shell startup file printing text, or another program.
type mismatchError struct {
	What string // "nix-daemon" or "nix-store --serve"
	Got  []byte // the first bytes received
}

func (e *mismatchError) Error() string {
	if len(e.Got) == 0 {
		return fmt.Sprintf("%s ended its output without answering the handshake", e.What)
	}
	return fmt.Sprintf("%s protocol mismatch: got %q", e.What, e.Got)
}

// formatProtoVersion renders a wire version as "major.minor".
func formatProtoVersion(v uint64) string {
	return fmt.Sprintf("%d.%d", v>>8&0xff, v&0xff)
}

// wireReader reads Nix's wire format with bounds.
type wireReader struct {
	r    io.Reader
	buf  [8]byte
	seen []byte // the first mismatchPrefix bytes, for a mismatch report
}

func newWireReader(r io.Reader) *wireReader {
	return &wireReader{r: io.LimitReader(r, maxHelloBytes)}
}

func (w *wireReader) full(p []byte) error {
	n, err := io.ReadFull(w.r, p)
	if room := mismatchPrefix - len(w.seen); room > 0 {
		w.seen = append(w.seen, p[:min(n, room)]...)
	}
	return err
}

func (w *wireReader) num(what string) (uint64, error) {
	if err := w.full(w.buf[:]); err != nil {
		return 0, fmt.Errorf("read %s: %w", what, err)
	}
	return binary.LittleEndian.Uint64(w.buf[:]), nil
}

func (w *wireReader) str(what string) (string, error) {
	n, err := w.num(what + " length")
	if err != nil {
		return "", err
	}
	if n > maxWireString {
		return "", fmt.Errorf("read %s: length %d over limit %d", what, n, maxWireString)
	}
	padded := (n + 7) &^ 7
	b := make([]byte, padded)
	if err := w.full(b); err != nil {
		return "", fmt.Errorf("read %s: %w", what, err)
	}
	for _, c := range b[n:] {
		if c != 0 {
			return "", fmt.Errorf("read %s: non-zero padding", what)
		}
	}
	return string(b[:n]), nil
}

func (w *wireReader) strs(what string) ([]string, error) {
	n, err := w.num(what + " count")
	if err != nil {
		return nil, err
	}
	if n > maxWireList {
		return nil, fmt.Errorf("read %s: count %d over limit %d", what, n, maxWireList)
	}
	out := make([]string, 0, n)
	for i := uint64(0); i < n; i++ {
		s, err := w.str(what)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// magic reads the first number and turns a wrong one (or a short read)
// into a mismatchError that quotes what arrived.
func (w *wireReader) magic(what string, want uint64) error {
	got, err := w.num(what + " magic")
	if err == nil && got == want {
		return nil
	}
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		return err
	}
	return &mismatchError{What: what, Got: bytes.Clone(w.seen)}
}

func putNums(w io.Writer, nums ...uint64) error {
	b := make([]byte, 0, 8*len(nums))
	for _, n := range nums {
		b = binary.LittleEndian.AppendUint64(b, n)
	}
	_, err := w.Write(b)
	return err
}
