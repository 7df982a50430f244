package systemd

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// listen is a real NOTIFY_SOCKET, as the service manager has.
func listen(t *testing.T) *net.UnixConn {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	return conn
}

func receive(t *testing.T, conn *net.UnixConn) string {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 4096)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("no notification: %v", err)
	}
	return string(buf[:n])
}

func TestNotifierSendsEachState(t *testing.T) {
	conn := listen(t)
	var n Notifier
	steps := []struct {
		send func() error
		want string
	}{
		{func() error { return n.Ready("2 builders healthy") }, "READY=1\nSTATUS=2 builders healthy"},
		{func() error { return n.Status("3 builders\nhealthy") }, "STATUS=3 builders healthy"},
		{n.Watchdog, "WATCHDOG=1"},
		{n.Stopping, "STOPPING=1"},
	}
	for _, s := range steps {
		if err := s.send(); err != nil {
			t.Fatal(err)
		}
		if got := receive(t, conn); got != s.want {
			t.Errorf("sent %q, want %q", got, s.want)
		}
	}
	if os.Getenv("NOTIFY_SOCKET") == "" {
		t.Error("NOTIFY_SOCKET was unset: later notifications would be lost")
	}
}

func TestNotifierOutsideSystemdDoesNothing(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	var n Notifier
	if err := n.Ready("x"); err != nil {
		t.Errorf("Ready without systemd = %v, want nil", err)
	}
}

func TestWatchdogInterval(t *testing.T) {
	var n Notifier
	t.Setenv("WATCHDOG_USEC", "4000000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	if got := n.WatchdogInterval(); got != 2*time.Second {
		t.Errorf("interval = %v, want half of WatchdogSec (2s)", got)
	}
	t.Setenv("WATCHDOG_PID", "1")
	if got := n.WatchdogInterval(); got != 0 {
		t.Errorf("interval for another process's watchdog = %v, want 0", got)
	}
	t.Setenv("WATCHDOG_USEC", "")
	if got := n.WatchdogInterval(); got != 0 {
		t.Errorf("interval without watchdog = %v, want 0", got)
	}
}
