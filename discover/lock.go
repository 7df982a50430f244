package discover

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrLocked is returned by Client.Run when another client keeps the same
// machines file: two would undo each other's writes.
var ErrLocked = errors.New("another nixrb-discover client keeps this machines file")

// lockPath is the lock file next to the machines file at path.
func lockPath(path string) string {
	dir, base := filepath.Split(path)
	return filepath.Join(dir, "."+base+".lock")
}

// errNoLock means the lock file cannot be created (a read-only
// directory): the client runs without it, and its writes fail and are
// retried anyway.
var errNoLock = errors.New("cannot create the lock file")

// lockMachines takes the lock next to the machines file (flock, released
// when the process ends) and writes our PID into it for the error of the
// next one. The returned func releases it.
func lockMachines(path string) (func(), error) {
	lp := lockPath(path)
	// O_NOFOLLOW: a symlink planted at the lock's name must not make us
	// truncate and write whatever it points to.
	f, err := os.OpenFile(lp, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0o644)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("lock machines file %s: %s is a symlink; nixrb-discover never makes one: remove it", path, lp)
	}
	if err != nil {
		return func() {}, fmt.Errorf("lock machines file %s: %w: %w", path, errNoLock, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			who := ""
			if b, _ := os.ReadFile(lp); len(bytes.TrimSpace(b)) > 0 {
				who = " (pid " + string(bytes.TrimSpace(b)) + ")"
			}
			return nil, fmt.Errorf("%w: %s is locked by %s%s; stop that client or give this one another --machines", ErrLocked, path, lp, who)
		}
		return nil, fmt.Errorf("lock machines file %s: %w", path, err)
	}
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return func() { f.Close() }, nil
}
