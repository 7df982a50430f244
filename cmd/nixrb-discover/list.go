package main

import (
	"context"
	"encoding/json"
	"flag"
	"strings"
	"time"

	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/peterbourgon/ff/v3/ffcli"
)

func newListCmd(e *env) *ffcli.Command {
	fs := flag.NewFlagSet("nixrb-discover list", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print the client's state as JSON (versioned: see the version field)")
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
no running client, runs one discovery round itself with the client flags
(and writes the machines file, as client --once does).

Example:
  nixrb-discover list --all`),
		FlagSet: fs,
		Exec: func(ctx context.Context, args []string) error {
			if len(args) > 0 {
				return usageError("list takes no arguments (got %q)", args[0])
			}
			var st *discover.Status
			if cf.once {
				c, cleanup, err := cf.build(ctx, e)
				if err != nil {
					return err
				}
				defer cleanup()
				c.Init()
				done := make(chan error, 1)
				ctx, cancel := context.WithCancel(ctx)
				defer cancel()
				c.Once = false
				ready := make(chan struct{})
				c.Hooks.Ready = func() { close(ready) }
				go func() { done <- c.Run(ctx) }()
				select {
				case <-ready:
				case err := <-done:
					return err
				}
				if st, err = c.Status(ctx); err != nil {
					return err
				}
			} else {
				sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				var err error
				if st, err = discover.FetchStatus(sctx, cf.socket); err != nil {
					return &exitError{code: 1, err: err, hint: "is the client running? start it (systemctl start nixrb-discover-client) or use list --once"}
				}
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
