package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/wire"
)

// runKeygen runs the keygen command as main would, without the root.
func runKeygen(t *testing.T, args ...string) (stdout string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := newKeygenCmd(&env{stdout: &out, stderr: &errOut})
	cmd.FlagSet.SetOutput(&errOut)
	if err := cmd.Parse(args); err != nil {
		return out.String(), err
	}
	err = cmd.Run(context.Background())
	return out.String(), err
}

func TestKeygen(t *testing.T) {
	t.Run("writes-a-usable-key-pair", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "fleet")
		out, err := runKeygen(t, "--out", path)
		if err != nil {
			t.Fatal(err)
		}
		sk, err := wire.LoadSigningKey(path)
		if err != nil {
			t.Fatal(err)
		}
		tk, err := wire.LoadTrustKey(path + ".pub")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "key id "+tk.KeyID) || !strings.Contains(out, tk.String()) {
			t.Errorf("output %q lacks the key id and public key line", out)
		}
		a := &wire.Advert{
			Version: 1, Hostname: "b1", SSHUser: "nix-ssh", SSHPort: 22, Protocol: wire.ProtocolSSHNG,
			HostKey: strings.TrimSuffix(tk.String(), " "+wire.FleetKeyComment), Systems: []string{"x86_64-linux"},
			MaxJobs: 1, SpeedFactor: 1,
		}
		now := time.Now()
		if err := wire.Sign(a, sk, now); err != nil {
			t.Fatal(err)
		}
		if err := wire.Verify(a, []wire.TrustKey{tk}, now, 0); err != nil {
			t.Errorf("an advert signed with the new key does not verify with its .pub: %v", err)
		}
	})
	t.Run("never-overwrites-a-key", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "fleet")
		if _, err := runKeygen(t, "--out", path); err != nil {
			t.Fatal(err)
		}
		before, _ := os.ReadFile(path)
		_, err := runKeygen(t, "--out", path)
		var ee *exitError
		if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(ee.hint, "remove the old files") {
			t.Errorf("second keygen: err = %v, want exit 1 with a hint", err)
		}
		if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
			t.Error("the existing key was replaced")
		}
	})
	t.Run("usage-errors", func(t *testing.T) {
		for _, args := range [][]string{{}, {"--out", "x", "extra"}} {
			_, err := runKeygen(t, args...)
			var ee *exitError
			if !errors.As(err, &ee) || ee.code != 2 {
				t.Errorf("keygen %q: err = %v, want a usage error (exit 2)", args, err)
			}
		}
	})
	t.Run("missing-directory-is-an-error", func(t *testing.T) {
		_, err := runKeygen(t, "--out", filepath.Join(t.TempDir(), "no", "such", "dir", "fleet"))
		if !errors.Is(err, os.ErrNotExist) {
			t.Errorf("err = %v, want not-exist", err)
		}
	})
}
