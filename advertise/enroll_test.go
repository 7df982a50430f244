package advertise

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/wire"
	"golang.org/x/crypto/ssh"
	"tailscale.com/tailcfg"
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
	return AuthorizedKey(pk)
}

func enrollBody(key string) string {
	b, _ := json.Marshal(wire.EnrollRequest{PublicKey: key})
	return string(b)
}

// enrollLog collects audit lines.
type enrollLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *enrollLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *enrollLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// post sends body to e's handler as caller c.
func post(e *Enroller, c *Caller, body string) *httptest.ResponseRecorder {
	r := httptest.NewRequest("POST", wire.EnrollPath, strings.NewReader(body))
	if c != nil {
		r = r.WithContext(context.WithValue(r.Context(), callerKey{}, c))
	}
	w := httptest.NewRecorder()
	e.Handler().ServeHTTP(w, r)
	return w
}

func newTestEnroller(t *testing.T) (*Enroller, *enrollLog, *time.Time) {
	t.Helper()
	log := &enrollLog{}
	now := time.Date(2026, 11, 26, 5, 0, 0, 0, time.UTC)
	e := &Enroller{
		AllowTags: []string{"tag:nix-client"},
		StorePath: filepath.Join(t.TempDir(), "state", "enrolled.json"),
		User:      "nix-ssh",
		Logger:    slog.New(slog.NewTextHandler(log, nil)),
		now:       func() time.Time { return now },
	}
	return e, log, &now
}

