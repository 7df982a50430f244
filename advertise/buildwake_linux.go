package advertise

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"unsafe"

	"golang.org/x/sys/unix"
)

// watchBuildStarts reports, on the returned channel (capacity 1, never
// closed), every time Nix opens or closes a build user's lock file under
// stateDir: the instant a build starts or ends, which the capacity tick
// would otherwise notice up to an --interval later on an idle builder.
// A lock directory that does not exist yet (no build ever ran) is watched
// for from stateDir and added when Nix creates it. The watch ends with ctx.
func watchBuildStarts(ctx context.Context, stateDir string) (<-chan struct{}, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("watch build starts: inotify: %w", err)
	}
	f := os.NewFile(uintptr(fd), "inotify") // non-blocking: Close ends a pending Read
	const lockEvents = unix.IN_OPEN | unix.IN_CLOSE | unix.IN_ONLYDIR
	pools := map[string]bool{}
	for _, d := range userPoolDirs(stateDir) {
		pools[filepath.Base(d)] = true
	}
	watchPool := func(dir string) bool {
		_, err := unix.InotifyAddWatch(fd, dir, lockEvents)
		return err == nil
	}
	missing := false
	for _, d := range userPoolDirs(stateDir) {
		if !watchPool(d) {
			missing = true
		}
	}
	if missing {
		if _, err := unix.InotifyAddWatch(fd, stateDir, unix.IN_CREATE|unix.IN_MOVED_TO|unix.IN_ONLYDIR); err != nil {
			f.Close()
			return nil, fmt.Errorf("watch build starts in %s: %w", stateDir, err)
		}
	}
	wake := make(chan struct{}, 1)
	go func() { <-ctx.Done(); f.Close() }()
	go func() {
		buf := make([]byte, 16*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
		for {
			n, err := f.Read(buf)
			if err != nil {
				// Closed with ctx, or broken: the watch only speeds the
				// capacity tick up, which goes on measuring without it.
				return
			}
			for off := 0; off+unix.SizeofInotifyEvent <= n; {
				ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
				nameLen := int(ev.Len)
				name := ""
				if nameLen > 0 && off+unix.SizeofInotifyEvent+nameLen <= n {
					name = cString(buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+nameLen])
				}
				off += unix.SizeofInotifyEvent + nameLen
				switch {
				case ev.Mask&(unix.IN_CREATE|unix.IN_MOVED_TO) != 0 && pools[name]:
					// Nix makes the pool for its first build and locks
					// a user in it at once, maybe before this watch.
					watchPool(filepath.Join(stateDir, name))
				case ev.Mask&(unix.IN_OPEN|unix.IN_CLOSE) != 0 && name != "": // not the directory itself
				default:
					continue
				}
				select {
				case wake <- struct{}{}:
				default:
				}
			}
		}
	}()
	return wake, nil
}

// cString is b up to its first NUL (inotify pads names with NULs).
func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
