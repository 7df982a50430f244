package health

// This file speaks the first few messages of Nix's two remote protocols,
// exactly as a Nix client does when it starts a remote build:
//
//   - ssh-ng: the worker protocol of `nix-daemon --stdio`
//     (libstore/worker-protocol.hh, worker-protocol-connection.cc,
//     remote-store.cc initConnection, daemon.cc processConnection);
//   - ssh: the serve protocol of `nix-store --serve --write`
//     (libstore/serve-protocol.hh, serve-protocol-connection.cc,
//     legacy-ssh-store.cc, nix-store.cc opServe).
//
// Every number on the wire is a little-endian uint64; a string is its
// length as a uint64, the bytes, and zero padding to a multiple of 8.
// Every read here is bounded (string length, list length, message count
// and total bytes), so a broken or hostile remote cannot make a check
// allocate without bound; the caller bounds the time.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
)

// Wire constants from Nix's worker-protocol.hh and serve-protocol.hh.
const (
	workerMagic1 = 0x6e697863 // client → daemon
	workerMagic2 = 0x6478696f // daemon → client
	serveMagic1  = 0x390c9deb // client → nix-store --serve
	serveMagic2  = 0x5452eecb // nix-store --serve → client

	stderrNext          = 0x6f6c6d67
	stderrRead          = 0x64617461
	stderrWrite         = 0x64617416
	stderrLast          = 0x616c7473
	stderrError         = 0x63787470
	stderrStartActivity = 0x53545254
	stderrStopActivity  = 0x53544f50
	stderrResult        = 0x52534c54
)

// Protocol versions: major in the high byte, minor in the low byte.
const (
	// workerClientVersion is the worker protocol we announce. 1.37 gets
	// everything a check needs (Nix version from 1.33, trusted flag from
	// 1.35) from every daemon: a 1.38+ daemon (Nix 2.24+, 2.26 announces
	// 1.38) negotiates down to it. We stop short of 1.38 on purpose: it
	// adds only the feature exchange, whose framing a daemon build that
	// announced 1.38 without it (cachix/devenv#1364) would misread, and a
	// check must not fail a builder that Nix itself can use.
	// workerHandshakeAt speaks 1.38 too (tested against a scripted 1.38
	// daemon), should we ever need it.
	workerClientVersion = 1<<8 | 37
	// workerMaxVersion is the newest protocol the code here implements.
	workerMaxVersion = 1<<8 | 38
	// workerMinVersion is the oldest daemon a Nix client accepts.
	workerMinVersion = 1<<8 | 10
	// serveClientVersion is the serve protocol we announce (2.7, as Nix
	// 2.8 through 2.26 do).
	serveClientVersion = 2<<8 | 7
)

// Bounds on what a remote may send during a handshake.
const (
	maxWireString  = 64 << 10 // one string
	maxWireList    = 1024     // features, log fields
	maxHelloLog    = 1024     // log messages before STDERR_LAST
	maxHelloBytes  = 1 << 20  // everything read in one handshake
	keptHelloLines = 8        // STDERR_NEXT lines kept for reports
	mismatchPrefix = 64       // bytes of garbage quoted in a mismatch
)

// workerHello is what a nix-daemon tells its client during the handshake.
type workerHello struct {
	// DaemonVersion is the protocol version the daemon announced.
	DaemonVersion uint64
	// Version is the version both sides use: min(daemon, ours).
	Version uint64
	// NixVersion is the daemon's Nix version (protocol 1.33 and later).
	NixVersion string
	// Trusted is the daemon's view of us (protocol 1.35 and later).
	Trusted Trusted
	// Features is what the daemon offered (protocol 1.38 and later).
	Features []string
	// Log holds the first log lines the daemon sent before it was ready.
	Log []string
}

// serveHello is what `nix-store --serve` tells its client.
type serveHello struct {
	// Version is the serve protocol version the remote announced.
	Version uint64
}

// workerHandshake runs the client side of the worker protocol handshake
// (what a Nix client does right after starting `nix-daemon --stdio`) and
// returns once the daemon says it is ready (STDERR_LAST).
func workerHandshake(w io.Writer, r io.Reader) (workerHello, error) {
	return workerHandshakeAt(w, r, workerClientVersion)
}

// workerHandshakeAt is workerHandshake announcing protocol ours (at most
// workerMaxVersion).
func workerHandshakeAt(w io.Writer, r io.Reader, ours uint64) (workerHello, error) {
	ours = min(ours, workerMaxVersion)
	var h workerHello
	// Like recent Nix clients, send the magic and our version together: the
	// daemon reads them in order and replies with its own version.
	if err := putNums(w, workerMagic1, ours); err != nil {
		return h, fmt.Errorf("send hello: %w", err)
	}
	wr := newWireReader(r)
	if err := wr.magic("nix-daemon", workerMagic2); err != nil {
		return h, err
	}
	v, err := wr.num("daemon version")
	if err != nil {
		return h, err
	}
	h.DaemonVersion = v
	if v>>8 != ours>>8 || v > 0xffff {
		return h, fmt.Errorf("unsupported daemon protocol version %#x", v)
	}
	if v < workerMinVersion {
		return h, fmt.Errorf("daemon protocol %s is too old", formatProtoVersion(v))
	}
	h.Version = min(v, ours)
	minor := h.Version & 0xff
	if minor >= 38 {
		// Feature exchange: we offer none, the daemon lists its own.
		if err := putNums(w, 0); err != nil {
			return h, fmt.Errorf("send features: %w", err)
		}
		if h.Features, err = wr.strs("daemon features"); err != nil {
			return h, err
		}
	}
	var post []uint64
	if minor >= 14 {
		post = append(post, 0) // obsolete CPU affinity: none
	}
	if minor >= 11 {
		post = append(post, 0) // obsolete reserveSpace: false
	}
	if err := putNums(w, post...); err != nil {
		return h, fmt.Errorf("send options: %w", err)
	}
	if minor >= 33 {
		if h.NixVersion, err = wr.str("daemon nix version"); err != nil {
			return h, err
		}
	}
	if minor >= 35 {
		t, err := wr.num("trusted flag")
		if err != nil {
			return h, err
		}
		switch t {
		case 0:
			h.Trusted = TrustedUnknown
		case 1:
			h.Trusted = TrustedYes
		case 2:
			h.Trusted = TrustedNo
		default:
			return h, fmt.Errorf("invalid trusted flag %d", t)
		}
	}
	h.Log, err = readStderr(wr, h.Version)
	return h, err
}

