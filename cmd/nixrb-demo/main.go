// Command nixrb-demo shows nixrb-discover's main job in one process, with
// nothing installed but Go: an in-process tailnet, two builders running the
// real advertise agent, an untagged peer that must stay out, and the real
// client keeping a machines file as builders stop and die.
//
//	go run ./cmd/nixrb-demo [-v [-tailscale-logs]]
//
// Its output says what is real and what is simulated. It links tsnet and
// testcontrol, so it is a separate binary from nixrb-discover.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/nixrb-discover/nixrb-discover/internal/demo"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil && err != flag.ErrHelp {
		fmt.Fprintf(os.Stderr, "nixrb-demo: error: %v\n", err)
		os.Exit(1)
	}
}

// run parses args and runs the demo, writing its output to stdout and, with
// -v, the logs of every part to stderr.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("nixrb-demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	verbose := fs.Bool("v", false, "log what the client and the agents do (to stderr)")
	tslogs := fs.Bool("tailscale-logs", false, "with -v, also log Tailscale's own messages (many)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("nixrb-demo takes no arguments (got %q)", fs.Arg(0))
	}
	var log *slog.Logger
	if *verbose {
		log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return demo.Run(ctx, demo.Options{Stdout: stdout, Logger: log, TailscaleLogs: *tslogs})
}
