package main

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/nixrb-discover/nixrb-discover/doctor"
)

// runDoctor runs the doctor command as the root command would, once the
// lead lists it there.
func runDoctor(t *testing.T, args ...string) (stdout string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := newDoctorCmd(&env{stdout: &out, stderr: &errOut})
	cmd.FlagSet.SetOutput(&errOut)
	if err := cmd.Parse(args); err != nil {
		return out.String(), &exitError{code: 2, err: err}
	}
	err = cmd.Run(context.Background())
	return out.String(), err
}

func exitStatus(err error) int {
	var ee *exitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.code
	}
	return 1
}

func TestDoctorUsage(t *testing.T) {
	for _, args := range [][]string{
		{"b1", "b2"},        // one BUILDER at most
		{"--timeout", "0s"}, // a bound must bound
		{"--no-such-flag"},  // unknown flag
	} {
		if _, err := runDoctor(t, args...); exitStatus(err) != 2 {
			t.Errorf("doctor %q: exit %d (%v), want 2", args, exitStatus(err), err)
		}
	}
}

func TestPrintReport(t *testing.T) {
	var b bytes.Buffer
	printReport(&b, doctor.Report{Checks: []doctor.Check{
		{Name: "local Nix runs", OK: true, Detail: "Nix 2.8.0"},
		{Name: "machines file m parses", Detail: "m:2: field max-jobs: bad\nm:5: field uri: no host", Fix: "correct these lines"},
		{Name: "builder b1: TCP reaches sshd", Detail: "connection refused", Fix: "start sshd"},
	}})
	want := `✔ local Nix runs: Nix 2.8.0
✘ machines file m parses — fix: correct these lines
    m:2: field max-jobs: bad
    m:5: field uri: no host
✘ builder b1: TCP reaches sshd: connection refused — fix: start sshd
2 of 3 checks failed
`
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
	b.Reset()
	printReport(&b, doctor.Report{Checks: []doctor.Check{{Name: "a", OK: true}}})
	if got := b.String(); got != "✔ a\nall 1 checks passed\n" || strings.Contains(got, "fix") {
		t.Errorf("all passing: got %q", got)
	}
}
