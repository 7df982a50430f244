package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"runtime"
	"strings"
	"time"

	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/nixrb-discover/nixrb-discover/doctor"
	"github.com/peterbourgon/ff/v3/ffcli"
	"tailscale.com/client/local"
)

func newDoctorCmd(e *env) *ffcli.Command {
	fs := flag.NewFlagSet("nixrb-discover doctor", flag.ContinueOnError)
	machines := fs.String("machines", "", "machines file the client writes (default: the running client's, asked over --socket, else /etc/nix/machines)")
	socket := fs.String("socket", discover.SocketFor(runtime.GOOS), "the running client's status socket, to learn its machines file")
	nixPath := fs.String("nix", doctor.DefaultNixPath, "nix program whose settings and version to check")
	sshConfig := fs.String("ssh-config", "", "ssh_config Host aliases the client writes for non-22 ports (default: the running client's --ssh-config, asked over --socket, else "+doctor.DefaultSSHConfigPath+", the NixOS module's)")
	nixStateDir := fs.String("nix-state-dir", doctor.DefaultNixStateDir, "state directory of the Nix that reads the machines file (the client's --nix-state-dir)")
	user := fs.String("user", doctor.DefaultUser, "SSH user for a URI without one: the user nix-daemon builds as")
	timeout := fs.Duration("timeout", doctor.DefaultTimeout, "bound on each step: command, lookup, connect, SSH step")
	tailscaleSocket := fs.String("tailscale-socket", "", "tailscaled's LocalAPI socket, to check the tailnet's control server (default: tailscaled's usual path)")
	return &ffcli.Command{
		Name:       "doctor",
		ShortUsage: "nixrb-discover doctor [--machines FILE] [--nix PATH] [--ssh-config FILE] [BUILDER]",
		ShortHelp:  "Explain why Nix does or does not use each builder",
		LongHelp: strings.TrimSpace(`
Run as root, the user nix-daemon runs builds as. Checks, in the order Nix
meets them, each printed as "✔ what" or "✘ what — fix: …":

  - Nix's effective builders setting (nix show-config / nix config show)
    includes the machines file;
  - the client can hold Nix's build slots in <nix-state-dir>/current-load
    (how it keeps Nix off a builder that is down);
  - the machines file parses for the local Nix (FILE:LINE for each problem);
  - a builder on a non-22 port has an ssh_config Host alias (Nix < 2.31)
    and root's ssh_config includes the alias file;
  - when tailscaled runs and a peer is tagged: the control server makes
    tags the identity of tagged nodes (WhoIs shows them owned by
    tagged-devices, as Tailscale and headscale >= 0.28 do);
  - per builder (or only BUILDER, by host or name): the SSH key in field 3
    is readable and has no passphrase, the host resolves with root's
    resolver (MagicDNS names only if it asks tailscaled), TCP reaches sshd
    and it sends a banner, the host key matches field 8, the key is
    accepted (a Tailscale SSH check-mode rule is recognised), Nix is on the
    remote's non-interactive PATH, and the remote user is trusted.

Exit status: 0 when every check passes, 1 otherwise, 2 usage.

Example:
  sudo nixrb-discover doctor b1.tail1234.ts.net`),
		FlagSet: fs,
		Exec: func(ctx context.Context, args []string) error {
			if len(args) > 1 {
				return usageError("doctor takes at most one BUILDER, got %d arguments", len(args))
			}
			if *timeout <= 0 {
				return usageError("--timeout %s: want a positive duration", *timeout)
			}
			st := runningClient(ctx, *socket)
			if *machines == "" {
				*machines = "/etc/nix/machines"
				if st != nil && st.MachinesFile != "" {
					*machines = st.MachinesFile
				}
			}
			if *sshConfig == "" {
				*sshConfig = doctor.DefaultSSHConfigPath
				if st != nil && st.SSHConfig != "" {
					*sshConfig = st.SSHConfig
				}
			}
			opts := doctor.Options{
				MachinesPath:  *machines,
				SSHConfigPath: *sshConfig,
				NixPath:       *nixPath,
				NixStateDir:   *nixStateDir,
				User:          *user,
				Timeout:       *timeout,
				Tailnet:       &local.Client{Socket: *tailscaleSocket, UseSocketOnly: *tailscaleSocket != ""},
			}
			if len(args) == 1 {
				opts.Builder = args[0]
			}
			rep := doctor.Run(ctx, opts)
			printReport(e.stdout, rep)
			if !rep.OK() {
				return &exitError{code: 1}
			}
			return nil
		},
	}
}

// runningClient is the status of the client on socket, or nil: doctor
// checks the files that client writes.
func runningClient(ctx context.Context, socket string) *discover.Status {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	st, err := discover.FetchStatus(ctx, socket)
	if err != nil {
		return nil
	}
	return st
}

// printReport writes one line per check, with multi-line details (one
// problem per line) indented under it.
func printReport(w io.Writer, rep doctor.Report) {
	ok, failed := 0, 0
	for _, c := range rep.Checks {
		mark := "✔"
		if !c.OK {
			mark = "✘"
			failed++
		} else {
			ok++
		}
		line := mark + " " + c.Name
		detail, more, multi := strings.Cut(c.Detail, "\n")
		if c.Detail != "" && !multi {
			line += ": " + detail
		}
		if !c.OK && c.Fix != "" {
			line += " — fix: " + c.Fix
		}
		fmt.Fprintln(w, line)
		if multi {
			for _, l := range strings.Split(detail+"\n"+more, "\n") {
				fmt.Fprintln(w, "    "+l)
			}
		}
	}
	if failed == 0 {
		fmt.Fprintf(w, "all %d checks passed\n", ok)
		return
	}
	fmt.Fprintf(w, "%d of %d checks failed\n", failed, ok+failed)
}
