package main

import (
	"strings"
	"testing"
)

func TestGateCommand(t *testing.T) {
	for _, tc := range []struct {
		orig string
		ok   bool
	}{
		{"nix-daemon --stdio", true},
		{"nix-store --serve --write", true},
		{"nix-store --serve", false},
		{"nix-daemon  --stdio", false},
		{"nix-daemon --stdio ", false},
		{"/usr/bin/nix-daemon --stdio", false},
		{"nix-daemon --stdio --store /tmp/x", false},
		{"nix-daemon --stdio; sh", false},
		{"sh", false},
		{"", false},
	} {
		argv, err := gateCommand(tc.orig)
		if tc.ok != (err == nil) {
			t.Errorf("gateCommand(%q) = %v, %v; want allowed %v", tc.orig, argv, err, tc.ok)
		}
		if err == nil && strings.Join(argv, " ") != tc.orig {
			t.Errorf("gateCommand(%q) = %q", tc.orig, argv)
		}
		if err != nil && !strings.Contains(err.Error(), "refused") {
			t.Errorf("gateCommand(%q) error %q does not say refused", tc.orig, err)
		}
	}
}

func TestSSHGateRefusesAShell(t *testing.T) {
	var out, errOut strings.Builder
	t.Setenv("SSH_ORIGINAL_COMMAND", "sh")
	err := newSSHGateCmd(&env{stdout: &out, stderr: &errOut}).ParseAndRun(t.Context(), nil)
	if err == nil || !strings.Contains(err.Error(), `refused "sh"`) || out.Len() != 0 {
		t.Fatalf("err = %v, stdout %q", err, out.String())
	}
}
