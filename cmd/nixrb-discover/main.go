// Command nixrb-discover makes Nix remote builders configure themselves:
// builders advertise what they can build, clients discover and health-check
// them and keep the Nix machines file current.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// exitCode prints err once, in the CLI voice, and maps it to an exit status:
// 0 success, 2 usage, otherwise the status carried by an *exitError or 1.
func exitCode(err error, stderr *os.File) int {
	if err == nil {
		return 0
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			printError(stderr, ee.err, ee.hint)
		}
		return ee.code
	}
	printError(stderr, err, "")
	return 1
}

func printError(w io.Writer, err error, hint string) {
	fmt.Fprintf(w, "nixrb-discover: error: %v\n", err)
	if hint != "" {
		fmt.Fprintf(w, "nixrb-discover: hint: %s\n", hint)
	}
}
