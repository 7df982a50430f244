package advertise

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/wire"
	"tailscale.com/client/tailscale/apitype"
	"tailscale.com/ipn/ipnstate"
)

// noLocalAPI is a LocalAPI that knows nobody (the agent test serves on
// 127.0.0.1 and makes no requests).
type noLocalAPI struct{}

func (noLocalAPI) StatusWithoutPeers(context.Context) (*ipnstate.Status, error) {
	return nil, errors.New("no tailscaled in this test")
}

func (noLocalAPI) WhoIs(context.Context, string) (*apitype.WhoIsResponse, error) {
	return nil, errors.New("no tailscaled in this test")
}

// TestAgentSSHWatch: the advert drains while sshd is stopped or the user
// drains, each change of that combined flag is published once, and a
// clean stop still publishes draining.
func TestAgentSSHWatch(t *testing.T) {
	proc := fakeProc(t, "any")
	stat := filepath.Join(proc, "500", "stat")
	running, _ := os.ReadFile(stat)
	stopped, _ := os.ReadFile(filepath.Join("testdata", "sshwatch", "stopped", "500", "stat"))

	adverts := make(chan bool, 16)
	a := &Agent{
		Facts: FactsOptions{
			HostKeyPath: "testdata/ssh_host_ed25519_key.pub",
			ProcRoot:    proc,
			StoreDir:    t.TempDir(),
			Overrides:   Overrides{Systems: []string{"x86_64-linux"}, SupportedFeatures: []string{}, MaxJobs: 1, SSHUser: "nix-ssh"},
		},
		Interval: time.Hour, // no capacity churn
		Tailnet:  &TailnetServer{LocalAPI: noLocalAPI{}, Listen: net.Listen, ListenAddr: "127.0.0.1:0"},
		SSHWatch: &SSHWatch{Port: 22, ProcRoot: proc, Interval: 5 * time.Millisecond},
		OnChange: func(ad *wire.Advert) { adverts <- ad.Draining },
	}
	stop := runAgent(t, a)

	next := func(what string, want bool) {
		t.Helper()
		select {
		case got := <-adverts:
			if got != want {
				t.Fatalf("%s: advert draining=%v, want %v", what, got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: no advert within 5s", what)
		}
	}
	none := func(what string) {
		t.Helper()
		select {
		case got := <-adverts:
			t.Fatalf("%s: published an advert (draining=%v), want none", what, got)
		case <-time.After(50 * time.Millisecond): // 10 watch intervals
		}
	}
	next("start", false)
	none("sshd stays up")
	if err := os.WriteFile(stat, stopped, 0o644); err != nil {
		t.Fatal(err)
	}
	next("sshd stopped", true)
	none("sshd stays stopped")
	a.ToggleDrain()
	none("user drains while sshd is stopped")
	if err := os.WriteFile(stat, running, 0o644); err != nil {
		t.Fatal(err)
	}
	none("sshd back while the user drains")
	a.ToggleDrain()
	next("user undrains", false)
	os.RemoveAll(filepath.Join(proc, "net"))
	none("tables unreadable: unknown counts as healthy")
	stop()
	next("clean stop", true)
}
