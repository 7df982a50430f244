package mdns

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/crypto/ssh"
)

// Limits on pin input, so that a huge or hostile file cannot exhaust
// memory.
const (
	// MaxPinFileBytes bounds a known_hosts file read by LoadPinFile.
	MaxPinFileBytes = 4 << 20
	// MaxPins bounds the number of pinned keys.
	MaxPins = 100000
	// maxKnownHostsLine bounds one known_hosts line (an RSA-16384 key
	// line is ~2.8 KB).
	maxKnownHostsLine = 16 << 10
)

// Pins are SSH host keys pinned to host names, from `--pin NAME=KEYLINE`
// flags and known_hosts-format `--pin-file`s. An mDNS advert whose host key
// equals a pin for its instance name is trusted even when unsigned. The
// zero value has no pins; Pins is not safe for concurrent modification,
// and read-only use after setup is safe.
type Pins struct {
	entries []pin
}

// pin is one known_hosts line (or --pin flag): host patterns and a key.
type pin struct {
	patterns []string     // plain or wildcard patterns, lower case; "!" negates
	hashed   []hashedHost // |1|salt|hash entries
	revoked  bool         // @revoked: this key is never trusted
	key      []byte       // ssh wire form of the key
}

type hashedHost struct{ salt, hash []byte }

// PinMatch is the outcome of checking a host key against the pins.
type PinMatch int

// PinMatch values.
const (
	// PinNone: no pin names this host.
	PinNone PinMatch = iota
	// PinOK: a pin names this host with this key.
	PinOK
	// PinMismatch: pins name this host, but with other keys (or this key
	// is revoked).
	PinMismatch
)

// Len is the number of pinned keys.
func (p *Pins) Len() int {
	if p == nil {
		return 0
	}
	return len(p.entries)
}

// AddFlag adds a `--pin NAME=KEYLINE` value, e.g.
// "b1=ssh-ed25519 AAAA…" (a trailing comment is ignored).
func (p *Pins) AddFlag(s string) error {
	name, keyline, ok := strings.Cut(s, "=")
	name = strings.TrimSpace(name)
	if !ok || name == "" || strings.ContainsAny(name, " \t,*?!|") {
		return fmt.Errorf("pin %q: want NAME=KEYTYPE BASE64", clipPin(s))
	}
	key, err := parseKeyFields(strings.Fields(keyline))
	if err != nil {
		return fmt.Errorf("pin %s: %w", name, err)
	}
	return p.add(pin{patterns: []string{strings.ToLower(name)}, key: key})
}

// LoadPinFile adds the keys of a known_hosts-format file.
func (p *Pins) LoadPinFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("pin file: %w", err)
	}
	defer f.Close()
	if err := p.ParseKnownHosts(f); err != nil {
		return fmt.Errorf("pin file %s: %w", path, err)
	}
	return nil
}

// ParseKnownHosts adds the keys of known_hosts-format input: lines of
// "[@revoked] HOSTS KEYTYPE BASE64 [COMMENT]", where HOSTS is a comma list
// of names, [name]:port, wildcard patterns (*, ?), negations (!pattern)
// or hashed names (|1|salt|hash). @cert-authority lines are skipped (a CA
// does not pin a key). At most MaxPinFileBytes are read; errors carry the
// line number.
func (p *Pins) ParseKnownHosts(r io.Reader) error {
	lr := &io.LimitedReader{R: r, N: MaxPinFileBytes + 1}
	sc := bufio.NewScanner(lr)
	sc.Buffer(make([]byte, 0, 4096), maxKnownHostsLine)
	line := 0
	for sc.Scan() {
		line++
		if err := p.parseKnownHostsLine(sc.Text()); err != nil {
			return fmt.Errorf("line %d: %w", line, err)
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return fmt.Errorf("line %d: longer than %d bytes", line+1, maxKnownHostsLine)
		}
		return fmt.Errorf("read: %w", err)
	}
	if lr.N <= 0 {
		return fmt.Errorf("more than %d bytes", MaxPinFileBytes)
	}
	return nil
}

