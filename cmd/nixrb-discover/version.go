package main

import (
	"context"
	"flag"
	"fmt"
	"runtime/debug"

	"github.com/peterbourgon/ff/v3/ffcli"
)

// version is set by the linker (-X main.version=...) in release builds.
var version = ""

// agentVersion is this binary's version: the linker's, else the module's.
func agentVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}

func newVersionCmd(e *env) *ffcli.Command {
	fs := flag.NewFlagSet("nixrb-discover version", flag.ContinueOnError)
	return &ffcli.Command{
		Name:       "version",
		ShortUsage: "nixrb-discover version",
		ShortHelp:  "Print the version of nixrb-discover",
		FlagSet:    fs,
		Exec: func(ctx context.Context, args []string) error {
			if len(args) > 0 {
				return usageError("version takes no arguments")
			}
			fmt.Fprintf(e.stdout, "nixrb-discover %s\n", agentVersion())
			return nil
		},
	}
}
