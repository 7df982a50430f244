package discover

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nixrb-discover/nixrb-discover/health"
	"github.com/nixrb-discover/nixrb-discover/render"
)

func TestCheckMachinesPath(t *testing.T) {
	ours := "# managed by nixrb-discover client: edits here are overwritten\nb1 x86_64-linux\n"
	for _, tc := range []struct {
		name    string
		setup   func(t *testing.T, path string)
		wantErr error  // errors.Is target, nil: accepted
		wantMsg string // in the error text
	}{
		{name: "missing-file-is-ours-to-create", setup: func(*testing.T, string) {}},
		{name: "empty-file-holds-nothing-to-lose", setup: func(t *testing.T, p string) { write(t, p, "\n  \n") }},
		{name: "our-header-file-is-managed", setup: func(t *testing.T, p string) { write(t, p, ours) }},
		{name: "hand-written-file-refused", setup: func(t *testing.T, p string) { write(t, p, "ssh://mine x86_64-linux\n") },
			wantErr: ErrForeignFile, wantMsg: "refusing to replace it"},
		{name: "comment-only-file-refused", setup: func(t *testing.T, p string) { write(t, p, "# my builders, back soon\n") },
			wantErr: ErrForeignFile},
		{name: "symlink-to-a-user-file-refused", setup: func(t *testing.T, p string) {
			write(t, p+".real", ours)
			os.Symlink(filepath.Base(p)+".real", p)
		}, wantErr: render.ErrSymlink},
		{name: "nixos-store-symlink-refused", setup: func(t *testing.T, p string) { os.Symlink("/nix/store/abc-machines", p) },
			wantErr: render.ErrStoreSymlink},
		{name: "missing-directory-says-mkdir", setup: func(t *testing.T, p string) {}, wantMsg: "mkdir -p"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "machines")
			if tc.name == "missing-directory-says-mkdir" {
				path = filepath.Join(t.TempDir(), "nope", "machines")
			}
			tc.setup(t, path)
			err := CheckMachinesPath(path)
			if tc.wantErr == nil && tc.wantMsg == "" {
				if err != nil {
					t.Fatalf("CheckMachinesPath = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatal("CheckMachinesPath = nil, want a refusal")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("CheckMachinesPath = %v, want %v", err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) || !strings.Contains(err.Error(), path) {
				t.Errorf("error %q should name %s and say %q", err, path, tc.wantMsg)
			}
		})
	}
}

func TestClientRunRefusesForeignFileUntouched(t *testing.T) {
	path := filepath.Join(t.TempDir(), "machines")
	write(t, path, "ssh://mine x86_64-linux\n")
	c := &Client{Sources: []Source{nil}, Checker: nopChecker{}, MachinesPath: path, Once: true}
	if err := c.Run(context.Background()); !errors.Is(err, ErrForeignFile) {
		t.Fatalf("Run = %v, want ErrForeignFile", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "ssh://mine x86_64-linux\n" {
		t.Errorf("the user's file changed: %q", b)
	}
}

func TestAdoptMovesValidLinesKeepsBackup(t *testing.T) {
	dir := t.TempDir()
	path, static := filepath.Join(dir, "machines"), filepath.Join(dir, "machines.static")
	orig := "# mine\nssh-ng://builder@b1 x86_64-linux - 4\nb2 x86_64-linux - many\nb3 aarch64-linux\n"
	write(t, path, orig)
	write(t, path+".orig", "an older backup\n") // never replaced
	res, err := Adopt(path, static, render.ParseOptions{NixVersion: render.NixVersion{Major: 2, Minor: 26}})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Adopted || res.Builders != 2 || res.Backup != path+".orig.1" {
		t.Errorf("Adopt = %+v, want 2 builders adopted, backup %s.orig.1", res, path)
	}
	if len(res.Skipped) != 1 || !strings.Contains(res.Skipped[0], "machines:3: field max-jobs") {
		t.Errorf("Skipped = %q, want the bad line 3 named", res.Skipped)
	}
	if b, _ := os.ReadFile(res.Backup); string(b) != orig {
		t.Errorf("backup = %q, want the original bytes", b)
	}
	if b, _ := os.ReadFile(path + ".orig"); string(b) != "an older backup\n" {
		t.Error("an existing backup was replaced")
	}
	st, _ := os.ReadFile(static)
	if !strings.Contains(string(st), "ssh-ng://builder@b1 x86_64-linux - 4") || !strings.Contains(string(st), "b3 aarch64-linux") {
		t.Errorf("static file lacks the valid lines:\n%s", st)
	}
	m, _ := os.ReadFile(path)
	if !Ours(m) || !strings.Contains(string(m), "@b1 ") || !strings.Contains(string(m), "b3 ") {
		t.Errorf("machines file is not ours with the same builders:\n%s", m)
	}
	// A second run finds the file ours and does nothing.
	if res, err := Adopt(path, static, render.ParseOptions{}); err != nil || res.Adopted {
		t.Errorf("second Adopt = %+v, %v; want nothing done", res, err)
	}
	if st2, _ := os.ReadFile(static); string(st2) != string(st) {
		t.Error("second Adopt changed the static file")
	}
}

func write(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// nopChecker is a checker for clients that must stop before any check.
type nopChecker struct{}

func (nopChecker) Check(context.Context, health.Target) health.Result { return health.Result{} }
func (nopChecker) Probe(context.Context, health.Target) health.Result { return health.Result{} }
func (nopChecker) Ping(context.Context, health.Target) (health.Result, bool) {
	return health.Result{}, false
}
func (nopChecker) Forget(string) {}

// TestClientNeverWritesThroughAPlantedSymlink: root runs the client on a
// machines path whose directory a non-root user owns, and that user
// planted machines (and the lock's name) -> a root-owned file. The
// client refuses at start with an error naming the directory and the
// fix; the root-owned file is untouched. In a directory of ours, a
// symlink at the lock's name is refused too, never truncated through.
func TestClientNeverWritesThroughAPlantedSymlink(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown a directory to another user")
	}
	victim := filepath.Join(t.TempDir(), "root-owned")
	write(t, victim, "keep me\n")
	dir := filepath.Join(t.TempDir(), "user-dir")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "machines")
	for _, name := range []string{path, lockPath(path)} {
		if err := os.Symlink(victim, name); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(dir, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if err := CheckMachinesPath(path); !errors.Is(err, render.ErrUnsafeDir) || !strings.Contains(err.Error(), dir) {
		t.Errorf("CheckMachinesPath = %v, want ErrUnsafeDir naming %s", err, dir)
	}
	c := &Client{Sources: []Source{nil}, Checker: nopChecker{}, MachinesPath: path, Once: true}
	if err := c.Run(context.Background()); !errors.Is(err, render.ErrUnsafeDir) || !strings.Contains(err.Error(), "chown root "+dir) {
		t.Errorf("Run = %v, want ErrUnsafeDir with the fix", err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "keep me\n" {
		t.Fatalf("the root-owned file changed: %q", b)
	}

	// Our own directory, a symlink only at the lock's name.
	own := t.TempDir()
	path = filepath.Join(own, "machines")
	if err := os.Symlink(victim, lockPath(path)); err != nil {
		t.Fatal(err)
	}
	c = &Client{Sources: []Source{nil}, Checker: nopChecker{}, MachinesPath: path, Once: true}
	if err := c.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "is a symlink") {
		t.Errorf("Run with a symlinked lock = %v, want a symlink refusal", err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "keep me\n" {
		t.Fatalf("the root-owned file changed through the lock: %q", b)
	}
}
