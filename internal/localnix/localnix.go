// Package localnix runs this machine's nix: its version, its effective
// configuration (`nix config show --json`, or `nix show-config --json` on
// Nix before 2.20), and Nix's name for this platform. The builder agent,
// doctor and the command line share it, so each Nix is asked the same way.
package localnix

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os/exec"
	"runtime"
	"strings"
	"time"
)

// MaxOutput bounds what is read from a nix command's stdout; stderr is
// kept to its first 4 KiB for the error message.
const MaxOutput = 4 << 20

// configCommands are tried in order: new Nix (2.19+) has `nix config
// show`, older Nix (Debian's 2.8) only `nix show-config`. Both are asked
// with nix-command enabled, so that a stock nix.conf works (harmless where
// it is already on): users never change their nix.conf for us.
var configCommands = [][]string{
	{"--extra-experimental-features", "nix-command", "config", "show", "--json"},
	{"--extra-experimental-features", "nix-command", "show-config", "--json"},
}

// Run runs nix with args, bounded by timeout and MaxOutput. Its error
// names the command and carries nix's stderr.
func Run(ctx context.Context, nix string, timeout time.Duration, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, nix, args...)
	stdout := &capWriter{max: MaxOutput}
	stderr := &capWriter{max: 4 << 10, discard: true}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	what := nix + " " + strings.Join(args, " ")
	switch {
	case IsNotFound(err):
		return nil, fmt.Errorf("run %s: %w", what, err)
	case stdout.over:
		return nil, fmt.Errorf("run %s: more than %d bytes of output", what, MaxOutput)
	case ctx.Err() != nil:
		return nil, fmt.Errorf("run %s: no answer within %s", what, timeout)
	case err != nil:
		if msg := bytes.TrimSpace(stderr.buf.Bytes()); len(msg) > 0 {
			return nil, fmt.Errorf("run %s: %w: %s", what, err, msg)
		}
		return nil, fmt.Errorf("run %s: %w", what, err)
	}
	return stdout.buf.Bytes(), nil
}

// IsNotFound reports whether err means the nix binary does not exist.
func IsNotFound(err error) bool {
	return errors.Is(err, exec.ErrNotFound) || errors.Is(err, fs.ErrNotExist)
}

// Version runs `nix --version` and returns what it printed, trimmed
// ("nix (Nix) 2.8.0"); render.ParseNixVersion reads it.
func Version(ctx context.Context, nix string, timeout time.Duration) (string, error) {
	out, err := Run(ctx, nix, timeout, "--version")
	if err != nil {
		return "", err
	}
	s := strings.TrimSpace(string(out))
	if s == "" {
		return "", fmt.Errorf("%s --version printed nothing", nix)
	}
	return s, nil
}

// Config returns the effective Nix configuration: each setting's name
// and its JSON value. The newer command is tried first, then the older.
func Config(ctx context.Context, nix string, timeout time.Duration) (map[string]json.RawMessage, error) {
	var errs []error
	for _, args := range configCommands {
		out, err := Run(ctx, nix, timeout, args...)
		if IsNotFound(err) {
			return nil, err
		}
		if err != nil {
			errs = append(errs, err)
			if ctx.Err() != nil {
				break
			}
			continue
		}
		var raw map[string]struct {
			Value json.RawMessage `json:"value"`
		}
		if err := json.Unmarshal(out, &raw); err != nil {
			return nil, fmt.Errorf("%s %s: JSON: %w", nix, strings.Join(args[2:], " "), err)
		}
		settings := make(map[string]json.RawMessage, len(raw))
		for k, v := range raw {
			settings[k] = v.Value
		}
		return settings, nil
	}
	return nil, errors.Join(errs...)
}

// System is Nix's name for this platform ("x86_64-linux"), as a machines
// file's "-" systems field means it.
func System() string {
	arch := map[string]string{"amd64": "x86_64", "arm64": "aarch64", "386": "i686", "riscv64": "riscv64"}[runtime.GOARCH]
	if arch == "" {
		arch = runtime.GOARCH
	}
	return arch + "-" + runtime.GOOS
}

// capWriter keeps the first max bytes written to it. Past that it fails
// (so exec stops copying and nix gets SIGPIPE), or with discard drops the
// rest.
type capWriter struct {
	buf     bytes.Buffer
	max     int
	over    bool
	discard bool
}

func (w *capWriter) Write(p []byte) (int, error) {
	if room := w.max - w.buf.Len(); len(p) > room {
		w.buf.Write(p[:max(room, 0)])
		w.over = true
		if w.discard {
			return len(p), nil
		}
		return 0, errors.New("output limit reached")
	}
	return w.buf.Write(p)
}