func TestEnrollHandler(t *testing.T) {
	e, log, now := newTestEnroller(t)
	laptop := &Caller{Name: "laptop.ts.net", NodeID: "nLaptop", Tags: []string{"tag:nix-client"}}
	rogue := &Caller{Name: "rogue.ts.net", NodeID: "nRogue"}
	k1, k2 := testKey(t, "ed25519"), testKey(t, "ed25519")

	t.Run("untagged-refused-with-reason", func(t *testing.T) {
		w := post(e, rogue, enrollBody(k1))
		if w.Code != http.StatusForbidden || strings.TrimSpace(w.Body.String()) != `{"error":"enrolment refused: caller lacks tag:nix-client"}` {
			t.Fatalf("got %d %s", w.Code, w.Body)
		}
		if !strings.Contains(log.String(), "enrolment refused") || !strings.Contains(log.String(), "rogue.ts.net") {
			t.Fatalf("no audit line for the refusal:\n%s", log)
		}
	})
	t.Run("no-caller-refused", func(t *testing.T) {
		if w := post(e, nil, enrollBody(k1)); w.Code != http.StatusForbidden {
			t.Fatalf("got %d", w.Code)
		}
	})
	t.Run("tagged-enrols", func(t *testing.T) {
		w := post(e, laptop, enrollBody(k1+" laptop"))
		if w.Code != http.StatusOK || strings.TrimSpace(w.Body.String()) != `{"user":"nix-ssh"}` {
			t.Fatalf("got %d %s", w.Code, w.Body)
		}
		fi, err := os.Stat(e.StorePath)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("store: %v %v", fi, err)
		}
		keys, err := loadEnrolledKeys(e.StorePath)
		if err != nil || len(keys) != 1 || keys[0].PublicKey != k1 || keys[0].NodeID != "nLaptop" ||
			keys[0].NodeName != "laptop.ts.net" || !keys[0].Enrolled.Equal(*now) {
			t.Fatalf("store holds %+v (%v)", keys, err)
		}
	})
	t.Run("re-enrolment-replaces", func(t *testing.T) {
		if w := post(e, laptop, enrollBody(k2)); w.Code != http.StatusOK {
			t.Fatalf("got %d %s", w.Code, w.Body)
		}
		keys, _ := loadEnrolledKeys(e.StorePath)
		if len(keys) != 1 || keys[0].PublicKey != k2 {
			t.Fatalf("store holds %+v", keys)
		}
	})
	t.Run("rate-limited-per-node", func(t *testing.T) {
		// Two requests used the burst of 3 already.
		post(e, laptop, enrollBody(k2))
		w := post(e, laptop, enrollBody(k2))
		if w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") == "" {
			t.Fatalf("got %d %s", w.Code, w.Body)
		}
		other := &Caller{Name: "other.ts.net", NodeID: "nOther", Tags: []string{"tag:nix-client"}}
		if w := post(e, other, enrollBody(k1)); w.Code != http.StatusOK {
			t.Fatalf("another node was limited too: %d %s", w.Code, w.Body)
		}
		*now = now.Add(DefaultEnrollRateEvery)
		if w := post(e, laptop, enrollBody(k2)); w.Code != http.StatusOK {
			t.Fatalf("still limited after the rate period: %d %s", w.Code, w.Body)
		}
	})
	t.Run("malformed-refused", func(t *testing.T) {
		w := post(e, &Caller{Name: "m", NodeID: "nM", Tags: []string{"tag:nix-client"}}, `{"public_key": "restrict `+k1+`"}`)
		if w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), "options") {
			t.Fatalf("got %d %s", w.Code, w.Body)
		}
		w = post(e, &Caller{Name: "m", NodeID: "nM", Tags: []string{"tag:nix-client"}}, strings.Repeat(" ", wire.MaxEnrollRequest+1))
		if w.Code != http.StatusRequestEntityTooLarge {
			t.Fatalf("got %d %s", w.Code, w.Body)
		}
	})
	t.Run("store-full", func(t *testing.T) {
		e.MaxKeys = 2 // laptop and other are in
		w := post(e, &Caller{Name: "n3", NodeID: "n3", Tags: []string{"tag:nix-client"}}, enrollBody(testKey(t, "ed25519")))
		if w.Code != http.StatusInsufficientStorage {
			t.Fatalf("got %d %s", w.Code, w.Body)
		}
		if w := post(e, &Caller{Name: "other.ts.net", NodeID: "nOther", Tags: []string{"tag:nix-client"}}, enrollBody(k1)); w.Code != http.StatusOK {
			t.Fatalf("a known node could not re-enrol in a full store: %d %s", w.Code, w.Body)
		}
	})
	t.Run("audit-has-fingerprints-never-keys", func(t *testing.T) {
		l := log.String()
		pk, _ := wire.ParseEnrollKey(k1)
		if !strings.Contains(l, "enrolled key") || !strings.Contains(l, ssh.FingerprintSHA256(pk)) {
			t.Fatalf("no enrolment line with the fingerprint:\n%s", l)
		}
		for _, k := range []string{k1, k2} {
			if strings.Contains(l, strings.Fields(k)[1]) {
				t.Fatalf("the log holds a public key:\n%s", l)
			}
		}
	})
}

func TestEnrollCapability(t *testing.T) {
	e, _, _ := newTestEnroller(t)
	e.AllowTags = nil
	e.AllowCaps = []tailcfg.PeerCapability{"example.com/cap/nix-enroll"}
	c := &Caller{Name: "c", NodeID: "nC", Caps: tailcfg.PeerCapMap{"example.com/cap/nix-enroll": nil}}
	if w := post(e, c, enrollBody(testKey(t, "ed25519"))); w.Code != http.StatusOK {
		t.Fatalf("got %d %s", w.Code, w.Body)
	}
	w := post(e, &Caller{Name: "d", NodeID: "nD", Tags: []string{"tag:nix-client"}}, enrollBody(testKey(t, "ed25519")))
	if w.Code != http.StatusForbidden || !strings.Contains(w.Body.String(), "caller lacks capability example.com/cap/nix-enroll") {
		t.Fatalf("got %d %s", w.Code, w.Body)
	}
}

func TestEnrollNothingAllowedRefusesAll(t *testing.T) {
	e, _, _ := newTestEnroller(t)
	e.AllowTags = nil
	w := post(e, &Caller{Name: "c", NodeID: "nC", Tags: []string{"tag:nix-client"}}, enrollBody(testKey(t, "ed25519")))
	if w.Code != http.StatusForbidden {
		t.Fatalf("got %d %s", w.Code, w.Body)
	}
}
