//go:build !linux && !darwin

package slots

import "errors"

type fileID struct{ dev, ino uint64 }

var errUnsupported = errors.New("slot locks are implemented on Linux and macOS only")

func openSlot(string) (int, error)  { return -1, errUnsupported }
func tryLock(int) (bool, error)     { return false, errUnsupported }
func closeFD(int) error             { return errUnsupported }
func lock(int) error                { return errUnsupported }
func fdID(int) (fileID, error)      { return fileID{}, errUnsupported }
func pathID(string) (fileID, error) { return fileID{}, errUnsupported }
