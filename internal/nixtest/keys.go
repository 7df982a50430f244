package nixtest

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"strings"

	"golang.org/x/crypto/ssh"
)

// GenerateKey returns a new ed25519 key pair: the private key in OpenSSH
// PEM format (as ssh-keygen writes it) and the public key as one
// authorized_keys line without a trailing newline.
func GenerateKey(comment string) (private []byte, public string, err error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, "", fmt.Errorf("generate ed25519 key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return nil, "", fmt.Errorf("marshal private key: %w", err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return nil, "", fmt.Errorf("marshal public key: %w", err)
	}
	return pem.EncodeToMemory(block), publicLine(sshPub, comment), nil
}

// PublicKeyOf returns the authorized_keys line of an OpenSSH private key.
func PublicKeyOf(private []byte) (string, error) {
	signer, err := ssh.ParsePrivateKey(private)
	if err != nil {
		return "", fmt.Errorf("parse private key: %w", err)
	}
	return publicLine(signer.PublicKey(), ""), nil
}

func publicLine(k ssh.PublicKey, comment string) string {
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
	if comment != "" {
		line += " " + comment
	}
	return line
}
