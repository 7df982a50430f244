package discover

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/google/renameio/v2"
	"golang.org/x/crypto/ssh"
)

// DefaultSSHKey is where the client keeps its SSH identity.
const DefaultSSHKey = "/var/lib/nixrb-discover/id_ed25519"

// Identity is the client's SSH identity: the key Nix logs in with (field 3
// of the machines file) and the health check uses.
type Identity struct {
	// Path is the private key file.
	Path string
	// Signer signs with it.
	Signer ssh.Signer
	// AuthorizedKey is the public key line, e.g. "ssh-ed25519 AAAA… nixrb-discover@host".
	AuthorizedKey string
	// Fingerprint is the SHA256 fingerprint of the public key.
	Fingerprint string
	// Created says the key was made now, because none existed.
	Created bool
}

// LoadOrCreateIdentity reads the OpenSSH private key at path, or creates
// an ed25519 one (mode 0600, its directory 0700, the public key next to it
// as path.pub) if there is none. A passphrase-protected key is an error:
// nix-daemon cannot type a passphrase. So is a key of ours that group or
// others may read: OpenSSH (so Nix) ignores it ("UNPROTECTED PRIVATE KEY
// FILE") while our own checks, which read it directly, would pass.
func LoadOrCreateIdentity(path, comment string) (*Identity, error) {
	pemBytes, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return createIdentity(path, comment)
	}
	if err != nil {
		return nil, fmt.Errorf("ssh identity %s: %w", path, err)
	}
	if err := checkKeyMode(path); err != nil {
		return nil, err
	}
	signer, err := ssh.ParsePrivateKey(pemBytes)
	var missing *ssh.PassphraseMissingError
	if errors.As(err, &missing) {
		return nil, fmt.Errorf("ssh identity %s: protected by a passphrase; nix-daemon cannot use it (make a key without one)", path)
	}
	if err != nil {
		return nil, fmt.Errorf("ssh identity %s: %w", path, err)
	}
	return identityOf(path, signer, comment, false), nil
}

func createIdentity(path, comment string) (*Identity, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create ssh identity %s: %w", path, err)
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("create ssh identity %s: %w", path, err)
	}
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return nil, fmt.Errorf("create ssh identity %s: %w", path, err)
	}
	if err := renameio.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return nil, fmt.Errorf("create ssh identity %s: %w", path, err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, fmt.Errorf("create ssh identity %s: %w", path, err)
	}
	id := identityOf(path, signer, comment, true)
	if err := renameio.WriteFile(path+".pub", []byte(id.AuthorizedKey+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("create ssh identity %s: %w", path, err)
	}
	return id, nil
}

func identityOf(path string, s ssh.Signer, comment string, created bool) *Identity {
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(s.PublicKey())))
	if comment != "" {
		line += " " + comment
	}
	return &Identity{Path: path, Signer: s, AuthorizedKey: line, Fingerprint: ssh.FingerprintSHA256(s.PublicKey()), Created: created}
}

// checkKeyMode refuses a private key that ssh would ignore: owned by this
// user (OpenSSH's sshkey_perm_ok looks only at those) and readable or
// writable by group or others.
func checkKeyMode(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("ssh identity %s: %w", path, err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || int(st.Uid) != os.Getuid() || fi.Mode().Perm()&0o077 == 0 {
		return nil
	}
	return fmt.Errorf("ssh identity %s: mode %04o lets group or others read it, so ssh (and Nix) would ignore it (\"UNPROTECTED PRIVATE KEY FILE\"); fix: chmod 600 %s", path, fi.Mode().Perm(), path)
}
