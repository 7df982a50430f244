package health

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// wire builds Nix wire-format bytes.
type wire struct{ bytes.Buffer }

func (w *wire) num(ns ...uint64) *wire {
	for _, n := range ns {
		_ = binary.Write(w, binary.LittleEndian, n)
	}
	return w
}

func (w *wire) str(s string) *wire {
	w.num(uint64(len(s)))
	w.WriteString(s)
	w.Write(make([]byte, (8-len(s)%8)%8))
	return w
}

func (w *wire) strs(ss ...string) *wire {
	w.num(uint64(len(ss)))
	for _, s := range ss {
		w.str(s)
	}
	return w
}

// scriptedDaemon is the server half of the worker handshake written from
// Nix's daemon.cc / worker-protocol-connection.cc (2.26): it checks what
// the client sends, in order, and answers like a daemon of the given
// version would. It exercises the 1.35+ and 1.38 paths that the host's
// Nix 2.8 cannot; the real-daemon tests are in health_test.go.
type scriptedDaemon struct {
	version  uint64
	nix      string
	trusted  uint64 // 0 unknown, 1 trusted, 2 not trusted
	features []string
	log      func(w *wire) // messages before STDERR_LAST (nil: none)
	// legacy daemons (before Nix 2.20) use the client's version as is,
	// without min() and without the feature exchange.
	legacy bool
}

// serve reads the client's half from c and writes the daemon's to w.
func (d scriptedDaemon) serve(t *testing.T, c io.Reader, w io.Writer) {
	t.Helper()
	r := newWireReader(c)
	// A client that gives up early (the error rows) ends the script.
	var stopped bool
	must := func(what string, want uint64) {
		t.Helper()
		got, err := r.num(what)
		switch {
		case err != nil:
			stopped = true
		case got != want:
			t.Errorf("daemon read %s = %#x; want %#x", what, got, want)
		}
	}
	must("magic 1", workerMagic1)
	var out wire
	out.num(workerMagic2, d.version)
	_, _ = w.Write(out.Bytes())
	out.Reset()
	clientVersion, err := r.num("client version")
	if err != nil {
		return
	}
	v := min(clientVersion, d.version)
	if d.legacy {
		v = clientVersion
	}
	if v&0xff >= 38 && !d.legacy {
		if _, err := r.strs("client features"); err != nil {
			return
		}
		out.strs(d.features...)
		_, _ = w.Write(out.Bytes())
		out.Reset()
	}
	if v&0xff >= 14 {
		must("cpu affinity flag", 0)
	}
	if v&0xff >= 11 {
		must("reserve space", 0)
	}
	if stopped {
		return
	}
	if v&0xff >= 33 {
		out.str(d.nix)
	}
	if v&0xff >= 35 {
		out.num(d.trusted)
	}
	if d.log != nil {
		d.log(&out)
	}
	out.num(stderrLast)
	_, _ = w.Write(out.Bytes())
}

// runScripted runs our client, announcing protocol ours, against d over
// OS pipes (buffered, like an SSH channel; io.Pipe would deadlock on
// pipelined writes), every end under a deadline.
func runScripted(t *testing.T, d scriptedDaemon, ours uint64) (workerHello, error) {
	t.Helper()
	c2s, c2sW := mustPipe(t)
	s2c, s2cW := mustPipe(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.serve(t, c2s, s2cW)
		_ = s2cW.Close()
		// Like a daemon at EOF: read what is left, then stop.
		_, _ = io.Copy(io.Discard, c2s)
	}()
	h, err := workerHandshakeAt(c2sW, s2c, ours)
	_ = c2sW.Close()
	_, _ = io.Copy(io.Discard, s2c)
	<-done
	return h, err
}

func mustPipe(t *testing.T) (*os.File, *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	deadline := time.Now().Add(5 * time.Second)
	_ = r.SetDeadline(deadline)
	_ = w.SetDeadline(deadline)
	return r, w
}

