package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/nixrb-discover/nixrb-discover/launchd"
	"github.com/peterbourgon/ff/v3/ffcli"
)

func newLaunchdPlistCmd(e *env) *ffcli.Command {
	flags := flag.NewFlagSet("nixrb-discover launchd-plist", flag.ContinueOnError)
	dir := flags.String("dir", "", "write the plist into this directory (e.g. "+launchd.DefaultDir+") instead of printing it")
	bin := flags.String("bin", launchd.DefaultBinary, "absolute path of the nixrb-discover binary that launchd runs")
	force := flags.Bool("force", false, "with --dir, replace a plist that exists (without it it is kept and the command fails)")
	return &ffcli.Command{
		Name:       "launchd-plist",
		ShortUsage: "nixrb-discover launchd-plist [--dir DIR [--force]] [--bin PATH]",
		ShortHelp:  "Print the macOS launchd daemon plist of the client",
		LongHelp: strings.TrimSpace(`
Prints the launchd job of the client (` + launchd.ClientPlist + `):
a daemon run as root at boot (RunAtLoad) and again whenever it exits
(KeepAlive), logging to ` + launchd.LogFile + `, keeping
` + launchd.StateDir + `/machines. Or writes it into --dir (never over an
existing plist without --force). It runs ` + launchd.DefaultBinary + `
unless --bin says otherwise: a binary only root may change (launchd runs
it as root). With nix-darwin use the module instead
(darwinModules.default, services.nixrb-discover.client).

Example:
  sudo install -m 0755 "$(command -v nixrb-discover)" /usr/local/bin/nixrb-discover
  sudo /usr/local/bin/nixrb-discover launchd-plist --dir /Library/LaunchDaemons
  sudo launchctl bootstrap system /Library/LaunchDaemons/` + launchd.ClientPlist + `
then add "builders = @` + launchd.StateDir + `/machines" to /etc/nix/nix.conf
(Determinate Nix: /etc/nix/nix.custom.conf) and restart the Nix daemon.`),
		FlagSet: flags,
		Exec: func(ctx context.Context, args []string) error {
			if len(args) > 0 {
				return usageError("launchd-plist takes no arguments (got %q); choose a directory with --dir", args[0])
			}
			return runLaunchdPlist(e, *dir, *bin, *force)
		},
	}
}

func runLaunchdPlist(e *env, dir, bin string, force bool) error {
	b, err := launchd.Client(bin)
	if err != nil {
		return usageError("--bin: %v", err)
	}
	if dir == "" {
		e.stdout.Write(b)
		return nil
	}
	if _, err := os.Stat(bin); err != nil {
		fmt.Fprintf(e.stderr, "nixrb-discover: warning: --bin %s: %v: the job will not start until it exists (pass --bin \"$(command -v nixrb-discover)\")\n", bin, err)
	}
	p := filepath.Join(dir, launchd.ClientPlist)
	if _, err := os.Lstat(p); err == nil && !force {
		return &exitError{code: 1, err: fmt.Errorf("plist exists, not replacing it: %s", p),
			hint: "compare it with 'nixrb-discover launchd-plist' and pass --force to replace it (then launchctl bootout and bootstrap it again)"}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return &exitError{code: 1, err: fmt.Errorf("plist directory: %w", err)}
	}
	// launchd refuses a daemon plist that is group- or world-writable.
	if err := os.WriteFile(p, b, 0o644); err != nil {
		hint := ""
		if errors.Is(err, fs.ErrPermission) {
			hint = "writing into " + dir + " needs root: sudo nixrb-discover launchd-plist --dir " + dir
		}
		return &exitError{code: 1, err: fmt.Errorf("write plist: %w", err), hint: hint}
	}
	fmt.Fprintf(e.stdout, "wrote %s\n", p)
	fmt.Fprintf(e.stdout, "next: sudo launchctl bootstrap system %s\n", p)
	return nil
}
