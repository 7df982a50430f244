package advertise

import (
	"context"
	"encoding/json"
	"fmt"
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

// readNixVersion runs `nix --version` ("nix (Nix) 2.8.0") and returns
// the version ("2.8.0").
func readNixVersion(ctx context.Context, nix string, timeout time.Duration) (string, error) {
	out, err := localnix.Version(ctx, nix, timeout)
	if err != nil {
		return "", err
	}
	f := strings.Fields(out)
	return f[len(f)-1], nil
}
