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

	"github.com/nixrb-discover/nixrb-discover/advertise"
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
	socket := fs.String("socket", advertise.DefaultEnrollSocket, "the agent's enrolment socket, asked whether --key is still valid")
	keyFP := fs.String("key", "", "the SHA256 fingerprint (without \"SHA256:\") of the key this session logged in with")
	return &ffcli.Command{
		Name:       "ssh-gate",
		ShortUsage: "nixrb-discover ssh-gate [flags]",
		ShortHelp:  "Run only what Nix asks for, as the forced command of enrolled keys",
		LongHelp: strings.TrimSpace(`
The forced command of enrolled keys (see 'nixrb-discover authorized-keys').
It reads the command the client asked for from SSH_ORIGINAL_COMMAND and
runs it, found on PATH, only if it is exactly 'nix-daemon --stdio'
(ssh-ng://) or 'nix-store --serve --write' (ssh://). Anything else, a
shell included, is refused with exit status 1. With --key (as
'authorized-keys' writes it) it first asks the agent whether that key is
still valid, and refuses if not or if the agent cannot answer within 2 s:
a session opened over a connection that logged in before the key was
revoked (an SSH ControlMaster) is refused too, and the agent ends the
sessions it admitted once their key is revoked.`),
		FlagSet: fs,
		Exec: func(ctx context.Context, args []string) error {
			if len(args) > 0 {
				return usageError("ssh-gate takes no arguments (got %q)", args[0])
			}
			argv, err := gateCommand(os.Getenv("SSH_ORIGINAL_COMMAND"))
			if err != nil {
				return err
			}
			if *keyFP != "" {
				cctx, cancel := context.WithTimeout(ctx, authorizedKeysTimeout)
				err := advertise.CheckSession(cctx, *socket, *keyFP)
				cancel()
				if err != nil {
					return fmt.Errorf("refused: this key may not run Nix now: %w", err)
				}
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
