//go:build !unix

package advertise

import "errors"

// freeMiB is not implemented off Unix: store space stays unknown (0).
func freeMiB(dir string) (int64, error) {
	return 0, errors.New("not supported on this system")
}

// fileID is a file's device and inode (unknown here: no /proc/locks).
type fileID struct {
	major, minor uint32
	ino          uint64
}

func statID(path string) (fileID, error) {
	return fileID{}, errors.New("file identities are not read on this platform")
}
