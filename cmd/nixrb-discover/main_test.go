package main

import (
	"context"
	"flag"
	"io"
	"os"
	"strings"
	"testing"
	"unicode"

	"github.com/peterbourgon/ff/v3/ffcli"
	"github.com/rogpeppe/go-internal/testscript"
)

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"nixrb-discover": func() {
			err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr)
			os.Exit(exitCode(err, os.Stderr))
		},
	})
}

// TestScripts runs the real command line on testdata/script/*.txtar.
func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{Dir: "testdata/script"})
}

// TestDocs walks every command: help text reads well and is complete.
func TestDocs(t *testing.T) {
	root := newRootCmd(&env{stdout: io.Discard, stderr: io.Discard})
	var walk func(prefix string, c *ffcli.Command)
	walk = func(prefix string, c *ffcli.Command) {
		name := strings.TrimSpace(prefix + " " + c.Name)
		t.Run(name, func(t *testing.T) {
			if !strings.HasPrefix(c.ShortUsage, name) {
				t.Errorf("ShortUsage %q does not start with %q", c.ShortUsage, name)
			}
			if c.ShortHelp == "" || !unicode.IsUpper(rune(c.ShortHelp[0])) || strings.HasSuffix(c.ShortHelp, ".") {
				t.Errorf("ShortHelp %q: want a capitalised imperative without a final period", c.ShortHelp)
			}
			first := strings.Fields(c.ShortHelp)[0]
			if strings.HasSuffix(first, "s") && !strings.HasSuffix(first, "ss") {
				t.Errorf("ShortHelp %q: want the imperative (%q reads as third person)", c.ShortHelp, first)
			}
			if c.FlagSet == nil {
				t.Fatal("no FlagSet: --help would not work")
			}
			c.FlagSet.VisitAll(func(f *flag.Flag) {
				first := strings.Fields(f.Usage + " x")[0]
				capitalised := len(first) > 1 && unicode.IsUpper(rune(first[0])) && strings.ToLower(first[1:]) == first[1:]
				if f.Usage == "" || capitalised || strings.HasSuffix(f.Usage, ".") {
					t.Errorf("flag --%s: usage %q should start lowercase (acronyms aside), without a final period", f.Name, f.Usage)
				}
			})
		})
		for _, s := range c.Subcommands {
			walk(name, s)
		}
	}
	walk("", root)
}
