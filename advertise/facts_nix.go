package advertise

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// maxNixOutput bounds what we read from a nix command (stdout; stderr is
// kept to its first 4 KiB for the error message).
const maxNixOutput = 4 << 20

// nixConfig is what the agent needs from `nix config show --json`.
type nixConfig struct {
	System         string
	ExtraPlatforms []string
	SystemFeatures []string
	MaxJobs        int
	BuildUsers     BuildUsers
}

// nixConfigCommands are tried in order: new Nix (2.19+) has `nix config
// show`, older Nix (Debian's 2.8) only `nix show-config`.
var nixConfigCommands = [][]string{
	{"--extra-experimental-features", "nix-command", "config", "show", "--json"},
	{"--extra-experimental-features", "nix-command", "show-config", "--json"},
}

// readNixConfig runs nix to read the effective Nix configuration.
func readNixConfig(ctx context.Context, nix string, timeout time.Duration, cores int) (nixConfig, error) {
	var errs []error
	for _, args := range nixConfigCommands {
		out, err := runNix(ctx, nix, timeout, args...)
		if isNotFound(err) {
			return nixConfig{}, err
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		return parseNixConfig(out, cores)
	}
	return nixConfig{}, errors.Join(errs...)
}

// parseNixConfig reads the JSON of `nix config show --json`: an object of
// settings, each {"value": ...}. max-jobs "auto" (Nix reports it as a
// number already; kept for safety) means cores.
func parseNixConfig(b []byte, cores int) (nixConfig, error) {
	var raw map[string]struct {
		Value json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return nixConfig{}, fmt.Errorf("nix config JSON: %w", err)
	}
	get := func(name string, v any) error {
		s, ok := raw[name]
		if !ok {
			return fmt.Errorf("nix config lacks %s", name)
		}
		if err := json.Unmarshal(s.Value, v); err != nil {
			return fmt.Errorf("nix config %s: %w", name, err)
		}
		return nil
	}
	var c nixConfig
	if err := get("system", &c.System); err != nil {
		return c, err
	}
	if err := get("extra-platforms", &c.ExtraPlatforms); err != nil {
		return c, err
	}
	if err := get("system-features", &c.SystemFeatures); err != nil {
		return c, err
	}
	var mj json.RawMessage
	if err := get("max-jobs", &mj); err != nil {
		return c, err
	}
	if s := strings.Trim(string(mj), `"`); s == "auto" {
		c.MaxJobs = cores
	} else if n, err := strconv.Atoi(s); err == nil && n >= 0 {
		c.MaxJobs = n
	} else {
		return c, fmt.Errorf("nix config max-jobs: %s is not a count", mj)
	}
	// Build users are optional: they only feed the running-builds count.
	_ = get("build-users-group", &c.BuildUsers.Group)
	if get("auto-allocate-uids", &c.BuildUsers.AutoAllocate) == nil && c.BuildUsers.AutoAllocate {
		c.BuildUsers.StartID, c.BuildUsers.IDCount = 872415232, 128*autoUIDSlot // Nix's defaults
		_ = get("start-id", &c.BuildUsers.StartID)
		_ = get("id-count", &c.BuildUsers.IDCount)
	}
	return c, nil
}

// readNixVersion runs `nix --version` ("nix (Nix) 2.8.0") and returns
// the version ("2.8.0").
func readNixVersion(ctx context.Context, nix string, timeout time.Duration) (string, error) {
	out, err := runNix(ctx, nix, timeout, "--version")
	if err != nil {
		return "", err
	}
	f := strings.Fields(string(out))
	if len(f) == 0 {
		return "", fmt.Errorf("%s --version printed nothing", nix)
	}
	return f[len(f)-1], nil
}

// runNix runs nix with args, bounded by timeout and maxNixOutput.
func runNix(ctx context.Context, nix string, timeout time.Duration, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, nix, args...)
	stdout := &capWriter{max: maxNixOutput}
	stderr := &capWriter{max: 4 << 10, discard: true}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	what := nix + " " + strings.Join(args, " ")
	switch {
	case isNotFound(err):
		return nil, fmt.Errorf("run %s: %w", what, err)
	case stdout.over:
		return nil, fmt.Errorf("run %s: more than %d bytes of output", what, maxNixOutput)
	case ctx.Err() != nil:
		return nil, fmt.Errorf("run %s: no answer within %s", what, timeout)
	case err != nil:
		return nil, fmt.Errorf("run %s: %w: %s", what, err, bytes.TrimSpace(stderr.buf.Bytes()))
	}
	return stdout.buf.Bytes(), nil
}

// isNotFound reports whether err means the nix binary does not exist.
func isNotFound(err error) bool {
	return errors.Is(err, exec.ErrNotFound) || errors.Is(err, fs.ErrNotExist)
}

// capWriter keeps the first max bytes written to it. Past that it fails
// (so exec stops copying and the writer gets SIGPIPE), or with discard
// drops the rest.
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
		return 0, errors.New("output limit reached") // stops the copy: nix gets SIGPIPE
	}
	return w.buf.Write(p)
}
