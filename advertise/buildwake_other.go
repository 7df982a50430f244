//go:build !linux

package advertise

import "context"

// watchBuildStarts has no cheap watch off Linux: the capacity tick
// (every --interval, every second while builds run) measures alone.
func watchBuildStarts(ctx context.Context, stateDir string) (<-chan struct{}, error) {
	return nil, nil
}
