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

	"github.com/nixrb-discover/nixrb-discover/systemd"
	"github.com/peterbourgon/ff/v3/ffcli"
)

func newSystemdUnitsCmd(e *env) *ffcli.Command {
	flags := flag.NewFlagSet("nixrb-discover systemd-units", flag.ContinueOnError)
	dir := flags.String("dir", "", "write the unit files into this directory (e.g. /etc/systemd/system) instead of printing them")
	bin := flags.String("bin", systemd.DefaultBinary, "absolute path of the nixrb-discover binary that ExecStart= runs")
	force := flags.Bool("force", false, "with --dir, replace unit files that exist (without it they are kept and the command fails)")
	return &ffcli.Command{
		Name:       "systemd-units",
		ShortUsage: "nixrb-discover systemd-units [--dir DIR [--force]] [--bin PATH]",
		ShortHelp:  "Print the systemd unit files for installs without NixOS",
		LongHelp: strings.TrimSpace(`
Prints the hardened unit files of the builder agent
(nixrb-discover-advertise.service) and the client
(nixrb-discover-client.service), each after a "# FILE" line, or writes
them into --dir (never over existing units without --force). They run
/usr/bin/nixrb-discover unless --bin says otherwise. On NixOS use the
module (services.nixrb-discover) instead.

Example:
  nixrb-discover systemd-units --dir /etc/systemd/system --bin "$(command -v nixrb-discover)"
  systemctl daemon-reload
  systemctl enable --now nixrb-discover-client.service`),
		FlagSet: flags,
		Exec: func(ctx context.Context, args []string) error {
			if len(args) > 0 {
				return usageError("systemd-units takes no arguments (got %q); choose a directory with --dir", args[0])
			}
			return runSystemdUnits(e, *dir, *bin, *force)
		},
	}
}

func runSystemdUnits(e *env, dir, bin string, force bool) error {
	units := systemd.Units()
	for name, b := range units {
		b, err := systemd.WithBinary(b, bin)
		if err != nil {
			return usageError("--bin: %v", err)
		}
		units[name] = b
	}
	if dir == "" {
		for i, name := range systemd.UnitNames() {
			if i > 0 {
				fmt.Fprintln(e.stdout)
			}
			fmt.Fprintf(e.stdout, "# %s\n", name)
			e.stdout.Write(units[name])
		}
		return nil
	}
	if _, err := os.Stat(bin); err != nil {
		fmt.Fprintf(e.stderr, "nixrb-discover: warning: --bin %s: %v: the units will not start until it exists (pass --bin \"$(command -v nixrb-discover)\")\n", bin, err)
	}
	if !force {
		var exist []string
		for _, name := range systemd.UnitNames() {
			if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
				exist = append(exist, filepath.Join(dir, name))
			}
		}
		if len(exist) > 0 {
			return &exitError{code: 1, err: fmt.Errorf("unit files exist, not replacing them: %s", strings.Join(exist, ", ")),
				hint: "compare them with 'nixrb-discover systemd-units' and pass --force to replace them"}
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return &exitError{code: 1, err: fmt.Errorf("unit directory: %w", err)}
	}
	for _, name := range systemd.UnitNames() {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, units[name], 0o644); err != nil {
			hint := ""
			if errors.Is(err, fs.ErrPermission) {
				hint = "writing into " + dir + " needs root: sudo nixrb-discover systemd-units --dir " + dir
			}
			return &exitError{code: 1, err: fmt.Errorf("write unit: %w", err), hint: hint}
		}
		fmt.Fprintf(e.stdout, "wrote %s\n", p)
	}
	fmt.Fprintln(e.stdout, "next: systemctl daemon-reload, then systemctl enable --now the unit this machine needs")
	return nil
}
