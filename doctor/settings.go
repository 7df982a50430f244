package doctor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/nixrb-discover/nixrb-discover/internal/localnix"
)

// checkBuildersSetting reads Nix's effective `builders` setting from the
// real nix and checks that it reaches our machines file.
func checkBuildersSetting(ctx context.Context, r *Report, opts Options) {
	name := fmt.Sprintf("Nix's builders setting includes @%s", opts.MachinesPath)
	fix := buildersFix(runtime.GOOS, opts.MachinesPath, os.DirFS("/"))
	value, err := buildersSetting(ctx, opts)
	if err != nil {
		r.fail(name, err.Error(), "make `nix config show` (`nix show-config` before Nix 2.20) work for root (or pass --nix PATH); then "+fix)
		return
	}
	if via, ok := reaches(value, opts.MachinesPath, 0); ok {
		r.pass(name, fmt.Sprintf("builders = %q%s", value, via))
		return
	}
	r.fail(name, fmt.Sprintf("builders = %q: Nix never reads %s", value, opts.MachinesPath), fix)
}

// buildersSetting returns the value of `builders` as the local Nix
// computes it.
func buildersSetting(ctx context.Context, opts Options) (string, error) {
	settings, err := localnix.Config(ctx, opts.NixPath, 2*opts.Timeout)
	if err != nil {
		return "", err
	}
	raw, ok := settings["builders"]
	if !ok {
		return "", errors.New("nix config: no builders setting in its output")
	}
	var value string
	if err := json.Unmarshal(raw, &value); err != nil {
		return "", fmt.Errorf("nix config: builders: %w", err)
	}
	return value, nil
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

// buildersFix says how to make Nix read path on goos, looking at the
// machine's /etc/nix in root (the file system at "/").
func buildersFix(goos, path string, root fs.FS) string {
	line := "builders = @" + path
	if goos != "darwin" {
		return fmt.Sprintf("on NixOS set nix.settings.builders = \"@%s\" (the nixrb-discover client module does); "+
			"elsewhere put the line `%s` in /etc/nix/nix.conf and restart nix-daemon", path, line)
	}
	// Determinate Nix owns nix.conf and includes nix.custom.conf (so
	// does the Nix installer since 2.33); nix-darwin with nix.enable
	// writes nix.conf from nix.settings.
	conf, _ := fs.ReadFile(root, "etc/nix/nix.conf")
	if strings.Contains(string(conf), "nix.custom.conf") {
		return fmt.Sprintf("put the line `%s` in /etc/nix/nix.custom.conf (nix.conf includes it; with nix-darwin and nix.enable = false "+
			"the nixrb-discover client module writes it), then restart the Nix daemon (sudo launchctl kickstart -k system/systems.determinate.nix-daemon, "+
			"or system/org.nixos.nix-daemon)", line)
	}
	return fmt.Sprintf("with nix-darwin set nix.settings.builders = \"@%s\" (the nixrb-discover client module, darwinModules.default, does); "+
		"without it put the line `%s` in /etc/nix/nix.conf, then restart the Nix daemon (sudo launchctl kickstart -k system/org.nixos.nix-daemon)", path, line)
}
