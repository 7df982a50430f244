//go:build linux

package advertise

import (
	"context"
	"crypto/ed25519"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/wire"
	"golang.org/x/crypto/ssh"
)

func newHostKeyLine(t *testing.T) string {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
}

// runAgent runs a.Run until the returned stop (or the end of the test),
// which cancels it and waits, bounded, for Run to return.
func runAgent(t *testing.T, a *Agent) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Error("Run did not return within 5s of the cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// TestAgentRekey: a builder whose sshd gets a new host key (the key file
// replaced) advertises the new key without a restart, so clients pin the
// new key instead of failing the host-key check until someone restarts
// the agent; an unreadable or broken key file keeps the old key.
func TestAgentRekey(t *testing.T) {
	dir := t.TempDir()
	keyPath := filepath.Join(dir, "ssh_host_ed25519_key.pub")
	first, second := newHostKeyLine(t), newHostKeyLine(t)
	if err := os.WriteFile(keyPath, []byte(first+" root@b1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	adverts := make(chan string, 16)
	a := &Agent{
		Facts: FactsOptions{
			HostKeyPath: keyPath,
			ProcRoot:    fakeProc(t, "any"),
			StoreDir:    t.TempDir(),
			Overrides:   Overrides{Systems: []string{"x86_64-linux"}, SupportedFeatures: []string{}, MaxJobs: 1, SSHUser: "nix-ssh"},
		},
		Interval: 5 * time.Millisecond,
		Tailnet:  &TailnetServer{LocalAPI: noLocalAPI{}, Listen: net.Listen, ListenAddr: "127.0.0.1:0"},
		OnChange: func(ad *wire.Advert) { adverts <- ad.HostKey },
	}
	runAgent(t, a)
	// next returns the next advertised key different from skip.
	next := func(what, skip string) string {
		t.Helper()
		deadline := time.After(5 * time.Second)
		for {
			select {
			case k := <-adverts:
				if k != skip {
					return k
				}
			case <-deadline:
				t.Fatalf("%s: no advert with a key other than %.30s… within 5s", what, skip)
			}
		}
	}
	if got := next("start", ""); got != first {
		t.Fatalf("first advert has host key %q, want %q", got, first)
	}

	// A broken file (half written by hand, say) keeps the old key.
	if err := os.WriteFile(keyPath, []byte("ssh-ed25519 not-base64\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // ten ticks
	for len(adverts) > 0 {
		if k := <-adverts; k != first {
			t.Fatalf("after a broken key file the agent advertised %q, want the old key kept", k)
		}
	}
	if got := a.Current().HostKey; got != first {
		t.Fatalf("after a broken key file the advert holds %q, want the old key", got)
	}

	// The re-key: a new file (new inode, as ssh-keygen writes it).
	tmp := keyPath + ".new"
	if err := os.WriteFile(tmp, []byte(second+" root@b1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, keyPath); err != nil {
		t.Fatal(err)
	}
	if got := next("re-key", first); got != second {
		t.Fatalf("after the re-key the agent advertised %q, want %q", got, second)
	}
}
