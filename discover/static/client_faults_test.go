package static_test

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/nixrb-discover/nixrb-discover/discover/static"
	"github.com/nixrb-discover/nixrb-discover/health"
	"github.com/nixrb-discover/nixrb-discover/internal/clienttest"
	"github.com/nixrb-discover/nixrb-discover/render"
)

// noChecks is a HealthChecker for clients whose only source is a static
// file that is not health-gated: it must never be called.
type noChecks struct{ t *testing.T }

func (n noChecks) Check(context.Context, health.Target) health.Result {
	n.t.Error("static entries were health-checked without --check-static")
	return health.Result{}
}
func (n noChecks) Probe(ctx context.Context, t health.Target) health.Result {
	return n.Check(ctx, t)
}
func (n noChecks) Ping(context.Context, health.Target) (health.Result, bool) {
	return health.Result{}, false
}
func (noChecks) Forget(string) {}

// staticClient runs a client whose only source is a static file.
func staticClient(t *testing.T, dir, machines string, logs *clienttest.SyncBuffer) (staticPath string, stop func()) {
	t.Helper()
	staticPath = filepath.Join(dir, "static")
	os.WriteFile(staticPath, []byte("ssh-ng://builder@b1 x86_64-linux - 4 1 kvm\n"), 0o644)
	w := logs
	if w == nil {
		w = &clienttest.SyncBuffer{}
	}
	c := &discover.Client{
		Sources:      []discover.Source{&static.Source{Path: staticPath}},
		Checker:      noChecks{t},
		MachinesPath: machines,
		NixVersion:   render.NixVersion{Major: 2, Minor: 8},
		Logger:       slog.New(slog.NewTextHandler(w, nil)),
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	return staticPath, func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("client: %v", err)
		}
	}
}

func TestClientFollowsStaticFileEdits(t *testing.T) {
	dir := t.TempDir()
	machines := filepath.Join(dir, "machines")
	staticPath, stop := staticClient(t, dir, machines, nil)
	defer stop()
	clienttest.WaitFile(t, machines, "listed b1", clienttest.Contains("ssh-ng://builder@b1 "))
	// An editor replaces the file (write to a temp name, rename over).
	tmp := staticPath + ".swp"
	os.WriteFile(tmp, []byte("ssh-ng://builder@b2 aarch64-linux - 2 1 -\n"), 0o644)
	os.Rename(tmp, staticPath)
	_, took := clienttest.WaitFile(t, machines, "followed the edit", func(f string) bool {
		return strings.Contains(f, "@b2 aarch64-linux") && !strings.Contains(f, "@b1 ")
	})
	t.Logf("static file edit re-rendered after %v", took)
	// A broken edit keeps the last good set.
	os.WriteFile(staticPath, []byte("ssh-ng://builder@b3 x86_64-linux - many\n"), 0o644)
	time.Sleep(300 * time.Millisecond)
	if f, _ := os.ReadFile(machines); !bytes.Contains(f, []byte("@b2 ")) {
		t.Errorf("an invalid static file dropped the builders:\n%s", f)
	}
}

func TestClientRestoresExternallyEditedFile(t *testing.T) {
	dir := t.TempDir()
	machines := filepath.Join(dir, "machines")
	_, stop := staticClient(t, dir, machines, nil)
	defer stop()
	want, _ := clienttest.WaitFile(t, machines, "listed b1", clienttest.Contains("@b1 "))
	os.WriteFile(machines, []byte("evil x86_64-linux\n"), 0o644)
	_, took := clienttest.WaitFile(t, machines, "restored", func(f string) bool { return f == want })
	t.Logf("external overwrite corrected after %v", took)
}

func TestClientRestartDoesNotRewriteUnchangedFile(t *testing.T) {
	dir := t.TempDir()
	machines := filepath.Join(dir, "machines")
	_, stop := staticClient(t, dir, machines, nil)
	clienttest.WaitFile(t, machines, "listed b1", clienttest.Contains("@b1 "))
	stop()
	old := time.Now().Add(-time.Hour)
	os.Chtimes(machines, old, old)
	before, _ := os.Stat(machines)
	_, stop = staticClient(t, dir, machines, nil)
	time.Sleep(500 * time.Millisecond)
	stop()
	after, _ := os.Stat(machines)
	if !after.ModTime().Equal(before.ModTime()) || !os.SameFile(before, after) {
		t.Error("a restarted client rewrote an unchanged machines file")
	}
}

func TestClientKeepsRunningWhenFileUnwritable(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to mount a read-only tmpfs (CI runs as root)")
	}
	dir := t.TempDir()
	ro := filepath.Join(dir, "ro")
	os.Mkdir(ro, 0o755)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs", ro).CombinedOutput(); err != nil {
		t.Skipf("cannot mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", ro).Run() })
	machines := filepath.Join(ro, "machines")
	var logs clienttest.SyncBuffer
	staticPath := filepath.Join(dir, "static")
	os.WriteFile(staticPath, []byte("ssh-ng://builder@b1 x86_64-linux - 4 1 kvm\n"), 0o644)
	c := &discover.Client{
		Sources:      []discover.Source{&static.Source{Path: staticPath}},
		Checker:      noChecks{t},
		MachinesPath: machines,
		Logger:       slog.New(slog.NewTextHandler(&logs, nil)),
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "cannot write the machines file") {
		if time.Now().After(deadline) {
			t.Fatalf("no clear error about the unwritable file; logs:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), machines) || !strings.Contains(logs.String(), "read-only") {
		t.Errorf("the error does not name the file and the cause:\n%s", logs.String())
	}
	st, err := c.Status(context.Background())
	if err != nil {
		t.Fatalf("daemon stopped answering after the failed write: %v", err)
	}
	if st.WriteError == "" {
		t.Error("status does not report the write error")
	}
	// Once writable, the retry succeeds.
	if out, err := exec.Command("mount", "-o", "remount,rw", ro).CombinedOutput(); err != nil {
		t.Fatalf("remount: %v %s", err, out)
	}
	clienttest.WaitFile(t, machines, "written after the filesystem became writable (retry)", clienttest.Contains("@b1 "))
}
