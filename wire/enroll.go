package wire

import (
	"bytes"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"golang.org/x/crypto/ssh"
)

// Enrolment: a tailnet client POSTs its SSH public key to a builder's
// EnrollPath; the builder identifies the caller with WhoIs and decides by
// its tags.
const (
	// EnrollPath is the URL path a client POSTs its SSH public key to.
	EnrollPath = "/v1/enroll"
	// MaxEnrollRequest bounds an enrolment request body.
	MaxEnrollRequest = 4 << 10
	// minRSABits is the smallest RSA key accepted.
	minRSABits = 2048
)

// EnrollRequest is the body of POST /v1/enroll.
type EnrollRequest struct {
	// PublicKey is one SSH public key: "ssh-ed25519 AAAA… comment".
	PublicKey string `json:"public_key"`
}

// EnrollResponse is the body of a successful enrolment.
type EnrollResponse struct {
	// User is the SSH user the key logs in as.
	User string `json:"user"`
}

// ErrEnrollTooLarge marks a request body over MaxEnrollRequest.
var ErrEnrollTooLarge = fmt.Errorf("request larger than %d bytes", MaxEnrollRequest)

// DecodeEnrollRequest reads an enrolment request (at most
// MaxEnrollRequest bytes of JSON with only "public_key") and returns its
// key, which must be exactly one SSH public key with no options: ed25519,
// ECDSA, or RSA of at least 2048 bits.
func DecodeEnrollRequest(r io.Reader) (ssh.PublicKey, error) {
	body, err := io.ReadAll(io.LimitReader(r, MaxEnrollRequest+1))
	if err != nil {
		return nil, fmt.Errorf("read request: %w", err)
	}
	if len(body) > MaxEnrollRequest {
		return nil, ErrEnrollTooLarge
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var req EnrollRequest
	if err := dec.Decode(&req); err != nil {
		return nil, fmt.Errorf("request is not an enrolment JSON object: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("request has data after its JSON object")
	}
	return ParseEnrollKey(req.PublicKey)
}

// ParseEnrollKey checks one authorized_keys-style public key line (no
// options, one line) against the accepted key types and sizes.
func ParseEnrollKey(line string) (ssh.PublicKey, error) {
	line = strings.TrimSpace(line)
	if line == "" {
		return nil, errors.New("public_key is empty")
	}
	if strings.ContainsAny(line, "\r\n\x00") {
		return nil, errors.New("public_key must be exactly one key on one line")
	}
	k, _, opts, rest, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		return nil, errors.New("public_key is not an SSH public key")
	}
	if len(opts) > 0 {
		return nil, errors.New("public_key must not carry authorized_keys options")
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, errors.New("public_key must be exactly one key")
	}
	if !strings.HasPrefix(line, k.Type()+" ") && line != k.Type() {
		return nil, errors.New("public_key must start with its key type")
	}
	switch k.Type() {
	case ssh.KeyAlgoED25519, ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521:
	case ssh.KeyAlgoRSA:
		ck, ok := k.(ssh.CryptoPublicKey)
		if !ok {
			return nil, errors.New("public_key: unreadable RSA key")
		}
		rk, ok := ck.CryptoPublicKey().(*rsa.PublicKey)
		if !ok || rk.N.BitLen() < minRSABits {
			return nil, fmt.Errorf("public_key: RSA keys must have at least %d bits", minRSABits)
		}
	default:
		return nil, fmt.Errorf("public_key: key type %s is not accepted (use ed25519, ECDSA or RSA >= %d bits)", k.Type(), minRSABits)
	}
	return k, nil
}