// readStderr reads the daemon's log stream up to STDERR_LAST, as
// processStderr does, keeping the first few plain log lines.
func readStderr(wr *wireReader, version uint64) ([]string, error) {
	var lines []string
	for range maxHelloLog {
		msg, err := wr.num("log message type")
		if err != nil {
			return lines, err
		}
		switch msg {
		case stderrLast:
			return lines, nil
		case stderrNext:
			s, err := wr.str("log line")
			if err != nil {
				return lines, err
			}
			if len(lines) < keptHelloLines {
				lines = append(lines, string(bytes.TrimRight([]byte(s), "\n")))
			}
		case stderrWrite:
			if _, err := wr.str("log data"); err != nil {
				return lines, err
			}
		case stderrRead:
			return lines, errors.New("daemon asked for data during the handshake")
		case stderrError:
			return lines, readRemoteError(wr, version)
		case stderrStartActivity:
			// id, level, type, text, fields, parent
			if err := skipNums(wr, "activity", 3); err != nil {
				return lines, err
			}
			if _, err := wr.str("activity text"); err != nil {
				return lines, err
			}
			if err := skipFields(wr); err != nil {
				return lines, err
			}
			if err := skipNums(wr, "activity parent", 1); err != nil {
				return lines, err
			}
		case stderrStopActivity:
			if err := skipNums(wr, "activity id", 1); err != nil {
				return lines, err
			}
		case stderrResult:
			// id, result type, fields
			if err := skipNums(wr, "result", 2); err != nil {
				return lines, err
			}
			if err := skipFields(wr); err != nil {
				return lines, err
			}
		default:
			return lines, fmt.Errorf("unknown log message type %#x", msg)
		}
	}
	return lines, fmt.Errorf("more than %d log messages before the daemon was ready", maxHelloLog)
}

// readRemoteError reads an STDERR_ERROR body far enough to get its
// message. From protocol 1.26 it is a serialised Error ("Error", level,
// name, message, ...); before, a message and an exit status. The rest
// (positions, traces) is not read: the daemon is done with us anyway.
func readRemoteError(wr *wireReader, version uint64) error {
	if version&0xff < 26 {
		msg, err := wr.str("error message")
		if err != nil {
			return err
		}
		return &remoteError{Msg: msg}
	}
	typ, err := wr.str("error type")
	if err != nil {
		return err
	}
	if typ != "Error" {
		return fmt.Errorf("unknown error type %q", typ)
	}
	if err := skipNums(wr, "error level", 1); err != nil {
		return err
	}
	if _, err := wr.str("error name"); err != nil {
		return err
	}
	msg, err := wr.str("error message")
	if err != nil {
		return err
	}
	return &remoteError{Msg: msg}
}

func skipNums(wr *wireReader, what string, n int) error {
	for range n {
		if _, err := wr.num(what); err != nil {
			return err
		}
	}
	return nil
}

// skipFields reads a Logger::Fields list: count, then (type, value) pairs
// where type 0 is an integer and type 1 a string.
func skipFields(wr *wireReader) error {
	n, err := wr.num("field count")
	if err != nil {
		return err
	}
	if n > maxWireList {
		return fmt.Errorf("read fields: count %d over limit %d", n, maxWireList)
	}
	for range n {
		typ, err := wr.num("field type")
		if err != nil {
			return err
		}
		switch typ {
		case 0:
			_, err = wr.num("field value")
		case 1:
			_, err = wr.str("field value")
		default:
			err = fmt.Errorf("unknown field type %d", typ)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// serveHandshake runs the client side of the serve protocol handshake
// (what Nix does right after starting `nix-store --serve --write`).
func serveHandshake(w io.Writer, r io.Reader) (serveHello, error) {
	var h serveHello
	if err := putNums(w, serveMagic1, serveClientVersion); err != nil {
		return h, fmt.Errorf("send hello: %w", err)
	}
	wr := newWireReader(r)
	if err := wr.magic("nix-store --serve", serveMagic2); err != nil {
		return h, err
	}
	v, err := wr.num("serve version")
	if err != nil {
		return h, err
	}
	h.Version = v
	if v>>8 != 2 || v > 0xffff {
		return h, fmt.Errorf("unsupported serve protocol version %#x", v)
	}
	return h, nil
}
