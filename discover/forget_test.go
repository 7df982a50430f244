package discover

import (
	"context"
	"net"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nixrb-discover/nixrb-discover/health"
	"github.com/nixrb-discover/nixrb-discover/internal/sshdtest"
	"github.com/nixrb-discover/nixrb-discover/render"
	"github.com/nixrb-discover/nixrb-discover/wire"
)

// handSource is a source the test drives: it emits the snapshots sent on
// its channel (a stand-in for a tailnet or mDNS source, whose own tests
// are in their packages).
type handSource chan Snapshot

func (handSource) Name() string { return SourceTailnet }

func (h handSource) Run(ctx context.Context, emit func(Snapshot)) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case s := <-h:
			emit(s)
		}
	}
}

// TestWithdrawnPendingBuilderDropsItsConnection: a builder that passed one
// check (Rise 2: still pending, its SSH connection kept) and is then
// withdrawn by its source never entered the file, so it never "left" it;
// its connection must still be dropped.
func TestWithdrawnPendingBuilderDropsItsConnection(t *testing.T) {
	sshdtest.Require(t)
	signer := sshdtest.NewSigner(t)
	sshd := sshdtest.Start(t, sshdtest.Options{Authorized: []ssh.PublicKey{signer.PublicKey()}})
	host, portStr, _ := net.SplitHostPort(sshd.Addr)
	port, _ := strconv.Atoi(portStr)
	b1 := Candidate{Key: "tailnet:b1", Name: "b1", Address: host, Trusted: true, TrustReason: "test",
		Advert: &wire.Advert{Hostname: "b1", SSHUser: "root", SSHPort: port, Protocol: wire.ProtocolSSHNG,
			HostKey: wire.CanonicalHostKey(sshd.HostKey), Systems: []string{"x86_64-linux"}, MaxJobs: 1, SpeedFactor: 1}}

	checker := &health.Checker{Signer: signer}
	t.Cleanup(func() { checker.Close() })
	checked := make(chan health.Result, 16)
	src := make(handSource, 1)
	c := &Client{
		Sources:      []Source{src},
		Checker:      checker,
		Membership:   MembershipConfig{Rise: 2, Interval: time.Hour},
		MachinesPath: filepath.Join(t.TempDir(), "machines"),
		NixVersion:   render.NixVersion{Major: 2, Minor: 8},
		Hooks:        Hooks{Checked: func(_ string, r health.Result) { checked <- r }},
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	src <- Snapshot{Source: SourceTailnet, Candidates: []Candidate{b1}}
	select {
	case r := <-checked:
		if !r.OK {
			t.Fatalf("first check failed: %s: %s", r.Reason, r.Detail)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("b1 was not checked within 30 s")
	}
	if !checker.Watched(b1.Key) {
		t.Fatal("after a passed check the checker keeps no connection to b1: nothing to leak, the test proves nothing")
	}
	src <- Snapshot{Source: SourceTailnet}
	deadline := time.Now().Add(10 * time.Second)
	for checker.Watched(b1.Key) {
		if time.Now().After(deadline) {
			t.Fatal("b1 was withdrawn while pending, and its SSH connection is still kept 10 s later")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
