package advertise

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// TestEnrollSocketAsAnotherUser: a process of another user (as ssh-gate
// runs as the builder user) may ask about a key's session on the 0666
// socket, but never gets the key list, which only root and the agent's
// user may read.
func TestEnrollSocketAsAnotherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a child as another user")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("needs setpriv (util-linux)")
	}
	e, _, _ := newTestEnroller(t)
	e.now = nil
	api := &fakeEnrollAPI{}
	e.LocalAPI = api
	k := testKey(t, "ed25519")
	if w := post(e, &Caller{Name: "a", NodeID: "nA", Tags: []string{"tag:nix-client"}}, enrollBody(k)); w.Code != 200 {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	api.set(peer("nA", "100.64.0.1", "tag:nix-client"))
	dir, err := os.MkdirTemp("", "enr")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	self, _ := os.Executable()
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "advertise.test")
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "enroll.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.ServeSocket(ctx, sock) }()
	t.Cleanup(func() { cancel(); <-done })
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil || time.Now().After(deadline) {
			break
		}
	}
	pk := mustParse(t, k)
	ctx2, cancel2 := context.WithTimeout(context.Background(), time.Minute)
	defer cancel2()
	cmd := exec.CommandContext(ctx2, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", bin, "-test.run=^TestEnrollSocketChild$")
	cmd.Env = append(os.Environ(), "ENROLL_TEST_SOCKET="+sock, "ENROLL_TEST_KEY="+KeyFingerprint(pk))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "list: refused") || !strings.Contains(string(out), "session: ok") || !strings.Contains(string(out), "other key: refused") {
		t.Fatalf("as uid 65534: %s\nwant the list refused, the session admitted, another key refused", out)
	}
}

func mustParse(t *testing.T, k string) ssh.PublicKey {
	t.Helper()
	pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k))
	if err != nil {
		t.Fatal(err)
	}
	return pk
}

// TestEnrollSocketChild is the other user's side of
// TestEnrollSocketAsAnotherUser.
func TestEnrollSocketChild(t *testing.T) {
	sock := os.Getenv("ENROLL_TEST_SOCKET")
	if sock == "" {
		t.Skip("run only as the child of TestEnrollSocketAsAnotherUser")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if ans, err := FetchAuthorizedKeys(ctx, sock); err != nil && strings.Contains(err.Error(), "403") {
		fmt.Println("list: refused")
	} else {
		fmt.Printf("list: given %v %v\n", ans, err)
	}
	if err := CheckSession(ctx, sock, os.Getenv("ENROLL_TEST_KEY")); err == nil {
		fmt.Println("session: ok")
	} else {
		fmt.Printf("session: %v\n", err)
	}
	if err := CheckSession(ctx, sock, "AAAAnotAkeyAAAA"); err != nil && strings.Contains(err.Error(), "403") {
		fmt.Println("other key: refused")
	} else {
		fmt.Printf("other key: %v\n", err)
	}
}
