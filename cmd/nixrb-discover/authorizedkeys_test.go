package main

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nixrb-discover/nixrb-discover/advertise"
)

// fakeEnrollSocket answers the authorized-keys question with ans.
func fakeEnrollSocket(t *testing.T, ans advertise.AuthorizedKeys) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ak")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "enroll.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != advertise.AuthorizedKeysPath {
			http.NotFound(w, r)
			return
		}
		json.NewEncoder(w).Encode(ans)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock
}

func runAK(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out strings.Builder
	err := newAuthorizedKeysCmd(&env{stdout: &out, stderr: &out}).ParseAndRun(context.Background(), args)
	return out.String(), err
}

func TestAuthorizedKeys(t *testing.T) {
	const k = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKuQNWRb4HT2KmI1rmjbWoNeP/sfmom8RX9eHRIRYTVg"
	sock := fakeEnrollSocket(t, advertise.AuthorizedKeys{User: "nix-ssh", Keys: []string{k},
		Entries: []advertise.AuthorizedEntry{{Key: k, From: []string{"100.64.0.7", "fd7a:115c:a1e0::7"}}}})
	self, _ := os.Executable()

	out, err := runAK(t, "--socket", sock, "nix-ssh")
	if want := `restrict,from="100.64.0.7,fd7a:115c:a1e0::7",command="` + self + ` ssh-gate --socket ` + sock +
		` --key rLy8/JcNNrCF/LwYk/0qh/HMcwEHLQlc0mhSoCOyttI" ` + k + "\n"; err != nil || out != want {
		t.Fatalf("builder user: %q, %v; want %q", out, err, want)
	}
	if out, err := runAK(t, "--socket", sock, "alice"); err != nil || out != "" {
		t.Fatalf("another user: %q, %v; want nothing", out, err)
	}
	out, err = runAK(t, "--socket", filepath.Join(t.TempDir(), "none.sock"), "nix-ssh")
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 1 || out != "" {
		t.Fatalf("no agent: %q, %v; want nothing printed and exit 1", out, err)
	}
	if _, err := runAK(t, "--socket", sock); !errors.As(err, &ee) || ee.code != 2 {
		t.Fatalf("no user: %v, want a usage error", err)
	}
}

func TestAuthorizedKeysRefusesBadKeyFromAgent(t *testing.T) {
	sock := fakeEnrollSocket(t, advertise.AuthorizedKeys{User: "nix-ssh", Entries: []advertise.AuthorizedEntry{{Key: `ssh-ed25519 AAAA" ,command="sh`, From: []string{"100.64.0.1"}}}})
	if out, err := runAK(t, "--socket", sock, "nix-ssh"); err == nil || out != "" {
		t.Fatalf("bad key: %q, %v; want nothing printed and an error", out, err)
	}
}

// TestAuthorizedKeysLeavesOutKeysWithoutSafeFrom: a key with no address
// to accept it from, or with a from pattern that could break out of the
// option, is left out (never printed without from=).
func TestAuthorizedKeysLeavesOutKeysWithoutSafeFrom(t *testing.T) {
	const k = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKuQNWRb4HT2KmI1rmjbWoNeP/sfmom8RX9eHRIRYTVg"
	for _, from := range [][]string{nil, {""}, {`100.64.0.1",command="sh`}, {"100.64.0.1 ,x"}} {
		sock := fakeEnrollSocket(t, advertise.AuthorizedKeys{User: "nix-ssh", Keys: []string{k}, Entries: []advertise.AuthorizedEntry{{Key: k, From: from}}})
		if out, err := runAK(t, "--socket", sock, "nix-ssh"); err != nil || out != "" {
			t.Errorf("from %q: %q, %v; want the key left out", from, out, err)
		}
	}
}

func TestSafeCommandPath(t *testing.T) {
	for p, want := range map[string]bool{
		"/nix/store/abc-nixrb-discover-1.0/bin/nixrb-discover": true,
		"/usr/local/bin/nixrb-discover":                        true,
		"relative/nixrb-discover":                              false,
		"/opt/my tools/nixrb-discover":                         false,
		`/opt/x"/nixrb-discover`:                               false,
		"/opt/$(id)/nixrb-discover":                            false,
	} {
		if got := safeCommandPath(p); got != want {
			t.Errorf("safeCommandPath(%q) = %v, want %v", p, got, want)
		}
	}
}

// FuzzFromPatterns: whatever the agent's answer holds as addresses, a
// from="..." option that is accepted can neither end early (a quote), nor
// add an option or a key (a comma inside one address, a space, a
// newline).
func FuzzFromPatterns(f *testing.F) {
	for _, s := range []string{"100.64.0.1", "fd7a:115c:a1e0::1", "127.0.0.1", `100.64.0.1",command="sh`, "1.2.3.4 ,x", "a\nb", "*", "10.0.0.0/8", "!100.64.0.1", ""} {
		f.Add(s, "100.64.0.2")
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		got, ok := fromPatterns([]string{a, b})
		if !ok {
			return
		}
		if strings.ContainsAny(got, "\" \t\r\n\\!") || strings.Count(got, ",") != 1 {
			t.Fatalf("fromPatterns(%q, %q) = %q: unsafe in from=\"...\"", a, b, got)
		}
	})
}
