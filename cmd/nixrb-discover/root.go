package main

import (
	"bytes"
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
and keeps the Nix machines file holding exactly the builders that work.

Run 'nixrb-discover help COMMAND' (or COMMAND --help) for a command's
flags; 'nixrb-discover --version' prints the version.`),
		FlagSet: fs,
		Subcommands: []*ffcli.Command{
			newVersionCmd(e),
			newAdvertiseCmd(e),
			newAuthorizedKeysCmd(e),
			newCheckMachinesCmd(e),
			newClientCmd(e),
			newDoctorCmd(e),
			newKeygenCmd(e),
			newLaunchdPlistCmd(e),
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

// run parses args and runs the chosen command. Help (--help, -h, help
// COMMAND) goes to stdout and exits 0; a flag error prints one line and
// where to look, not the whole usage.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	e := &env{stdout: stdout, stderr: stderr}
	root := newRootCmd(e)
	if len(args) > 0 {
		switch args[0] {
		case "--version", "-version", "-v", "-V":
			args = append([]string{"version"}, args[1:]...)
		case "help":
			args = append(append([]string{}, args[1:]...), "--help")
		}
	}
	var usage bytes.Buffer
	var setOutput func(c *ffcli.Command)
	setOutput = func(c *ffcli.Command) {
		c.FlagSet.SetOutput(&usage)
		for _, s := range c.Subcommands {
			setOutput(s)
		}
	}
	setOutput(root)
	if err := root.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			stdout.Write(usage.Bytes())
			return err
		}
		path := commandPath(root, args)
		hint := ""
		if isFlagError(err) {
			hint = "see '" + path + " --help'"
			// ff wraps the flag package's one clear line; say just that.
			err = errors.New(strings.TrimPrefix(err.Error(), "error parsing commandline arguments: "))
		}
		return &exitError{code: 2, err: err, hint: hint}
	}
	return root.Run(ctx)
}

// isFlagError says whether err comes from the flag package (a flag the
// command does not have, a value it cannot take).
func isFlagError(err error) bool {
	msg := strings.TrimPrefix(err.Error(), "error parsing commandline arguments: ")
	for _, p := range []string{"flag provided but not defined", "invalid value", "invalid boolean", "bad flag syntax", "flag needs an argument"} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

// commandAt is the command args select (the deepest subcommand named).
func commandAt(root *ffcli.Command, args []string) *ffcli.Command {
	c := root
	for _, a := range args {
		for _, s := range c.Subcommands {
			if a == s.Name {
				c = s
				break
			}
		}
	}
	return c
}

// commandPath is the full name of the command args select.
func commandPath(root *ffcli.Command, args []string) string {
	c := commandAt(root, args)
	if c == root {
		return root.Name
	}
	return root.Name + " " + c.Name
}
