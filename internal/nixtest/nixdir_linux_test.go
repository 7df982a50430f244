package nixtest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestClientNixDir: a client given NixDir uses it as its /nix, so its
// build hook's slot locks appear in ClientStateDir(NixDir)/current-load,
// and the output is read from there.
func TestClientNixDir(t *testing.T) {
	shareTrixie(t)
	for _, v := range Versions {
		t.Run(v.String(), func(t *testing.T) {
			key := NewClientKey(t)
			b := startTimed(t, BuilderOptions{Version: v, AuthorizedKeys: []string{key.Public}})
			nixDir := WorkDir(t, "nixdir")
			machines := WriteMachinesFile(t, b.MachineLine("ssh-ng", key.Path))
			out, stderr, err := buildTimed(t, ClientOptions{Version: v, MachinesFile: machines, NixDir: nixDir, Expr: TrivialDerivation("nixdir")})
			if err != nil || out != b.Hostname+"\n" {
				t.Fatalf("out %q, err %v, want %q\n%s", out, err, b.Hostname, stderr)
			}
			slot := strings.ReplaceAll(b.StoreURI("ssh-ng"), "/", "_") + "-0"
			if _, err := os.Stat(filepath.Join(ClientStateDir(nixDir), "current-load", slot)); err != nil {
				t.Fatalf("the build hook's slot lock is not in NixDir: %v", err)
			}
			if _, err := os.Stat(filepath.Join(nixDir, "store")); err != nil {
				t.Fatalf("the store is not in NixDir: %v", err)
			}
			if _, _, err := buildTimed(t, ClientOptions{Version: v, MachinesFile: machines, NixDir: filepath.Join(nixDir, "missing")}); err == nil || !strings.Contains(err.Error(), "NixDir") {
				t.Fatalf("missing NixDir: err %v, want it named", err)
			}
		})
	}
}
