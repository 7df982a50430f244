package discover

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadOrCreateIdentity(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", "id_ed25519")
	id, err := LoadOrCreateIdentity(path, "nixrb-discover@laptop")
	if err != nil || !id.Created {
		t.Fatalf("first start: %+v, %v; want a created key", id, err)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("private key mode %v, want 0600", fi.Mode().Perm())
	}
	di, _ := os.Stat(filepath.Dir(path))
	if di.Mode().Perm() != 0o700 {
		t.Errorf("state directory mode %v, want 0700", di.Mode().Perm())
	}
	pub, _ := os.ReadFile(path + ".pub")
	if strings.TrimSpace(string(pub)) != id.AuthorizedKey || !strings.HasPrefix(id.AuthorizedKey, "ssh-ed25519 ") {
		t.Errorf(".pub = %q, want %q", pub, id.AuthorizedKey)
	}
	again, err := LoadOrCreateIdentity(path, "nixrb-discover@laptop")
	if err != nil || again.Created || again.Fingerprint != id.Fingerprint {
		t.Fatalf("second start: %+v, %v; want the same key loaded", again, err)
	}
}

func TestLoadIdentityRefusesPassphrase(t *testing.T) {
	path := filepath.Join(t.TempDir(), "id")
	if out, err := execCommand("ssh-keygen", "-q", "-t", "ed25519", "-N", "secret", "-f", path); err != nil {
		t.Skipf("ssh-keygen: %v %s", err, out)
	}
	_, err := LoadOrCreateIdentity(path, "")
	if err == nil || !strings.Contains(err.Error(), "passphrase") {
		t.Fatalf("LoadOrCreateIdentity of a protected key = %v, want a passphrase error", err)
	}
}

func execCommand(name string, args ...string) ([]byte, error) {
	return exec.Command(name, args...).CombinedOutput()
}
