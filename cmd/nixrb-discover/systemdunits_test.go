package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/nixrb-discover/nixrb-discover/systemd"
)

// runSystemdUnitsCmd runs the systemd-units command as main would,
// without the root command (which lists it separately).
func runSystemdUnitsCmd(t *testing.T, args ...string) (stdout string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := newSystemdUnitsCmd(&env{stdout: &out, stderr: &errOut})
	cmd.FlagSet.SetOutput(&errOut)
	if err := cmd.Parse(args); err != nil {
		return out.String(), err
	}
	err = cmd.Run(context.Background())
	return out.String(), err
}

func exitCodeOf(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	if err != nil {
		return 1
	}
	return 0
}

func TestSystemdUnits(t *testing.T) {
	t.Run("prints-each-unit-after-its-name", func(t *testing.T) {
		out, err := runSystemdUnitsCmd(t)
		if err != nil {
			t.Fatal(err)
		}
		// Splitting at the "# FILE" lines gives back the embedded files.
		units := systemd.Units()
		var want strings.Builder
		for i, name := range systemd.UnitNames() {
			if i > 0 {
				want.WriteString("\n")
			}
			want.WriteString("# " + name + "\n")
			want.Write(units[name])
		}
		if out != want.String() {
			t.Errorf("output is not the units in order, each after its '# FILE' line:\n%s", out)
		}
	})
	t.Run("writes-into-dir-with-another-binary", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "system")
		out, err := runSystemdUnitsCmd(t, "--dir", dir, "--bin", "/usr/local/bin/nixrb-discover")
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range systemd.UnitNames() {
			b, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(b, []byte("\nExecStart=/usr/local/bin/nixrb-discover ")) {
				t.Errorf("%s: ExecStart does not run --bin", name)
			}
			if !strings.Contains(out, "wrote "+filepath.Join(dir, name)+"\n") {
				t.Errorf("output does not say it wrote %s:\n%s", name, out)
			}
		}
	})
	t.Run("installed-units-verify", func(t *testing.T) {
		// What a user does: install with --bin naming the real binary,
		// then systemd checks the files (and that the binary exists).
		analyze, err := exec.LookPath("systemd-analyze")
		if err != nil {
			t.Skip("systemd-analyze not installed (Debian package systemd; scripts/test.sh installs it)")
		}
		dir := t.TempDir()
		bin := filepath.Join(dir, "nixrb-discover")
		self, err := os.ReadFile(os.Args[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(bin, self, 0o755); err != nil {
			t.Fatal(err)
		}
		if _, err := runSystemdUnitsCmd(t, "--dir", dir, "--bin", bin); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		args := []string{"verify"}
		for _, name := range systemd.UnitNames() {
			args = append(args, filepath.Join(dir, name))
		}
		out, err := exec.CommandContext(ctx, analyze, args...).CombinedOutput()
		if err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("systemd-analyze verify: %v\n%s", err, out)
		}
	})
	t.Run("usage-errors-exit-2", func(t *testing.T) {
		for _, args := range [][]string{
			{"extra"},
			{"--bin", "relative/nixrb-discover"},
			{"--bin", "/opt/my tools/nixrb-discover"},
		} {
			_, err := runSystemdUnitsCmd(t, args...)
			if code := exitCodeOf(err); code != 2 {
				t.Errorf("%q: exit %d (%v), want 2", args, code, err)
			}
		}
	})
	t.Run("unwritable-dir-exits-1", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "file")
		if err := os.WriteFile(file, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := runSystemdUnitsCmd(t, "--dir", file)
		if code := exitCodeOf(err); code != 1 {
			t.Errorf("--dir naming a file: exit %d (%v), want 1", code, err)
		}
	})
	t.Run("help-reads-well", func(t *testing.T) {
		// The rules of TestDocs, for a command the root does not list yet.
		c := newSystemdUnitsCmd(&env{})
		if !strings.HasPrefix(c.ShortUsage, "nixrb-discover "+c.Name) {
			t.Errorf("ShortUsage %q", c.ShortUsage)
		}
		if first := strings.Fields(c.ShortHelp)[0]; !unicode.IsUpper(rune(first[0])) || strings.HasSuffix(first, "s") || strings.HasSuffix(c.ShortHelp, ".") {
			t.Errorf("ShortHelp %q: want a capitalised imperative", c.ShortHelp)
		}
		c.FlagSet.VisitAll(func(f *flag.Flag) {
			if f.Usage == "" || unicode.IsUpper(rune(f.Usage[0])) || strings.HasSuffix(f.Usage, ".") {
				t.Errorf("--%s: usage %q", f.Name, f.Usage)
			}
		})
	})
}
