package static_test

import (
	"bytes"
	"context"
	"errors"
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

// staticRun is a running client whose only source is a static file.
type staticRun struct {
	c          *discover.Client
	staticPath string
	ready      chan struct{} // closed after the first round
}

// staticClient runs a client whose only source is a static file, which
// it creates with one builder unless it exists.
func staticClient(t *testing.T, dir, machines string, logs *clienttest.SyncBuffer) (run *staticRun, stop func()) {
	t.Helper()
	run = &staticRun{staticPath: filepath.Join(dir, "static"), ready: make(chan struct{})}
	if _, err := os.Stat(run.staticPath); err != nil {
		clienttest.WriteFile(t, run.staticPath, "ssh-ng://builder@b1 x86_64-linux - 4 1 kvm\n")
	}
	w := logs
	if w == nil {
		w = &clienttest.SyncBuffer{}
	}
	run.c = &discover.Client{
		Sources:      []discover.Source{&static.Source{Path: run.staticPath}},
		Checker:      noChecks{t},
		MachinesPath: machines,
		NixVersion:   render.NixVersion{Major: 2, Minor: 8},
		Logger:       slog.New(slog.NewTextHandler(w, nil)),
		Hooks:        discover.Hooks{Ready: func() { close(run.ready) }},
	}
	run.c.Init()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run.c.Run(ctx) }()
	return run, func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("client: %v", err)
		}
	}
}

// waitReady waits (bounded) for the client's first round to end.
func (r *staticRun) waitReady(t *testing.T) {
	t.Helper()
	select {
	case <-r.ready:
	case <-time.After(10 * time.Second):
		t.Fatal("the client's first round did not end within 10 s")
	}
}

// waitSourceError waits (bounded) until the client reports its static
// source down with an error containing want, and returns the error.
func (r *staticRun) waitSourceError(t *testing.T, want string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := r.c.Status(ctx)
		cancel()
		if err == nil {
			for _, src := range st.Sources {
				if src.Name == discover.SourceStatic && !src.OK && strings.Contains(src.Error, want) {
					return src.Error
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the client never reported the static file's error %q (last status err %v: %+v)", want, err, st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestClientFollowsStaticFileEdits(t *testing.T) {
	dir := t.TempDir()
	machines := filepath.Join(dir, "machines")
	run, stop := staticClient(t, dir, machines, nil)
	defer stop()
	clienttest.WaitFile(t, machines, "listed b1", clienttest.Contains("ssh-ng://builder@b1 "))
	// An editor replaces the file (write to a temp name, rename over).
	tmp := run.staticPath + ".swp"
	clienttest.WriteFile(t, tmp, "ssh-ng://builder@b2 aarch64-linux - 2 1 -\n")
	if err := os.Rename(tmp, run.staticPath); err != nil {
		t.Fatal(err)
	}
	_, took := clienttest.WaitFile(t, machines, "followed the edit", func(f string) bool {
		return strings.Contains(f, "@b2 aarch64-linux") && !strings.Contains(f, "@b1 ")
	})
	t.Logf("static file edit re-rendered after %v", took)
	// A broken edit keeps the last good set: once the client has read
	// it (and says what is wrong, naming the line), b2 is still listed.
	clienttest.WriteFile(t, run.staticPath, "ssh-ng://builder@b3 x86_64-linux - many\n")
	msg := run.waitSourceError(t, "many")
	if !strings.Contains(msg, run.staticPath+":1") {
		t.Errorf("the static file's error does not name FILE:LINE: %s", msg)
	}
	if f, _ := os.ReadFile(machines); !bytes.Contains(f, []byte("@b2 ")) || bytes.Contains(f, []byte("@b3 ")) {
		t.Errorf("an invalid static file changed the builders:\n%s", f)
	}
}

func TestClientRestoresExternallyEditedFile(t *testing.T) {
	dir := t.TempDir()
	machines := filepath.Join(dir, "machines")
	_, stop := staticClient(t, dir, machines, nil)
	defer stop()
	want, _ := clienttest.WaitFile(t, machines, "listed b1", clienttest.Contains("@b1 "))
	clienttest.WriteFile(t, machines, "evil x86_64-linux\n")
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
	if err := os.Chtimes(machines, old, old); err != nil {
		t.Fatal(err)
	}
	before, err := os.Stat(machines)
	if err != nil {
		t.Fatal(err)
	}
	// The restarted client's first round ends with a render: it is the
	// moment it would rewrite the file.
	run, stop := staticClient(t, dir, machines, nil)
	run.waitReady(t)
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
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64k,ro,mode=0755", "tmpfs", ro).CombinedOutput(); err != nil {
		t.Skipf("cannot mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", ro).Run() })
	machines := filepath.Join(ro, "machines")
	var logs clienttest.SyncBuffer
	staticPath := filepath.Join(dir, "static")
	clienttest.WriteFile(t, staticPath, "ssh-ng://builder@b1 x86_64-linux - 4 1 kvm\n")
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

// TestCheckNamesEveryBrokenLine: the start-up check of a static file whose
// line 1 is valid and lines 2-3 are not names both, FILE:LINE: field.
func TestCheckNamesEveryBrokenLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "static")
	clienttest.WriteFile(t, path, "ssh-ng://builder@b1 x86_64-linux\nb2 x86_64-linux - many\nb3 x86_64-linux - 1 -2\n")
	err := (&static.Source{Path: path}).Check()
	var problems render.ParseErrors
	if !errors.As(err, &problems) || len(problems) != 2 {
		t.Fatalf("Check = %v, want 2 problems", err)
	}
	for i, want := range []string{path + ":2: field max-jobs", path + ":3: field speed-factor"} {
		if !strings.HasPrefix(problems[i].Error(), want) {
			t.Errorf("problem %d = %q, want %s…", i, problems[i], want)
		}
	}
}

// TestClientNeverEmptiesFileForUnreadableStatic: a static file that breaks
// before the client ever read it does not make --once write a file
// without its builders: the file stays, and Run says it was not written.
func TestClientNeverEmptiesFileForUnreadableStatic(t *testing.T) {
	dir := t.TempDir()
	machines := filepath.Join(dir, "machines")
	before := "# managed by nixrb-discover client: edits here are overwritten\nssh-ng://builder@b1 x86_64-linux - 1 1 - - -\n"
	clienttest.WriteFile(t, machines, before)
	staticPath := filepath.Join(dir, "static")
	clienttest.WriteFile(t, staticPath, "ssh-ng://builder@b1 x86_64-linux\nb2 x86_64-linux - many\n")
	c := &discover.Client{
		Sources:      []discover.Source{&static.Source{Path: staticPath}},
		Checker:      noChecks{t},
		MachinesPath: machines,
		Once:         true,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.Run(ctx); !errors.Is(err, discover.ErrNotWritten) {
		t.Errorf("Run = %v, want ErrNotWritten", err)
	}
	if b, _ := os.ReadFile(machines); string(b) != before {
		t.Errorf("machines file changed to:\n%s", b)
	}
}
