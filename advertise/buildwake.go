package advertise

import (
	"path/filepath"
	"time"
)

// DefaultNixStateDir is the state directory of the builder's Nix daemon,
// where Nix locks a build user (userpool/ for build-users-group,
// userpool2/ for auto-allocate-uids) for each build it starts.
const DefaultNixStateDir = "/nix/var/nix"

// buildWakeDelay is how long after a build user's lock file is opened or
// closed the agent measures running builds: Nix flocks the file right
// after opening it (and a burst of opens is measured once).
const buildWakeDelay = 20 * time.Millisecond

// buildWakeHold is how long after a build-user lock event the agent keeps
// measuring every runningBuildsEvery even if it counted none (a lock
// taken later than buildWakeDelay).
const buildWakeHold = 3 * time.Second

// userPoolDirs are the directories under stateDir where Nix keeps its
// build-user lock files: userpool/ (one file per build user of
// build-users-group; Nix 2.3 and later) and userpool2/ (auto-allocate-uids
// slots; Nix 2.7 and later). See libstore/lock.cc (2.8) and
// libstore/unix/user-lock.cc (2.19+).
func userPoolDirs(stateDir string) []string {
	return []string{filepath.Join(stateDir, "userpool"), filepath.Join(stateDir, "userpool2")}
}
