package main

import (
	"flag"
	"io"
	"strings"
	"testing"
	"unicode"

	"github.com/peterbourgon/ff/v3/ffcli"
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

// TestEnrollCommandDocs holds authorized-keys and ssh-gate to TestDocs'
// rules before the root command lists them.
func TestEnrollCommandDocs(t *testing.T) {
	e := &env{stdout: io.Discard, stderr: io.Discard}
	for _, c := range []*ffcli.Command{newAuthorizedKeysCmd(e), newSSHGateCmd(e)} {
		name := "nixrb-discover " + c.Name
		if !strings.HasPrefix(c.ShortUsage, name) {
			t.Errorf("ShortUsage %q does not start with %q", c.ShortUsage, name)
		}
		first := strings.Fields(c.ShortHelp)[0]
		if !unicode.IsUpper(rune(c.ShortHelp[0])) || strings.HasSuffix(c.ShortHelp, ".") || strings.HasSuffix(first, "s") {
			t.Errorf("ShortHelp %q: want a capitalised imperative without a final period", c.ShortHelp)
		}
		c.FlagSet.VisitAll(func(f *flag.Flag) {
			if f.Usage == "" || unicode.IsUpper(rune(f.Usage[0])) || strings.HasSuffix(f.Usage, ".") {
				t.Errorf("%s --%s: usage %q", c.Name, f.Name, f.Usage)
			}
		})
	}
	if lh := newAuthorizedKeysCmd(e).LongHelp; !strings.Contains(lh, "AuthorizedKeysCommand ") || !strings.Contains(lh, "AuthorizedKeysCommandUser root") {
		t.Errorf("authorized-keys help lacks the sshd_config lines:\n%s", lh)
	}
}
