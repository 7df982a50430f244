package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/peterbourgon/ff/v3/ffcli"
)

func newListCmd(e *env) *ffcli.Command {
	fs := flag.NewFlagSet("nixrb-discover list", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print the client's state as JSON (versioned, docs/STATUS.md)")
	all := fs.Bool("all", false, "include builders that are not in the file (untrusted, failing, draining) with the reason")
	var cf clientFlags
	cf.register(fs) // --once uses the client's flags; --socket says where a running client is
	return &ffcli.Command{
		Name:       "list",
		ShortUsage: "nixrb-discover list [--json] [--all] [--once [client flags]]",
		ShortHelp:  "Show builders the client sees and why",
		LongHelp: strings.TrimSpace(`
Asks the running client (over --socket) which builders it knows: their
state, why one is not in the machines file, and what is. With --once and
no running client on --socket, runs one discovery round itself with the
client flags; it never writes the machines file, the ssh_config aliases
or Nix's slot locks, and never creates the client's SSH key (without
one, builders refuse its checks).

Example:
  nixrb-discover list --all`),
		FlagSet: fs,
		Exec: func(ctx context.Context, args []string) error {
			if len(args) > 0 {
				return usageError("list takes no arguments (got %q)", args[0])
			}
			var st *discover.Status
			var err error
			if cf.once {
				st, err = listOnce(ctx, e, &cf)
			} else {
				sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				if st, err = discover.FetchStatus(sctx, cf.socket); err != nil {
					err = &exitError{code: 1, err: err, hint: "is the client running? start it (systemctl start nixrb-discover-client) or use list --once"}
				}
			}
			if err != nil {
				return err
			}
			if *asJSON {
				enc := json.NewEncoder(e.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			st.WriteTable(e.stdout, *all)
			return nil
		},
	}
}

// listOnce asks the client running on --socket, if there is one, else
// runs one discovery round with cf, writing only into a temporary
// directory: the real machines file, ssh_config aliases and slot locks
// are never touched and the SSH key is never created.
func listOnce(ctx context.Context, e *env, cf *clientFlags) (*discover.Status, error) {
	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	st, err := discover.FetchStatus(sctx, cf.socket)
	cancel()
	if err == nil {
		fmt.Fprintf(e.stderr, "nixrb-discover: a client is running on %s: showing its state\n", cf.socket)
		return st, nil
	}
	tmp, err := os.MkdirTemp("", "nixrb-discover-list-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	real := cf.machines
	cf.machines = filepath.Join(tmp, "machines")
	if cf.sshConfig != "" {
		cf.sshConfig = filepath.Join(tmp, "ssh_config")
	}
	if _, err := os.Stat(cf.sshKey); err != nil {
		fmt.Fprintf(e.stderr, "nixrb-discover: no client key at %s: checking with a throwaway key, which builders refuse\n", cf.sshKey)
		cf.sshKey = filepath.Join(tmp, "id_ed25519")
	}
	cf.adopt = false
	c, cleanup, err := cf.build(ctx, e)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	c.Once = false // keep the loop up to answer Status after the first round
	c.Init()
	done := make(chan error, 1)
	ctx, cancelRun := context.WithCancel(ctx)
	defer cancelRun()
	ready := make(chan struct{})
	c.Hooks.Ready = func() { close(ready) }
	go func() { done <- c.Run(ctx) }()
	select {
	case <-ready:
	case err := <-done:
		return nil, err
	}
	if st, err = c.Status(ctx); err != nil {
		return nil, err
	}
	st.MachinesFile = real + " (not written by list --once)"
	return st, nil
}
