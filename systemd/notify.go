package systemd

import (
	"fmt"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Notifier speaks sd_notify to the service manager. The zero value works;
// outside systemd (no NOTIFY_SOCKET) every call does nothing.
//
// NOTIFY_SOCKET is never unset: later notifications (STATUS, WATCHDOG,
// STOPPING) need it.
type Notifier struct{}

// Ready says the service finished starting (READY=1) with a status line.
func (Notifier) Ready(status string) error {
	return notify(daemon.SdNotifyReady + "\n" + statusLine(status))
}

// Status sets the one-line status systemctl shows (STATUS=…).
func (Notifier) Status(status string) error {
	return notify(statusLine(status))
}

// Stopping says the service is shutting down (STOPPING=1).
func (Notifier) Stopping() error {
	return notify(daemon.SdNotifyStopping)
}

// Watchdog pings the watchdog (WATCHDOG=1). Call it from the main loop
// only, at least every WatchdogInterval: a stuck loop then stops pinging
// and systemd restarts the service.
func (Notifier) Watchdog() error {
	return notify(daemon.SdNotifyWatchdog)
}

// WatchdogInterval is how often to ping: half of WatchdogSec, or zero
// when the watchdog is off (or meant for another process).
func (Notifier) WatchdogInterval() time.Duration {
	d, err := daemon.SdWatchdogEnabled(false)
	if err != nil || d <= 0 {
		return 0
	}
	return d / 2
}

func statusLine(s string) string {
	return "STATUS=" + strings.ReplaceAll(s, "\n", " ")
}

func notify(state string) error {
	if _, err := daemon.SdNotify(false, state); err != nil {
		return fmt.Errorf("sd_notify %q: %w", strings.SplitN(state, "\n", 2)[0], err)
	}
	return nil
}
