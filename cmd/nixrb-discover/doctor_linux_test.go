package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nixrb-discover/nixrb-discover/internal/nixtest"
)

// TestDoctorCommand runs the command against a real Nix 2.8 builder: exit
// 0 and only ✔ lines when healthy, exit 1 and a ✘ line with its fix when
// the builder stops accepting the key.
func TestDoctorCommand(t *testing.T) {
	key := nixtest.NewClientKey(t)
	b := nixtest.StartBuilder(t, nixtest.BuilderOptions{Version: nixtest.V28, AuthorizedKeys: []string{key.Public}})
	dir := nixtest.WorkDir(t, "doctor-cmd")
	machines := filepath.Join(dir, "machines")
	write := func(path, data string, mode os.FileMode) {
		t.Helper()
		if err := os.WriteFile(path, []byte(data), mode); err != nil {
			t.Fatal(err)
		}
	}
	write(machines, b.MachineLine("ssh-ng", key.Path)+"\n", 0o644)
	write(filepath.Join(dir, "nix.conf"), "sandbox = false\nsubstituters =\nbuilders = @"+machines+"\n", 0o644)
	nix := filepath.Join(dir, "nix")
	write(nix, fmt.Sprintf("#!/bin/sh\nNIX_CONF_DIR=%s TMPDIR=%s exec nix \"$@\"\n", dir, dir), 0o755)
	args := []string{"--machines", machines, "--nix", nix, "--ssh-config", filepath.Join(dir, "ssh_config"), "--timeout", "5s", b.Addr.String()}

	out, err := runDoctor(t, args...)
	t.Logf("healthy:\n%s", out)
	if exitStatus(err) != 0 || strings.Contains(out, "✘") || !strings.Contains(out, "✔ builder "+b.Addr.String()+": nix-daemon --stdio answers the Nix handshake") {
		t.Fatalf("healthy builder: exit %d (%v), want 0 and only ✔ lines", exitStatus(err), err)
	}

	// The fixture's AuthorizedKeysFile is Dir/authorized_keys/%u.
	if err := os.Remove(filepath.Join(b.Dir, "authorized_keys", "root")); err != nil {
		t.Fatal(err)
	}
	out, err = runDoctor(t, args...)
	t.Logf("key removed:\n%s", out)
	if exitStatus(err) != 1 || !strings.Contains(out, "✘ builder "+b.Addr.String()+": "+b.Addr.String()+":22 accepts key") ||
		!strings.Contains(out, " — fix: add the client key") || !strings.Contains(out, "1 of ") {
		t.Fatalf("unauthorised key: exit %d (%v), want 1 and the ✘ line with its fix", exitStatus(err), err)
	}
}
