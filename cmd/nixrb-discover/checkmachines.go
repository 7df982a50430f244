package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/nixrb-discover/nixrb-discover/internal/localnix"
	"github.com/nixrb-discover/nixrb-discover/render"
	"github.com/peterbourgon/ff/v3/ffcli"
)

func newCheckMachinesCmd(e *env) *ffcli.Command {
	fs := flag.NewFlagSet("nixrb-discover check-machines", flag.ContinueOnError)
	nixVersion := fs.String("nix-version", "", `check against the rules of this Nix: what nix --version prints ("nix (Nix) 2.26.3", "nix (Determinate Nix 3.8.2) 2.30.1", "nix (Lix, like Nix) 2.93.3") or a CppNix version such as 2.26.3 (default: what the local nix reports, else the oldest rules)`)
	logLevel := fs.String("log-level", "warn", "log level: debug, info, warn or error")
	return &ffcli.Command{
		Name:       "check-machines",
		ShortUsage: "nixrb-discover check-machines [--nix-version V] FILE... (- for standard input)",
		ShortHelp:  "Validate Nix machines files exactly as Nix parses them",
		LongHelp: strings.TrimSpace(`
Reads each machines file as Nix does (comments, ';' separators, @includes,
'-' for an empty field) and prints every problem as

  FILE:LINE: field NAME: "VALUE": what is wrong

The rules are those of the Nix named by --nix-version (CppNix, Determinate
Nix by the CppNix it is built on, or Lix): fractional speed factors need
CppNix 2.20; a port in the store URI is host:port from CppNix 2.31 and
?port=N from Lix 2.93; a '#' comment ends at the next ';' before CppNix
2.29 and in every Lix. A host key must be the base64 of one SSH public key
line. Every FILE is checked, even after one that cannot be read; '-'
reads standard input. Only regular files are read (a FIFO is refused),
and @includes are followed at most 8 deep, 256 in all, over 16 MiB and
100000 lines in all. Exit status: 0 valid, 1 invalid, 2 usage or I/O
error.

Example:
  nixrb-discover check-machines /etc/nix/machines`),
		FlagSet: fs,
		Exec: func(ctx context.Context, args []string) error {
			if len(args) == 0 {
				return usageError("check-machines needs at least one FILE")
			}
			log, err := e.logger(*logLevel)
			if err != nil {
				return err
			}
			v, err := checkVersion(ctx, *nixVersion)
			if err != nil {
				return err
			}
			log.Debug("checking machines files", "nix_version", v.String())
			opts := render.ParseOptions{
				NixVersion:  v,
				LocalSystem: localnix.System(),
				Warn: func(path string, line int, msg string) {
					fmt.Fprintf(e.stderr, "%s:%d: warning: %s\n", path, line, msg)
				},
			}
			invalid, ioFailed := false, false
			for _, path := range args {
				entries, problems, err := checkOneMachinesFile(ctx, path, opts)
				if ctx.Err() != nil {
					return &exitError{code: 2, err: fmt.Errorf("check-machines: interrupted: %w", ctx.Err())}
				}
				if err != nil {
					// Go on: every file given is checked.
					printError(e.stderr, err, "")
					ioFailed = true
					continue
				}
				for _, p := range problems {
					fmt.Fprintln(e.stdout, p.Error())
					if h := spaceHint(p); h != "" {
						fmt.Fprintf(e.stdout, "%s:%d: hint: %s\n", displayPath(p.Path), p.Line, h)
					}
				}
				if len(problems) > 0 {
					invalid = true
					continue
				}
				fmt.Fprintf(e.stdout, "%s: %d machines, valid for %s\n", displayPath(path), len(entries), v)
			}
			switch {
			case ioFailed:
				return &exitError{code: 2}
			case invalid:
				return &exitError{code: 1}
			}
			return nil
		},
	}
}

// checkOneMachinesFile parses path ("-": standard input) and validates
// each machine; err is only for a file that could not be read. It stops
// when ctx is done (SIGINT, SIGTERM), even while standard input is still
// open.
func checkOneMachinesFile(ctx context.Context, path string, opts render.ParseOptions) ([]render.Entry, render.ParseErrors, error) {
	var entries []render.Entry
	var err error
	if path == "-" {
		data, rerr := readStdin(ctx)
		if rerr != nil {
			return nil, nil, rerr
		}
		entries, err = render.ParseContext(ctx, data, opts)
	} else {
		entries, err = render.ParseFileContext(ctx, path, opts)
	}
	var problems render.ParseErrors
	if err != nil && !errors.As(err, &problems) {
		return nil, nil, err
	}
	for _, en := range entries {
		if err := en.Machine.Validate(); err != nil {
			problems = append(problems, &render.LineError{Path: en.Path, Line: en.Line, Err: err})
		}
	}
	for _, p := range problems {
		if p.Path == "" {
			p.Path = "-"
		}
	}
	return entries, problems, nil
}

// readStdin reads standard input (at most 16 MiB) until EOF or ctx is
// done; a reader left blocked then ends with the process.
func readStdin(ctx context.Context) ([]byte, error) {
	type result struct {
		b   []byte
		err error
	}
	ch := make(chan result, 1)
	go func() {
		b, err := io.ReadAll(io.LimitReader(os.Stdin, 16<<20))
		ch <- result{b, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, fmt.Errorf("read standard input: %w", r.err)
		}
		return r.b, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("read standard input: %w", ctx.Err())
	}
}

// displayPath names standard input "-".
func displayPath(p string) string {
	if p == "" {
		return "-"
	}
	return p
}

// spaceHint explains a problem that comes from a space inside a value
// (Nix splits a line on whitespace, with no quoting): the line has more
// than 8 fields, or its max-jobs is a word after a path.
func spaceHint(p *render.LineError) string {
	if p.Path == "-" || p.Path == "" {
		return ""
	}
	data, err := os.ReadFile(p.Path)
	if err != nil {
		return ""
	}
	lines := strings.Split(string(data), "\n")
	if p.Line < 1 || p.Line > len(lines) {
		return ""
	}
	line, _, _ := strings.Cut(lines[p.Line-1], "#")
	if strings.Contains(line, ";") {
		return ""
	}
	f := strings.Fields(line)
	var fe *render.FieldError
	pathThenWord := errors.As(p.Err, &fe) && fe.Field == "max-jobs" && len(f) >= 4 &&
		strings.ContainsAny(f[2][:1], "/~.")
	if len(f) > 8 || pathThenWord {
		return "Nix splits a line on whitespace, with no quoting: a key path with a space cannot be written in a machines file; move or link the key to a path without one"
	}
	return ""
}

// checkVersion returns the Nix to format and check for: the flag (what
// `nix --version` prints, or a CppNix version), else the local nix's,
// else unknown (the oldest rules).
func checkVersion(ctx context.Context, flagValue string) (render.NixVersion, error) {
	if flagValue != "" {
		v, err := render.ParseNixVersion(flagValue)
		if err != nil {
			return v, usageError("--nix-version: %v", err)
		}
		return v, nil
	}
	return localNixVersion(ctx), nil
}

// localNixVersion runs `nix --version`; unknown (the oldest rules) if nix
// is missing or prints what no known implementation prints.
func localNixVersion(ctx context.Context) render.NixVersion {
	out, err := localnix.Version(ctx, "nix", 5*time.Second)
	if err != nil {
		return render.NixVersion{}
	}
	v, _ := render.ParseNixVersion(out)
	return v
}
