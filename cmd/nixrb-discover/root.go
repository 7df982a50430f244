package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/peterbourgon/ff/v3/ffcli"
)

// exitError carries an exit status (and an optional hint) up to main.
type exitError struct {
	code int
	err  error
	hint string
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

// usageError is an exit-2 error: the command line itself was wrong.
func usageError(format string, args ...any) error {
	return &exitError{code: 2, err: fmt.Errorf(format, args...)}
}

// env is what every subcommand gets from main: its output streams.
type env struct {
	stdout io.Writer
	stderr io.Writer
}

// logger builds the one slog.Logger of a command run, text to stderr.
func (e *env) logger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, usageError("--log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: l})), nil
}

// newRootCmd lists every subcommand. Each lives in its own file.
func newRootCmd(e *env) *ffcli.Command {
	fs := flag.NewFlagSet("nixrb-discover", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	root := &ffcli.Command{
		Name:       "nixrb-discover",
		ShortUsage: "nixrb-discover <command> [flags]",
		ShortHelp:  "Make Nix remote builders configure themselves",
		LongHelp: strings.TrimSpace(`
Builders advertise what they can build over a Tailscale tailnet or mDNS;
the client discovers them, checks each over SSH with the real Nix protocol
and keeps the Nix machines file holding exactly the builders that work.`),
		FlagSet: fs,
		Subcommands: []*ffcli.Command{
			newVersionCmd(e),
			newAdvertiseCmd(e),
			newAuthorizedKeysCmd(e),
			newCheckMachinesCmd(e),
			newClientCmd(e),
			newDoctorCmd(e),
			newKeygenCmd(e),
			newListCmd(e),
			newSSHGateCmd(e),
			newSystemdUnitsCmd(e),
		},
	}
	root.Exec = func(ctx context.Context, args []string) error {
		if len(args) > 0 {
			return usageError("unknown command %q (see 'nixrb-discover --help')", args[0])
		}
		fmt.Fprintln(e.stderr, ffcli.DefaultUsageFunc(root))
		return &exitError{code: 2}
	}
	for _, c := range root.Subcommands {
		c.FlagSet.SetOutput(e.stderr)
	}
	return root
}

// run parses args and runs the chosen command.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	e := &env{stdout: stdout, stderr: stderr}
	root := newRootCmd(e)
	if err := root.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return &exitError{code: 2, err: err}
	}
	return root.Run(ctx)
}
