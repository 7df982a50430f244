package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"

	"github.com/peterbourgon/ff/v3/ffcli"
)

// gateCommands are the only SSH_ORIGINAL_COMMANDs ssh-gate runs: what
// Nix (2.8 through 2.26) sends for ssh-ng:// and ssh:// stores.
var gateCommands = [][]string{
	{"nix-daemon", "--stdio"},
	{"nix-store", "--serve", "--write"},
}

func newSSHGateCmd(e *env) *ffcli.Command {
	fs := flag.NewFlagSet("nixrb-discover ssh-gate", flag.ContinueOnError)
	return &ffcli.Command{
		Name:       "ssh-gate",
		ShortUsage: "nixrb-discover ssh-gate",
		ShortHelp:  "Run only what Nix asks for, as the forced command of enrolled keys",
		LongHelp: strings.TrimSpace(`
The forced command of enrolled keys (see 'nixrb-discover authorized-keys').
It reads the command the client asked for from SSH_ORIGINAL_COMMAND and
runs it, found on PATH, only if it is exactly 'nix-daemon --stdio'
(ssh-ng://) or 'nix-store --serve --write' (ssh://). Anything else, a
shell included, is refused with exit status 1.`),
		FlagSet: fs,
		Exec: func(ctx context.Context, args []string) error {
			if len(args) > 0 {
				return usageError("ssh-gate takes no arguments (got %q)", args[0])
			}
			argv, err := gateCommand(os.Getenv("SSH_ORIGINAL_COMMAND"))
			if err != nil {
				return err
			}
			path, err := exec.LookPath(argv[0])
			if err != nil {
				return fmt.Errorf("%s is not on PATH: %w", argv[0], err)
			}
			return syscall.Exec(path, argv, os.Environ())
		},
	}
}

// gateCommand returns the argv of an allowed SSH_ORIGINAL_COMMAND, or an
// error saying what this key may run.
func gateCommand(orig string) ([]string, error) {
	argv := strings.Split(orig, " ")
	for _, want := range gateCommands {
		if strings.Join(argv, "\x00") == strings.Join(want, "\x00") {
			return want, nil
		}
	}
	if strings.TrimSpace(orig) == "" {
		return nil, errors.New("refused: this key runs only Nix (nix-daemon --stdio or nix-store --serve --write), not a shell")
	}
	return nil, fmt.Errorf("refused %q: this key runs only nix-daemon --stdio or nix-store --serve --write", orig)
}
