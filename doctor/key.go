package doctor

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/crypto/ssh"
)

// keyError says why the SSH key of a machine cannot be used, and the fix.
type keyError struct {
	detail, fix string
}

func (e *keyError) Error() string { return e.detail }

// defaultKeys are the identities ssh tries when field 3 is empty.
var defaultKeys = []string{"id_ed25519", "id_ecdsa", "id_rsa"}

// keyPath returns field 3, or root's first default identity when it is
// empty ("" if there is none).
func keyPath(field, home string) string {
	if field != "" {
		return field
	}
	for _, k := range defaultKeys {
		p := filepath.Join(home, ".ssh", k)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// loadKey reads an SSH private key the way ssh run by nix-daemon (root)
// would use it, as discover.LoadOrCreateIdentity does but never creating
// one: it must be readable, not readable by others when ours (ssh
// ignores such a key), and without a passphrase.
func loadKey(path string) (ssh.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		fix := fmt.Sprintf("point field 3 at the private key root should log in with (the client's is /var/lib/nixrb-discover/id_ed25519), or make %s readable by root", path)
		return nil, &keyError{detail: err.Error(), fix: fix}
	}
	if fi, err := os.Stat(path); err == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) == os.Getuid() && fi.Mode().Perm()&0o077 != 0 {
			return nil, &keyError{
				detail: fmt.Sprintf("mode %04o: ssh ignores a private key that others can read (\"UNPROTECTED PRIVATE KEY FILE\")", fi.Mode().Perm()),
				fix:    "chmod 600 " + path,
			}
		}
	}
	signer, err := ssh.ParsePrivateKey(data)
	var missing *ssh.PassphraseMissingError
	switch {
	case errors.As(err, &missing):
		return nil, &keyError{
			detail: "protected by a passphrase: nix-daemon cannot type it",
			fix:    fmt.Sprintf("remove the passphrase (ssh-keygen -p -N '' -f %s) or use a key without one", path),
		}
	case err != nil:
		return nil, &keyError{detail: err.Error(), fix: "field 3 must name an OpenSSH private key file (not the .pub)"}
	}
	return signer, nil
}
