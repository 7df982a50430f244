package main

import (
	"os/exec"
	"strings"
	"testing"
)

// goListDeps returns the packages pkg links in.
func goListDeps(t *testing.T, pkg string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", pkg).Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v", pkg, err)
	}
	return strings.Fields(string(out))
}

// TestDepsProductionBinary keeps the in-process tailnet (tsnet,
// testcontrol) used by tests and the demo out of the shipped binary.
func TestDepsProductionBinary(t *testing.T) {
	banned := []string{"tailscale.com/tsnet", "tailscale.com/tstest", "tailscale.com/tstest/integration", "tailscale.com/tstest/integration/testcontrol", "testing"}
	for _, d := range goListDeps(t, "github.com/nixrb-discover/nixrb-discover/cmd/nixrb-discover") {
		for _, b := range banned {
			if d == b || strings.HasPrefix(d, b+"/") && b != "testing" {
				t.Errorf("nixrb-discover links %s", d)
			}
		}
		if strings.Contains(d, "/internal/tailnettest") || strings.Contains(d, "/internal/netnstest") || strings.Contains(d, "/internal/nixtest") {
			t.Errorf("nixrb-discover links test helper %s", d)
		}
	}
}

// TestDepsDataFlowsOneWay enforces the arrows of docs/ARCHITECTURE.md on
// what each package links in (transitively): the builder agent and the
// client share only the wire format, the machines-file renderer and the
// wire format are leaves, the health checks know nothing of discovery,
// the client core knows none of its sources, and doctor does not link the
// client.
func TestDepsDataFlowsOneWay(t *testing.T) {
	const mod = "github.com/nixrb-discover/nixrb-discover/"
	ours := []string{"advertise", "cmd/", "discover", "doctor", "health", "metrics", "render", "systemd", "launchd", "wire"}
	sources := []string{"discover/tailnet", "discover/mdns", "discover/static"}
	rules := map[string][]string{
		"wire":             ours,
		"render":           ours,
		"health":           ours,
		"launchd":          ours,
		"advertise":        {"discover", "health", "render", "doctor", "metrics", "cmd/"},
		"discover":         append([]string{"advertise", "doctor", "metrics", "cmd/"}, sources...),
		"discover/tailnet": {"advertise", "doctor", "metrics", "cmd/", "discover/mdns", "discover/static"},
		"discover/mdns":    {"advertise", "doctor", "metrics", "cmd/", "discover/tailnet", "discover/static"},
		"discover/static":  {"advertise", "doctor", "metrics", "cmd/", "discover/tailnet", "discover/mdns"},
		"doctor":           {"advertise", "discover", "metrics", "wire", "cmd/"},
		"metrics":          append([]string{"advertise", "doctor", "cmd/"}, sources...),
	}
	for pkg, banned := range rules {
		for _, d := range goListDeps(t, mod+pkg) {
			rel, ok := strings.CutPrefix(d, mod)
			if !ok || rel == pkg {
				continue
			}
			for _, b := range banned {
				if rel == strings.TrimSuffix(b, "/") || strings.HasPrefix(rel, strings.TrimSuffix(b, "/")+"/") {
					t.Errorf("%s links %s (forbidden: see docs/ARCHITECTURE.md)", pkg, rel)
				}
			}
		}
	}
}