// scriptedRow is one daemon and what our client must make of it.
type scriptedRow struct {
	name      string
	d         scriptedDaemon
	wantProto uint64
	wantNix   string
	wantTrust Trusted
	wantErr   string
	wantLog   []string
}

func TestWorkerHandshakeScripted(t *testing.T) {
	for _, tc := range []scriptedRow{
		// Nix 2.8: no trusted flag, so unknown (never a guessed "trusted").
		{name: "nix-2.8-1.34", d: scriptedDaemon{version: 1<<8 | 34, nix: "2.8.0", trusted: 9},
			wantProto: 1<<8 | 34, wantNix: "2.8.0", wantTrust: TrustedUnknown},
		// Nix 2.15+: the flag exists; 0 means the daemon does not know.
		{name: "1.35-unknown", d: scriptedDaemon{version: 1<<8 | 35, nix: "2.15.0", trusted: 0},
			wantProto: 1<<8 | 35, wantNix: "2.15.0", wantTrust: TrustedUnknown},
		// Nix 2.26: feature exchange, then version and trust.
		{name: "nix-2.26-1.38-trusted", d: scriptedDaemon{version: 1<<8 | 38, nix: "2.26.3", trusted: 1, features: []string{"some-feature"}},
			wantProto: 1<<8 | 38, wantNix: "2.26.3", wantTrust: TrustedYes},
		{name: "nix-2.26-1.38-not-trusted", d: scriptedDaemon{version: 1<<8 | 38, nix: "2.26.3", trusted: 2},
			wantProto: 1<<8 | 38, wantNix: "2.26.3", wantTrust: TrustedNo},
		// A newer daemon talks our 1.38.
		{name: "newer-daemon-1.40", d: scriptedDaemon{version: 1<<8 | 40, nix: "2.33.0", trusted: 1},
			wantProto: 1<<8 | 40, wantNix: "2.33.0", wantTrust: TrustedYes},
		// An old daemon before the version string.
		{name: "old-1.21", d: scriptedDaemon{version: 1<<8 | 21}, wantProto: 1<<8 | 21},
		{name: "invalid-trusted-flag", d: scriptedDaemon{version: 1<<8 | 38, nix: "x", trusted: 7}, wantErr: "invalid trusted flag"},
		{name: "log-before-ready", wantProto: 1<<8 | 34, wantNix: "2.8.0",
			d: scriptedDaemon{version: 1<<8 | 34, nix: "2.8.0", log: func(w *wire) {
				w.num(stderrNext).str("warning: something\n")
				w.num(stderrStartActivity, 1, 3, 0).str("act").num(2, 0, 5, 1).str("f").num(0)
				w.num(stderrResult, 1, 101).num(1, 1).str("x")
				w.num(stderrStopActivity, 1)
				w.num(stderrWrite).str("data")
			}},
			wantLog: []string{"warning: something"}},
		{name: "startup-error-1.26-format", wantErr: "remote nix: cannot open the store",
			d: scriptedDaemon{version: 1<<8 | 34, nix: "2.8.0", log: func(w *wire) {
				w.num(stderrError).str("Error").num(0).str("Error").str("cannot open the store").num(0, 0)
			}}},
		{name: "startup-error-old-format", wantErr: "remote nix: old failure",
			d: scriptedDaemon{version: 1<<8 | 21, log: func(w *wire) {
				w.num(stderrError).str("old failure").num(1)
			}}},
		{name: "asks-for-input", wantErr: "asked for data",
			d: scriptedDaemon{version: 1<<8 | 34, nix: "2.8.0", log: func(w *wire) { w.num(stderrRead, 8) }}},
		{name: "unknown-message", wantErr: "unknown log message type",
			d: scriptedDaemon{version: 1<<8 | 34, nix: "2.8.0", log: func(w *wire) { w.num(0x1234) }}},
		{name: "too-old", d: scriptedDaemon{version: 1<<8 | 9}, wantErr: "too old"},
		{name: "wrong-major", d: scriptedDaemon{version: 2<<8 | 34}, wantErr: "unsupported daemon protocol"},
	} {
		// Each row as we speak (1.37) and at 1.38, the feature exchange.
		for _, ours := range []uint64{workerClientVersion, workerMaxVersion} {
			t.Run(tc.name+"/client-"+formatProtoVersion(ours), func(t *testing.T) {
				tc.check(t, ours)
			})
		}
	}
}

