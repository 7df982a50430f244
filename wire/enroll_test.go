package wire

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

// testKey returns a new public key of kind in authorized_keys form.
func testKey(t testing.TB, kind string) string {
	t.Helper()
	var pub any
	switch kind {
	case "ed25519":
		pub, _, _ = ed25519.GenerateKey(rand.Reader)
	case "ecdsa":
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		pub = &k.PublicKey
	case "rsa1024", "rsa2048":
		bits := 1024
		if kind == "rsa2048" {
			bits = 2048
		}
		k, err := rsa.GenerateKey(rand.Reader, bits)
		if err != nil {
			t.Fatal(err)
		}
		pub = &k.PublicKey
	}
	pk, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pk)))
}

func enrollBody(key string) string {
	b, _ := json.Marshal(EnrollRequest{PublicKey: key})
	return string(b)
}

func TestDecodeEnrollRequest(t *testing.T) {
	ed := testKey(t, "ed25519")
	for _, tc := range []struct {
		name, body, err string
	}{
		{"ed25519-with-comment", enrollBody(ed + " laptop@home"), ""},
		{"ecdsa", enrollBody(testKey(t, "ecdsa")), ""},
		{"rsa-2048", enrollBody(testKey(t, "rsa2048")), ""},
		{"rsa-1024-too-small", enrollBody(testKey(t, "rsa1024")), "at least 2048 bits"},
		{"options-refused", enrollBody(`command="sh" ` + ed), "options"},
		{"restrict-refused", enrollBody("restrict " + ed), "options"},
		{"two-keys", enrollBody(ed + "\n" + ed), "exactly one key"},
		{"empty-key", `{"public_key": ""}`, "empty"},
		{"missing-key", `{}`, "empty"},
		{"not-a-key", enrollBody("ssh-ed25519 notbase64!!"), "not an SSH public key"},
		{"unknown-field", `{"public_key": "` + ed + `", "user": "root"}`, "unknown field"},
		{"trailing-data", enrollBody(ed) + `{}`, "after its JSON object"},
		{"not-json", "ssh-ed25519 AAAA", "not an enrolment JSON object"},
		{"oversized", `{"public_key": "` + ed + " " + strings.Repeat("x", MaxEnrollRequest) + `"}`, "larger than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := DecodeEnrollRequest(strings.NewReader(tc.body))
			if tc.err == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))) == "" {
					t.Fatal("no key")
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.err)
			}
		})
	}
}

// FuzzEnrollRequest: the decoder never panics, and what it accepts is one
// key of an accepted type that round-trips through AuthorizedKey.
func FuzzEnrollRequest(f *testing.F) {
	f.Add([]byte(enrollBody(testKey(f, "ed25519") + " c")))
	f.Add([]byte(`{"public_key": "restrict ssh-ed25519 AAAA"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		k, err := DecodeEnrollRequest(bytes.NewReader(body))
		if err != nil {
			return
		}
		if len(body) > MaxEnrollRequest {
			t.Fatalf("accepted %d bytes", len(body))
		}
		line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
		k2, err := ParseEnrollKey(line)
		if err != nil || strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k2))) != line {
			t.Fatalf("accepted key does not round-trip: %q: %v", line, err)
		}
	})
}
