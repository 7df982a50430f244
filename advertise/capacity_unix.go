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