func (tc scriptedRow) check(t *testing.T, ours uint64) {
	h, err := runScripted(t, tc.d, ours)
	if tc.wantErr != "" {
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Fatalf("err = %v, want %q", err, tc.wantErr)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if h.DaemonVersion != tc.wantProto || h.NixVersion != tc.wantNix || h.Trusted != tc.wantTrust {
		t.Errorf("got %s %q %v, want %s %q %v", formatProtoVersion(h.DaemonVersion), h.NixVersion, h.Trusted,
			formatProtoVersion(tc.wantProto), tc.wantNix, tc.wantTrust)
	}
	if h.Version != min(tc.wantProto, ours) {
		t.Errorf("negotiated %s, want %s", formatProtoVersion(h.Version), formatProtoVersion(min(tc.wantProto, ours)))
	}
	if strings.Join(h.Log, "|") != strings.Join(tc.wantLog, "|") {
		t.Errorf("log = %q, want %q", h.Log, tc.wantLog)
	}
}

// TestWorkerHandshakeLegacy138 is why we announce 1.37: a daemon build
// that announced 1.38 without the feature exchange (and, like daemons
// before Nix 2.20, used the client's version as is) still answers us
// right.
func TestWorkerHandshakeLegacy138(t *testing.T) {
	d := scriptedDaemon{version: 1<<8 | 38, nix: "2.21.0pre", trusted: 1, legacy: true}
	h, err := runScripted(t, d, workerClientVersion)
	if err != nil || h.NixVersion != "2.21.0pre" || h.Trusted != TrustedYes {
		t.Fatalf("got %+v, %v", h, err)
	}
}

// TestWorkerHandshakeClientBytes pins what we send, per Nix's client:
// magic and version, [features at 1.38], CPU affinity 0, reserveSpace 0.
func TestWorkerHandshakeClientBytes(t *testing.T) {
	for _, tc := range []struct {
		ours, daemon uint64
		want         []uint64
	}{
		{workerClientVersion, 1<<8 | 34, []uint64{workerMagic1, 1<<8 | 37, 0, 0}},
		{workerClientVersion, 1<<8 | 38, []uint64{workerMagic1, 1<<8 | 37, 0, 0}},
		{workerMaxVersion, 1<<8 | 38, []uint64{workerMagic1, 1<<8 | 38, 0 /* no features */, 0, 0}},
		{workerClientVersion, 1<<8 | 12, []uint64{workerMagic1, 1<<8 | 37, 0}},
	} {
		v := min(tc.ours, tc.daemon) & 0xff
		var in wire
		in.num(workerMagic2, tc.daemon)
		if v >= 38 {
			in.strs()
		}
		if v >= 33 {
			in.str("v")
		}
		if v >= 35 {
			in.num(0)
		}
		in.num(stderrLast)
		var out bytes.Buffer
		if _, err := workerHandshakeAt(&out, &in, tc.ours); err != nil {
			t.Fatalf("%s: %v", formatProtoVersion(tc.daemon), err)
		}
		var want wire
		want.num(tc.want...)
		if !bytes.Equal(out.Bytes(), want.Bytes()) {
			t.Errorf("%s: sent %x, want %x", formatProtoVersion(tc.daemon), out.Bytes(), want.Bytes())
		}
	}
}

func TestWireBounds(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   *wire
		want string
	}{
		{"huge-string", new(wire).num(workerMagic2, 1<<8|34).num(1 << 62), "over limit"},
		{"string-just-over", new(wire).num(workerMagic2, 1<<8|34).num(maxWireString + 1), "over limit"},
		{"huge-feature-list", new(wire).num(workerMagic2, 1<<8|38).num(1 << 40), "over limit"},
		{"non-zero-padding", func() *wire {
			w := new(wire).num(workerMagic2, 1<<8|34, 3)
			w.WriteString("abcXXXXX")
			return w
		}(), "non-zero padding"},
		{"endless-log", func() *wire {
			w := new(wire).num(workerMagic2, 1<<8|34).str("2.8.0")
			for range maxHelloLog + 1 {
				w.num(stderrStopActivity, 1)
			}
			return w
		}(), "more than"},
		{"truncated", new(wire).num(workerMagic2, 1<<8|34).num(5), "read daemon nix version: EOF"},
		{"garbage", func() *wire { w := new(wire); w.WriteString("Welcome to the builder\n"); return w }(), `got "Welcome `},
		{"empty", new(wire), "without answering"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := workerHandshake(io.Discard, tc.in)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestServeHandshake(t *testing.T) {
	var out bytes.Buffer
	h, err := serveHandshake(&out, new(wire).num(serveMagic2, 2<<8|7))
	if err != nil || h.Version != 2<<8|7 {
		t.Fatalf("got %#x, %v", h.Version, err)
	}
	if want := new(wire).num(serveMagic1, serveClientVersion); !bytes.Equal(out.Bytes(), want.Bytes()) {
		t.Errorf("sent %x, want %x", out.Bytes(), want.Bytes())
	}
	if _, err := serveHandshake(io.Discard, new(wire).num(serveMagic2, 3<<8|1)); err == nil {
		t.Error("accepted serve protocol 3.1")
	}
	_, err = serveHandshake(io.Discard, new(wire).num(workerMagic2, 1))
	var me *mismatchError
	if !errors.As(err, &me) {
		t.Errorf("wrong magic: err = %v, want a mismatch", err)
	}
}

// TestFuzzSeedsParse keeps the real captures in the fuzz corpus honest:
// the Nix 2.8 capture must parse as 1.34 / "2.8.0".
func TestFuzzSeedsParse(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("testdata", "nix-2.8-daemon-hello.bin"))
	if err != nil {
		t.Fatal(err)
	}
	h, err := workerHandshake(io.Discard, bytes.NewReader(b))
	if err != nil || h.DaemonVersion != 1<<8|34 || h.NixVersion != "2.8.0" || h.Trusted != TrustedUnknown {
		t.Fatalf("got %+v, %v", h, err)
	}
}

func FuzzReadWorkerHello(f *testing.F) {
	if b, err := os.ReadFile(filepath.Join("testdata", "nix-2.8-daemon-hello.bin")); err == nil {
		f.Add(b)
	}
	f.Add(new(wire).num(workerMagic2, 1<<8|38).strs("a").str("2.26.3").num(2, stderrLast).Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, ours := range []uint64{workerClientVersion, workerMaxVersion} {
			h, err := workerHandshakeAt(io.Discard, bytes.NewReader(data), ours)
			if err == nil && (h.Version > ours || h.DaemonVersion < workerMinVersion) {
				t.Fatalf("accepted version %#x / %#x", h.Version, h.DaemonVersion)
			}
			if len(h.Log) > keptHelloLines || len(h.NixVersion) > maxWireString || len(h.Features) > maxWireList {
				t.Fatalf("kept too much: %d lines, %d bytes, %d features", len(h.Log), len(h.NixVersion), len(h.Features))
			}
		}
	})
}

func FuzzReadServeHello(f *testing.F) {
	f.Add(new(wire).num(serveMagic2, 2<<8|7).Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := serveHandshake(io.Discard, bytes.NewReader(data))
		if err == nil && h.Version>>8 != 2 {
			t.Fatalf("accepted version %#x", h.Version)
		}
	})
}
