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

// TestDepsDataFlowsOneWay checks the layering in DESIGN.md: render knows
// nothing of the other packages, advertise knows nothing of discover.
func TestDepsDataFlowsOneWay(t *testing.T) {
	const mod = "github.com/nixrb-discover/nixrb-discover/"
	rules := map[string][]string{
		"render":    {"advertise", "discover", "systemd", "cmd/"},
		"advertise": {"discover", "cmd/"},
		"discover":  {"cmd/"},
	}
	for pkg, banned := range rules {
		for _, d := range goListDeps(t, mod+pkg) {
			for _, b := range banned {
				if strings.HasPrefix(d, mod+b) {
					t.Errorf("%s imports %s", pkg, d)
				}
			}
		}
	}
}
