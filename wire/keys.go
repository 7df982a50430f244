package wire

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"golang.org/x/crypto/ssh"
)

// FleetKeyComment is the comment of a fleet key written by WriteFleetKey.
const FleetKeyComment = "nixrb-discover fleet key"

// maxKeyFile bounds the size of a key file we read.
const maxKeyFile = 64 << 10

// SigningKey is a fleet private key: builders sign their adverts with it.
type SigningKey struct {
	// KeyID is the short fingerprint of the public half (see [KeyID]).
	KeyID string
	// Private is the ed25519 private key.
	Private ed25519.PrivateKey
}

// TrustKey is a fleet public key: clients accept mDNS adverts it signed.
type TrustKey struct {
	// KeyID is the short fingerprint of Public (see [KeyID]).
	KeyID string
	// Public is the ed25519 public key.
	Public ed25519.PublicKey
}

// KeyID names an ed25519 public key in adverts and logs: the first 16
// characters of its OpenSSH SHA256 fingerprint (what `ssh-keygen -l`
// prints after "SHA256:").
func KeyID(pub ed25519.PublicKey) string {
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		return ""
	}
	return strings.TrimPrefix(ssh.FingerprintSHA256(sp), "SHA256:")[:16]
}

// GenerateFleetKey makes a new random fleet key.
func GenerateFleetKey() (*SigningKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate fleet key: %w", err)
	}
	return newSigningKey(priv), nil
}

func newSigningKey(priv ed25519.PrivateKey) *SigningKey {
	return &SigningKey{KeyID: KeyID(priv.Public().(ed25519.PublicKey)), Private: priv}
}

// TrustKey is the public half of k, as clients configure it.
func (k *SigningKey) TrustKey() TrustKey {
	return TrustKey{KeyID: k.KeyID, Public: k.Private.Public().(ed25519.PublicKey)}
}

// String is t as one authorized_keys line with the fleet key comment
// (what WriteFleetKey writes to the .pub file), without a newline.
func (t TrustKey) String() string {
	sp, err := ssh.NewPublicKey(t.Public)
	if err != nil {
		return ""
	}
	return CanonicalHostKey(sp) + " " + FleetKeyComment
}

// WriteFleetKey writes k to privPath (OpenSSH private key format, mode
// 0600) and its public half to privPath+".pub" (one authorized_keys line,
// mode 0644). It refuses to overwrite either file.
func (k *SigningKey) WriteFleetKey(privPath string) error {
	pubPath := privPath + ".pub"
	for _, p := range []string{privPath, pubPath} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("write fleet key: %s already exists: %w", p, fs.ErrExist)
		}
	}
	block, err := ssh.MarshalPrivateKey(k.Private, FleetKeyComment)
	if err != nil {
		return fmt.Errorf("write fleet key: %w", err)
	}
	if err := writeNew(privPath, pem.EncodeToMemory(block), 0o600); err != nil {
		return fmt.Errorf("write fleet key: %w", err)
	}
	if err := writeNew(pubPath, []byte(k.TrustKey().String()+"\n"), 0o644); err != nil {
		os.Remove(privPath)
		return fmt.Errorf("write fleet key: %w", err)
	}
	return nil
}

// writeNew creates path (which must not exist), writes b and syncs it.
func writeNew(path string, b []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}

// LoadSigningKey reads a fleet private key written by WriteFleetKey (or by
// `ssh-keygen -t ed25519 -N ""`). Like OpenSSH, it refuses a file that
// other users may read.
func LoadSigningKey(path string) (*SigningKey, error) {
	b, fi, err := ReadKeyFile(path)
	if err != nil {
		return nil, fmt.Errorf("load fleet key: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("load fleet key: %s has mode %04o: others may read it (chmod 600 %s)", path, fi.Mode().Perm(), path)
	}
	raw, err := ssh.ParseRawPrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("load fleet key %s: %w", path, err)
	}
	switch p := raw.(type) {
	case *ed25519.PrivateKey:
		return newSigningKey(*p), nil
	case ed25519.PrivateKey:
		return newSigningKey(p), nil
	default:
		return nil, fmt.Errorf("load fleet key %s: a %T, want an ed25519 key", path, raw)
	}
}

// ParseTrustKey parses one authorized_keys line holding an ed25519 fleet
// public key (the comment is ignored).
func ParseTrustKey(line string) (TrustKey, error) {
	pub, _, options, rest, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		return TrustKey{}, fmt.Errorf("parse fleet key: %w", err)
	}
	if len(options) > 0 || len(bytes.TrimSpace(rest)) > 0 {
		return TrustKey{}, errors.New("parse fleet key: want exactly one key without options")
	}
	cp, ok := pub.(ssh.CryptoPublicKey)
	if !ok || pub.Type() != ssh.KeyAlgoED25519 {
		return TrustKey{}, fmt.Errorf("parse fleet key: a %s key, want %s", pub.Type(), ssh.KeyAlgoED25519)
	}
	edPub, ok := cp.CryptoPublicKey().(ed25519.PublicKey)
	if !ok {
		return TrustKey{}, fmt.Errorf("parse fleet key: want %s", ssh.KeyAlgoED25519)
	}
	return TrustKey{KeyID: KeyID(edPub), Public: edPub}, nil
}

// LoadTrustKey reads a fleet public key file (the .pub that WriteFleetKey
// writes): one key line; blank lines and # comments are ignored.
func LoadTrustKey(path string) (TrustKey, error) {
	b, _, err := ReadKeyFile(path)
	if err != nil {
		return TrustKey{}, fmt.Errorf("load fleet public key: %w", err)
	}
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 {
		return TrustKey{}, fmt.Errorf("load fleet public key %s: %d key lines, want 1", path, len(lines))
	}
	t, err := ParseTrustKey(lines[0])
	if err != nil {
		return TrustKey{}, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// ReadKeyFile reads a key file (a fleet key, a trust key or an SSH host
// public key) of at most a few KiB, and returns its bytes and file info.
func ReadKeyFile(path string) ([]byte, fs.FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	b, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return nil, nil, err
	}
	if len(b) > maxKeyFile {
		return nil, nil, fmt.Errorf("%s: more than %d bytes", path, maxKeyFile)
	}
	return b, fi, nil
}
