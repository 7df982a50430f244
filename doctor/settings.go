package doctor

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/nixrb-discover/nixrb-discover/render"
)

// checkBuildersSetting reads Nix's effective `builders` setting from the
// real nix and checks that it reaches our machines file.
func checkBuildersSetting(ctx context.Context, r *Report, opts Options, v render.NixVersion) {
	name := fmt.Sprintf("Nix's builders setting includes @%s", opts.MachinesPath)
	fix := fmt.Sprintf("on NixOS set nix.settings.builders = \"@%s\" (the nixrb-discover client module does); "+
		"elsewhere put the line `builders = @%s` in /etc/nix/nix.conf and restart nix-daemon", opts.MachinesPath, opts.MachinesPath)
	value, err := buildersSetting(ctx, opts, v)
	if err != nil {
		r.fail(name, err.Error(), "make `nix show-config` work for root (or pass --nix PATH); then "+fix)
		return
	}
	if via, ok := reaches(value, opts.MachinesPath, 0); ok {
		r.pass(name, fmt.Sprintf("builders = %q%s", value, via))
		return
	}
	r.fail(name, fmt.Sprintf("builders = %q: Nix never reads %s", value, opts.MachinesPath), fix)
}

// buildersSetting returns the value of `builders` as the local Nix
// computes it. Nix 2.20 renamed `nix show-config` to `nix config show`;
// the older name is tried when the newer fails, and the other way round.
func buildersSetting(ctx context.Context, opts Options, v render.NixVersion) (string, error) {
	cmds := [][]string{{"show-config", "--json"}, {"config", "show", "--json"}}
	if v.AtLeast(2, 20) {
		cmds[0], cmds[1] = cmds[1], cmds[0]
	}
	var firstErr error
	for _, c := range cmds {
		out, err := runNix(ctx, opts, append([]string{"--extra-experimental-features", "nix-command"}, c...)...)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			if ctx.Err() != nil {
				break
			}
			continue
		}
		var settings map[string]struct {
			Value json.RawMessage `json:"value"`
		}
		if err := json.Unmarshal([]byte(out), &settings); err != nil {
			return "", fmt.Errorf("nix %s: %w", strings.Join(c, " "), err)
		}
		s, ok := settings["builders"]
		if !ok {
			return "", fmt.Errorf("nix %s: no builders setting in its output", strings.Join(c, " "))
		}
		var value string
		if err := json.Unmarshal(s.Value, &value); err != nil {
			return "", fmt.Errorf("nix %s: builders: %w", strings.Join(c, " "), err)
		}
		return value, nil
	}
	return "", firstErr
}

// reaches reports whether the builders text (the setting, or a file's
// content) names path with '@', directly or through @included files
// (depth-bounded). via says through which file.
func reaches(text, path string, depth int) (via string, ok bool) {
	if depth > 8 {
		return "", false
	}
	want := cleanAbs(path)
	for _, line := range strings.Split(text, "\n") {
		for _, spec := range strings.Split(line, ";") {
			spec, _, _ = strings.Cut(spec, "#")
			spec = strings.TrimSpace(spec)
			if !strings.HasPrefix(spec, "@") {
				continue
			}
			target := strings.TrimSpace(spec[1:])
			if cleanAbs(target) == want {
				return "", true
			}
			data, err := os.ReadFile(target)
			if err != nil {
				continue
			}
			if _, ok := reaches(string(data), path, depth+1); ok {
				return " (through @" + target + ")", true
			}
		}
	}
	return "", false
}

func cleanAbs(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		return filepath.Clean(p)
	}
	if r, err := filepath.EvalSymlinks(a); err == nil {
		return r
	}
	return a
}
