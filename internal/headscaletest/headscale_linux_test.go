package headscaletest

import (
	"context"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestPrepareHeadscale builds the cached headscale binary if it is
// missing (CI runs `go test -run TestPrepareHeadscale
// ./internal/headscaletest` first, outside the suite's test timeouts) and
// checks that it runs.
func TestPrepareHeadscale(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), LockWait)
	defer cancel()
	start := time.Now()
	bin, err := Prepare(ctx, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(bin)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("headscale %s at %s (%.1f MiB) ready after %v", Version, bin, float64(fi.Size())/(1<<20), time.Since(start).Round(time.Millisecond))
	vctx, vcancel := context.WithTimeout(ctx, Timeout)
	defer vcancel()
	out, err := exec.CommandContext(vctx, bin, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("headscale version: %v\n%s", err, out)
	}
	t.Logf("headscale version: %s", strings.TrimSpace(string(out)))
}

// TestServer starts headscale, joins a tagged and an untagged node and
// reads them back from the CLI: the tagged one owned by its tag, the
// untagged one by the user, each named host.base_domain on the tailnet.
func TestServer(t *testing.T) {
	s := Start(t, Options{})
	b := s.AddNode(t, "b1", TagBuilder)
	u := s.AddNode(t, "u1")
	s.WaitPeer(t, u, b)
	if b.FQDN != "b1."+BaseDomain || u.FQDN != "u1."+BaseDomain {
		t.Errorf("MagicDNS names %q, %q; want b1.%s, u1.%s", b.FQDN, u.FQDN, BaseDomain, BaseDomain)
	}
	nodes := s.Nodes(t)
	if len(nodes) != 2 {
		t.Fatalf("nodes %+v, want b1 and u1", nodes)
	}
	for _, n := range nodes {
		switch n.GivenName {
		case "b1":
			if !slices.Equal(n.Tags, []string{TagBuilder}) || n.User.Name != "tagged-devices" {
				t.Errorf("b1: tags %v user %q, want [%s] tagged-devices", n.Tags, n.User.Name, TagBuilder)
			}
		case "u1":
			if len(n.Tags) != 0 || n.User.Name != User {
				t.Errorf("u1: tags %v user %q, want none, %s", n.Tags, n.User.Name, User)
			}
		default:
			t.Errorf("unexpected node %+v", n)
		}
	}
}
