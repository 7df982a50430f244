package demo

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"

	"golang.org/x/crypto/ssh"
)

// SimulatedNixVersion is the Nix version the simulated daemon reports, so
// that nobody mistakes it for a real one.
const SimulatedNixVersion = "simulated"

// Worker protocol constants (Nix's worker-protocol.hh), as the client
// side in discover/nixproto.go uses them.
const (
	workerMagic1 = 0x6e697863 // client → daemon
	workerMagic2 = 0x6478696f // daemon → client
	stderrLast   = 0x616c7473
	// daemonVersion is the worker protocol the simulated daemon speaks:
	// 1.37 (Nix 2.20 to 2.23), which has the Nix version (1.33) and the
	// trusted flag (1.35) but no feature exchange (1.38).
	daemonVersion = 1<<8 | 37
)

// sshEndpoint is the simulated SSH side of a builder: a real SSH server
// (golang.org/x/crypto/ssh) with the builder's host key that lets in one
// client key and answers `nix-daemon --stdio` with the real worker
// protocol handshake. It cannot build: after the handshake it only waits
// for the client to hang up.
type sshEndpoint struct {
	ln  net.Listener
	cfg *ssh.ServerConfig

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	killed bool
	wg     sync.WaitGroup
}

// serveSSH serves the simulated endpoint on ln until kill.
func serveSSH(ln net.Listener, hostKey ssh.Signer, clientKey ssh.PublicKey) *sshEndpoint {
	want := clientKey.Marshal()
	cfg := &ssh.ServerConfig{
		PublicKeyCallback: func(_ ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
			if bytes.Equal(k.Marshal(), want) {
				return &ssh.Permissions{}, nil
			}
			return nil, errors.New("unknown public key")
		},
		ServerVersion: "SSH-2.0-nixrb-demo_simulated",
	}
	cfg.AddHostKey(hostKey)
	e := &sshEndpoint{ln: ln, cfg: cfg, conns: make(map[net.Conn]struct{})}
	e.wg.Go(e.accept)
	return e
}

func (e *sshEndpoint) accept() {
	for {
		c, err := e.ln.Accept()
		if err != nil {
			return
		}
		e.mu.Lock()
		if e.killed {
			e.mu.Unlock()
			c.Close()
			return
		}
		e.conns[c] = struct{}{}
		e.mu.Unlock()
		e.wg.Go(func() {
			defer func() {
				e.mu.Lock()
				delete(e.conns, c)
				e.mu.Unlock()
				c.Close()
			}()
			e.serveConn(c)
		})
	}
}

// kill stops the endpoint abruptly, like `kill -9` of sshd and its
// sessions: the port closes and every open connection drops.
func (e *sshEndpoint) kill() {
	e.mu.Lock()
	e.killed = true
	e.ln.Close()
	for c := range e.conns {
		c.Close()
	}
	e.mu.Unlock()
	e.wg.Wait()
}

func (e *sshEndpoint) serveConn(c net.Conn) {
	sc, chans, reqs, err := ssh.NewServerConn(c, e.cfg)
	if err != nil {
		return // a banner probe, or a refused key
	}
	defer sc.Close()
	go ssh.DiscardRequests(reqs) // keepalive@openssh.com gets its reply
	var wg sync.WaitGroup
	defer wg.Wait()
	for nc := range chans {
		if nc.ChannelType() != "session" {
			_ = nc.Reject(ssh.UnknownChannelType, "only sessions")
			continue
		}
		ch, creqs, err := nc.Accept()
		if err != nil {
			continue
		}
		wg.Go(func() { serveSession(ch, creqs) })
	}
}

// serveSession runs one exec request: `nix-daemon --stdio` gets the
// simulated daemon, anything else "command not found" (exit 127), as a
// builder without that program would answer.
func serveSession(ch ssh.Channel, reqs <-chan *ssh.Request) {
	defer ch.Close()
	for req := range reqs {
		if req.Type != "exec" {
			_ = req.Reply(false, nil)
			continue
		}
		var exec struct{ Command string }
		if err := ssh.Unmarshal(req.Payload, &exec); err != nil {
			_ = req.Reply(false, nil)
			return
		}
		_ = req.Reply(true, nil)
		status := uint32(0)
		if exec.Command == "nix-daemon --stdio" {
			if err := serveNixDaemon(ch); err != nil {
				fmt.Fprintf(ch.Stderr(), "error: %v\n", err)
				status = 1
			}
		} else {
			fmt.Fprintf(ch.Stderr(), "sh: 1: %s: not found (this demo endpoint only answers the Nix handshake)\n", exec.Command)
			status = 127
		}
		_, _ = ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{status}))
		return
	}
}

// serveNixDaemon is the daemon side of the worker protocol handshake, as
// Nix's daemon.cc processConnection runs it: read the client's magic,
// answer with ours and our version, read the client's version and its
// obsolete options, send our Nix version and the trusted flag, then
// STDERR_LAST (ready). Then it waits for the client to close its end, as
// `nix-daemon --stdio` does when a check hangs up without a request.
func serveNixDaemon(rw io.ReadWriter) error {
	r := bufio.NewReader(rw)
	num := func() (uint64, error) {
		var b [8]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, err
		}
		return binary.LittleEndian.Uint64(b[:]), nil
	}
	var out bytes.Buffer
	put := func(ns ...uint64) {
		for _, n := range ns {
			_ = binary.Write(&out, binary.LittleEndian, n)
		}
	}
	flush := func() error {
		_, err := rw.Write(out.Bytes())
		out.Reset()
		return err
	}

	if m, err := num(); err != nil || m != workerMagic1 {
		return fmt.Errorf("protocol mismatch (magic %#x, %v)", m, err)
	}
	put(workerMagic2, daemonVersion)
	if err := flush(); err != nil {
		return err
	}
	client, err := num()
	if err != nil {
		return err
	}
	if client>>8 != 1 || client&0xff < 10 {
		return fmt.Errorf("unsupported client protocol version %#x", client)
	}
	minor := min(client, daemonVersion) & 0xff
	if minor >= 14 {
		affinity, err := num()
		if err != nil {
			return err
		}
		if affinity != 0 {
			if _, err := num(); err != nil {
				return err
			}
		}
	}
	if minor >= 11 {
		if _, err := num(); err != nil { // reserveSpace
			return err
		}
	}
	if minor >= 33 {
		put(uint64(len(SimulatedNixVersion)))
		out.WriteString(SimulatedNixVersion)
		out.Write(make([]byte, (8-len(SimulatedNixVersion)%8)%8))
	}
	if minor >= 35 {
		put(1) // trusted
	}
	put(stderrLast)
	if err := flush(); err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, r)
	return nil
}
