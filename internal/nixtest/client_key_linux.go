package nixtest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// ClientKey is an SSH key pair on disk for a client to log in with.
type ClientKey struct {
	// Path is the private key file (root-owned, 0600), for field 3 of a
	// machines line or ssh -i.
	Path string
	// Public is the authorized_keys line, for BuilderOptions.AuthorizedKeys.
	Public string
}

// NewClientKey writes a fresh ed25519 key pair into a work directory that
// is removed when t finishes.
func NewClientKey(t testing.TB) ClientKey {
	t.Helper()
	RequireTools(t)
	priv, pub, err := GenerateKey("nixtest-client")
	if err != nil {
		t.Fatalf("nixtest: %v", err)
	}
	dir := newWorkDir(t, "key")
	path := filepath.Join(dir, "id_ed25519")
	writeFile(t, path, string(priv), 0o600)
	writeFile(t, path+".pub", pub+"\n", 0o644)
	return ClientKey{Path: path, Public: pub}
}

// WriteMachinesFile writes lines (one machines entry each) to a new file in
// a work directory removed when t finishes, and returns its path.
func WriteMachinesFile(t testing.TB, lines ...string) string {
	t.Helper()
	RequireTools(t)
	path := filepath.Join(newWorkDir(t, "machines"), "machines")
	data := strings.Join(lines, "\n")
	if len(lines) > 0 {
		data += "\n"
	}
	writeFile(t, path, data, 0o644)
	if err := os.Chmod(filepath.Dir(path), 0o755); err != nil {
		t.Fatalf("nixtest: %v", err)
	}
	return path
}
