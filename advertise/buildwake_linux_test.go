package advertise

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestBuildStartWakesTheAgent: Nix's first build on a fresh machine
// creates userpool/ and opens a build user's lock file in it; later
// builds open and close that file again. Each is a wake (the creation
// too: the first lock may come before the new directory is watched), and
// so is the auto-allocate-uids pool; a mere listing of the directory is not.
func TestBuildStartWakesTheAgent(t *testing.T) {
	state := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wake, err := watchBuildStarts(ctx, state)
	if err != nil {
		t.Fatal(err)
	}
	woken := func(what string) {
		t.Helper()
		select {
		case <-wake:
		case <-time.After(5 * time.Second):
			t.Fatalf("no wake within 5 s after %s", what)
		}
	}
	quiet := func(what string) {
		t.Helper()
		select {
		case <-wake:
			t.Fatalf("woken by %s", what)
		case <-time.After(200 * time.Millisecond):
		}
	}
	lockUser := func(pool, name string) {
		t.Helper()
		f, err := os.OpenFile(filepath.Join(state, pool, name), os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		woken("opening " + pool + "/" + name)
		f.Close()
		woken("closing " + pool + "/" + name)
	}
	for _, pool := range []string{"userpool", "userpool2"} {
		if err := os.Mkdir(filepath.Join(state, pool), 0o755); err != nil {
			t.Fatal(err)
		}
		woken("creating " + pool)         // Nix's first build: it locks a user at once
		time.Sleep(50 * time.Millisecond) // the watch adds the new directory
		lockUser(pool, "30001")
		lockUser(pool, "30001")
	}
	if _, err := os.ReadDir(filepath.Join(state, "userpool")); err != nil {
		t.Fatal(err)
	}
	quiet("listing userpool/")
}
