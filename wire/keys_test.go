package wire

import (
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestFleetKeyFiles(t *testing.T) {
	t.Run("written-key-loads-and-verifies", func(t *testing.T) {
		dir := t.TempDir()
		path := filepath.Join(dir, "fleet")
		k, err := GenerateFleetKey()
		if err != nil {
			t.Fatal(err)
		}
		if err := k.WriteFleetKey(path); err != nil {
			t.Fatal(err)
		}
		for p, mode := range map[string]fs.FileMode{path: 0o600, path + ".pub": 0o644} {
			fi, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm()&^mode != 0 {
				t.Errorf("%s has mode %v, want at most %v", p, fi.Mode().Perm(), mode)
			}
		}
		pub, err := os.ReadFile(path + ".pub")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(string(pub), "ssh-ed25519 AAAA") || !strings.HasSuffix(string(pub), " nixrb-discover fleet key\n") {
			t.Errorf(".pub = %q, want an authorized_keys line with the fleet comment", pub)
		}
		sk, err := LoadSigningKey(path)
		if err != nil {
			t.Fatal(err)
		}
		tk, err := LoadTrustKey(path + ".pub")
		if err != nil {
			t.Fatal(err)
		}
		if sk.KeyID != k.KeyID || tk.KeyID != k.KeyID || len(k.KeyID) != 16 {
			t.Errorf("key IDs: generated %q, loaded %q, trust %q", k.KeyID, sk.KeyID, tk.KeyID)
		}
		a := testAdvert(t)
		if err := Sign(a, sk, signNow); err != nil {
			t.Fatal(err)
		}
		if err := Verify(a, []TrustKey{tk}, signNow, 0); err != nil {
			t.Errorf("advert signed with the loaded key does not verify with the .pub: %v", err)
		}
	})
	t.Run("refuses-to-overwrite", func(t *testing.T) {
		for _, existing := range []string{"fleet", "fleet.pub"} {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, existing), []byte("keep me"), 0o600); err != nil {
				t.Fatal(err)
			}
			k, _ := GenerateFleetKey()
			err := k.WriteFleetKey(filepath.Join(dir, "fleet"))
			if !errors.Is(err, fs.ErrExist) {
				t.Errorf("with %s present: err = %v, want fs.ErrExist", existing, err)
			}
			if b, _ := os.ReadFile(filepath.Join(dir, existing)); string(b) != "keep me" {
				t.Errorf("%s was overwritten", existing)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 1 {
				t.Errorf("left %d files behind, want only %s", len(entries), existing)
			}
		}
	})
	t.Run("refuses-a-private-key-others-can-read", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "fleet")
		k, _ := GenerateFleetKey()
		if err := k.WriteFleetKey(path); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadSigningKey(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
			t.Errorf("LoadSigningKey of a 0644 key: %v, want a chmod hint", err)
		}
	})
	t.Run("accepts-ssh-keygen-key", func(t *testing.T) {
		keygen, err := exec.LookPath("ssh-keygen")
		if err != nil {
			t.Skip("ssh-keygen not installed (apt-get install openssh-client)")
		}
		path := filepath.Join(t.TempDir(), "fleet")
		out, err := exec.Command(keygen, "-q", "-t", "ed25519", "-N", "", "-C", "x", "-f", path).CombinedOutput()
		if err != nil {
			t.Fatalf("ssh-keygen: %v: %s", err, out)
		}
		sk, err := LoadSigningKey(path)
		if err != nil {
			t.Fatal(err)
		}
		tk, err := LoadTrustKey(path + ".pub")
		if err != nil {
			t.Fatal(err)
		}
		fp, err := exec.Command(keygen, "-l", "-f", path+".pub").Output()
		if err != nil {
			t.Fatal(err)
		}
		if sk.KeyID != tk.KeyID || !strings.Contains(string(fp), "SHA256:"+tk.KeyID) {
			t.Errorf("key ID %q / %q is not a prefix of the ssh-keygen fingerprint %q", sk.KeyID, tk.KeyID, fp)
		}
	})
}

func TestParseTrustKey(t *testing.T) {
	good := testSigningKey(t, 1).TrustKey().String()
	tests := []struct {
		name string
		line string
		ok   bool
	}{
		{"fleet-pub-line", good, true},
		{"without-comment", strings.TrimSuffix(good, " "+FleetKeyComment), true},
		{"rsa-key", "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDD8Ntn3uvX0DNfH5tLYdD9ikRBS2sMZmfYuo5W7yhKp3qozV5+CgKKzsa0ETtVM1dqGsLmC1aIDn3qNwoU54JCdDwAVcQM0ggMsFkvtgnXcWfl3V5nSqqKYxbqHmXGtHqdZ6fIwtN6ir2eG3ZgXCHqq4CkATlf2A8ShsQmtHxjXQ==", false},
		{"options", `restrict ` + good, false},
		{"two-keys", good + "\n" + good, false},
		{"garbage", "hello", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := ParseTrustKey(tt.line)
			if (err == nil) != tt.ok {
				t.Fatalf("ParseTrustKey: err = %v, want ok = %v", err, tt.ok)
			}
			if tt.ok && k.KeyID != testSigningKey(t, 1).KeyID {
				t.Errorf("KeyID = %q, want %q", k.KeyID, testSigningKey(t, 1).KeyID)
			}
		})
	}
}
