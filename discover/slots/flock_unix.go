//go:build linux || darwin

package slots

import (
	"errors"

	"golang.org/x/sys/unix"
)

// fileID identifies the file a lock is on, to notice a lock file that was
// removed or replaced beneath a held lock.
type fileID struct{ dev, ino uint64 }

// openSlot opens (creating it 0600, as Nix's openLockFile does) a slot's
// lock file, close-on-exec.
func openSlot(path string) (int, error) {
	for {
		fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
		if !errors.Is(err, unix.EINTR) {
			return fd, err
		}
	}
}

// tryLock takes an exclusive flock on fd without blocking: false (and no
// error) when another open file description holds a lock on the file.
func tryLock(fd int) (bool, error) {
	for {
		err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, unix.EWOULDBLOCK):
			return false, nil
		case !errors.Is(err, unix.EINTR):
			return false, err
		}
	}
}

// lock takes an exclusive flock on fd, waiting as long as it takes.
func lock(fd int) error {
	for {
		err := unix.Flock(fd, unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// closeFD closes fd, which drops its flock (this package never dups one).
func closeFD(fd int) error { return unix.Close(fd) }

func fdID(fd int) (fileID, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fileID{}, err
	}
	return fileID{uint64(st.Dev), st.Ino}, nil
}

func pathID(path string) (fileID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return fileID{}, err
	}
	return fileID{uint64(st.Dev), st.Ino}, nil
}
