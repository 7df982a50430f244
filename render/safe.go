package render

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// ErrUnsafeDir is returned by WriteAtomic (and CheckDir) when the machines
// file's directory belongs to another user or others may write to it:
// whoever can write there can plant a symlink or a file of their own
// under the name we write, or swap one in between our check and our write.
var ErrUnsafeDir = errors.New("directory is writable by another user")

// ErrNotRegular is returned for a machines file (or an @include) that is
// not a regular file (or /dev/null): a FIFO would block the reader
// forever, a device would feed it without end.
var ErrNotRegular = errors.New("not a regular file")

// errTooLarge: a file over MaxFileSize.
var errTooLarge = errors.New("file is larger than the limit")

// CheckDir returns nil if dir is owned by root or by this process's user
// and neither its group nor others may write to it; else ErrUnsafeDir,
// naming the owner, the mode and the fix. Only dir itself is checked, as
// sshd's StrictModes checks a key file's directory.
func CheckDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	uid := int(st.Uid)
	switch {
	case uid != 0 && uid != os.Geteuid():
		return fmt.Errorf("%w: %s belongs to uid %d, not root or us (uid %d); fix: chown root %s, or choose a --machines in a directory of ours", ErrUnsafeDir, dir, uid, os.Geteuid(), dir)
	case fi.Mode().Perm()&0o022 != 0:
		return fmt.Errorf("%w: %s has mode %04o, group or others may write to it; fix: chmod go-w %s", ErrUnsafeDir, dir, fi.Mode().Perm(), dir)
	}
	return nil
}

// openNoFollow opens path for reading without following a symlink at
// its last component (O_NOFOLLOW: ErrSymlink) and without blocking on a
// FIFO (O_NONBLOCK), and accepts only a regular file (ErrNotRegular).
func openNoFollow(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if errors.Is(err, syscall.ELOOP) {
		if serr := CheckSymlink(path); serr != nil {
			return nil, serr
		}
		return nil, fmt.Errorf("%w: %w", ErrSymlink, err)
	}
	if err != nil {
		return nil, err
	}
	if err := regular(f); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// openRegular opens path for reading, following symlinks, without
// blocking on a FIFO, and accepts only a regular file (ErrNotRegular).
func openRegular(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if err := regular(f); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// regular checks an open file is a regular one (O_NONBLOCK, which let
// the open return on a FIFO, does nothing to a regular file's reads).
func regular(f *os.File) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		// /dev/null is how users say "no builders here" (--static
		// /dev/null, @/dev/null): its reads end at once.
		if null, err := os.Stat(os.DevNull); err == nil && os.SameFile(fi, null) {
			return nil
		}
		return fmt.Errorf("%s: %w (%s)", f.Name(), ErrNotRegular, fi.Mode().Type())
	}
	return nil
}

// ReadNoFollow reads the machines file at path, at most MaxFileSize
// bytes, never through a symlink (ErrSymlink) and only from a regular
// file (ErrNotRegular). A missing file is fs.ErrNotExist.
func ReadNoFollow(path string) ([]byte, error) {
	f, err := openNoFollow(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxFileSize {
		return nil, fmt.Errorf("%w (%d bytes)", errTooLarge, MaxFileSize)
	}
	return b, nil
}
