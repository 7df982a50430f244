package advertise

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/nixrb-discover/nixrb-discover/internal/localnix"
)

// nixConfig is what the agent needs from `nix config show --json`.
type nixConfig struct {
	System         string
	ExtraPlatforms []string
	SystemFeatures []string
	MaxJobs        int
	BuildUsers     BuildUsers
}

// readNixConfig runs nix to read the effective Nix configuration.
func readNixConfig(ctx context.Context, nix string, timeout time.Duration, cores int) (nixConfig, error) {
	settings, err := localnix.Config(ctx, nix, timeout)
	if err != nil {
		return nixConfig{}, err
	}
	return parseNixConfig(settings, cores)
}

// parseNixConfig reads the settings of `nix config show --json`.
// max-jobs "auto" (Nix reports it as a number already; kept for safety)
// means cores.
func parseNixConfig(settings map[string]json.RawMessage, cores int) (nixConfig, error) {
	get := func(name string, v any) error {
		s, ok := settings[name]
		if !ok {
			return fmt.Errorf("nix config lacks %s", name)
		}
		if err := json.Unmarshal(s, v); err != nil {
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

// readNixVersion runs `nix --version` and returns the builder's Nix as
// the advert's nix_version names it (see nixVersionToken).
func readNixVersion(ctx context.Context, nix string, timeout time.Duration) (string, error) {
	out, err := localnix.Version(ctx, nix, timeout)
	if err != nil {
		return "", err
	}
	return nixVersionToken(out), nil
}

// versionLineRE is the first line of `nix --version`: "nix (Nix) 2.8.0",
// "nix (Lix, like Nix) 2.93.3", "nix (Determinate Nix 3.8.2) 2.30.1".
var versionLineRE = regexp.MustCompile(`^nix(?:-[a-z-]+)? \(([^()]{1,64})\) (\S{1,80})$`)

// nixVersionToken names the implementation and release in one word, as
// wire allows and render.NixVersion.Token writes it (the client reads it
// with render.ParseNixVersion): "2.8.0" for CppNix (what adverts always
// said), "lix-2.93.3", "determinate-3.8.2-nix-2.30.1". Output of another
// shape gives its last word, as before.
func nixVersionToken(out string) string {
	line, _, _ := strings.Cut(strings.TrimSpace(out), "\n")
	line = strings.TrimSpace(line)
	m := versionLineRE.FindStringSubmatch(line)
	if m == nil {
		f := strings.Fields(line)
		if len(f) == 0 {
			return ""
		}
		return f[len(f)-1]
	}
	name, ver := m[1], m[2]
	tok := ver
	switch {
	case name == "Lix" || strings.HasPrefix(name, "Lix,"):
		tok = "lix-" + ver
	case strings.HasPrefix(name, "Determinate Nix "):
		tok = "determinate-" + strings.TrimPrefix(name, "Determinate Nix ") + "-nix-" + ver
	}
	if strings.ContainsAny(tok, " \t,;#") {
		return ver // never a value wire refuses
	}
	return tok
}
