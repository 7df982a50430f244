//go:build unix

package advertise

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// freeMiB is the space unprivileged users may still write on the
// filesystem holding dir, in MiB.
func freeMiB(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return int64(uint64(st.Bavail) * uint64(st.Bsize) >> 20), nil
}

// fileID is a file's device (major, minor) and inode, as /proc/locks
// names the files that hold locks.
type fileID struct {
	major, minor uint32
	ino          uint64
}

// statID is path's fileID.
func statID(path string) (fileID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return fileID{}, err
	}
	dev := uint64(st.Dev) // int32 on darwin
	return fileID{unix.Major(dev), unix.Minor(dev), uint64(st.Ino)}, nil
}