func (p *Pins) parseKnownHostsLine(s string) error {
	s = strings.TrimSpace(s)
	if s == "" || s[0] == '#' {
		return nil
	}
	f := strings.Fields(s)
	var pn pin
	if strings.HasPrefix(f[0], "@") {
		switch f[0] {
		case "@cert-authority":
			return nil
		case "@revoked":
			pn.revoked = true
		default:
			return fmt.Errorf("unknown marker %q", clipPin(f[0]))
		}
		f = f[1:]
	}
	if len(f) < 3 {
		return errors.New("want HOSTS KEYTYPE BASE64")
	}
	for _, h := range strings.Split(f[0], ",") {
		if h == "" {
			continue
		}
		if strings.HasPrefix(h, "|1|") {
			parts := strings.Split(h[3:], "|")
			if len(parts) != 2 {
				return errors.New("bad hashed host name")
			}
			salt, err1 := base64.StdEncoding.DecodeString(parts[0])
			hash, err2 := base64.StdEncoding.DecodeString(parts[1])
			if err1 != nil || err2 != nil || len(hash) != sha1.Size {
				return errors.New("bad hashed host name")
			}
			pn.hashed = append(pn.hashed, hashedHost{salt: salt, hash: hash})
			continue
		}
		pn.patterns = append(pn.patterns, strings.ToLower(h))
	}
	if len(pn.patterns) == 0 && len(pn.hashed) == 0 {
		return errors.New("no host names")
	}
	key, err := parseKeyFields(f[1:3])
	if err != nil {
		return err
	}
	pn.key = key
	return p.add(pn)
}

func (p *Pins) add(pn pin) error {
	if len(p.entries) >= MaxPins {
		return fmt.Errorf("more than %d pinned keys", MaxPins)
	}
	p.entries = append(p.entries, pn)
	return nil
}

// parseKeyFields parses "KEYTYPE BASE64" into the key's wire form,
// checking that the blob is a key of that type.
func parseKeyFields(f []string) ([]byte, error) {
	if len(f) < 2 {
		return nil, errors.New("want KEYTYPE BASE64")
	}
	blob, err := base64.StdEncoding.DecodeString(f[1])
	if err != nil {
		return nil, fmt.Errorf("key %s: bad base64: %w", clipPin(f[0]), err)
	}
	pub, err := ssh.ParsePublicKey(blob)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", clipPin(f[0]), err)
	}
	if pub.Type() != f[0] {
		return nil, fmt.Errorf("key type %s does not match its data (%s)", clipPin(f[0]), pub.Type())
	}
	return pub.Marshal(), nil
}

// Check says whether hostKey (authorized_keys form "TYPE BASE64") is
// pinned for any of names (compared case-insensitively).
func (p *Pins) Check(hostKey string, names ...string) PinMatch {
	if p.Len() == 0 {
		return PinNone
	}
	key, err := parseKeyFields(strings.Fields(hostKey))
	if err != nil {
		key = nil // an unparseable key matches no pin
	}
	named, ok := false, false
	for i := range p.entries {
		e := &p.entries[i]
		if !e.matchesAny(names) {
			continue
		}
		same := key != nil && bytes.Equal(e.key, key)
		if e.revoked {
			if same {
				return PinMismatch
			}
			continue
		}
		named = true
		ok = ok || same
	}
	switch {
	case ok:
		return PinOK
	case named:
		return PinMismatch
	}
	return PinNone
}

// matchesAny reports whether one of names matches the entry's hosts, as
// OpenSSH does: any positive pattern matches and no negated one does.
func (e *pin) matchesAny(names []string) bool {
	for _, n := range names {
		n = strings.ToLower(n)
		if n == "" {
			continue
		}
		if e.matches(n) {
			return true
		}
	}
	return false
}

func (e *pin) matches(name string) bool {
	pos := false
	for _, pat := range e.patterns {
		neg := strings.HasPrefix(pat, "!")
		pat = strings.TrimPrefix(pat, "!")
		if h, port, ok := strings.Cut(strings.TrimPrefix(pat, "["), "]:"); ok && strings.HasPrefix(pat, "[") {
			pat = h
			_ = port // pins name hosts; the SSH port comes from the advert
		}
		if globMatch(pat, name) {
			if neg {
				return false
			}
			pos = true
		}
	}
	for _, h := range e.hashed {
		m := hmac.New(sha1.New, h.salt)
		m.Write([]byte(name))
		if hmac.Equal(m.Sum(nil), h.hash) {
			pos = true
		}
	}
	return pos
}

// globMatch matches OpenSSH host patterns: * is any run of characters, ?
// is one character. It runs in O(len(pat)*len(s)).
func globMatch(pat, s string) bool {
	px, sx := 0, 0
	nextP, nextS := -1, -1
	for px < len(pat) || sx < len(s) {
		if px < len(pat) {
			switch c := pat[px]; c {
			case '*':
				nextP, nextS = px, sx+1
				px++
				continue
			case '?':
				if sx < len(s) {
					px++
					sx++
					continue
				}
			default:
				if sx < len(s) && s[sx] == c {
					px++
					sx++
					continue
				}
			}
		}
		if nextS > 0 && nextS <= len(s) {
			px, sx = nextP, nextS
			continue
		}
		return false
	}
	return true
}

func clipPin(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}
