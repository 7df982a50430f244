package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
)

// errReload means a file the daemon read at start changed: it restarts
// itself in place (same PID, so systemd keeps following it).
var errReload = errors.New("configuration changed")

// watchFiles returns a channel that receives a path from paths each time
// that file is replaced or written (after a short quiet period, so an
// editor's several writes count once). Empty paths are ignored.
func watchFiles(ctx context.Context, paths ...string) (<-chan string, error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch %v: %w", paths, err)
	}
	want := map[string]string{} // base name in dir -> path
	dirs := map[string]bool{}
	for _, p := range paths {
		if p == "" {
			continue
		}
		abs, err := filepath.Abs(p)
		if err != nil {
			continue
		}
		want[abs] = p
		dir := filepath.Dir(abs)
		if !dirs[dir] {
			if err := w.Add(dir); err != nil {
				w.Close()
				return nil, fmt.Errorf("watch %s: %w", dir, err)
			}
			dirs[dir] = true
		}
	}
	out := make(chan string, 1)
	go func() {
		defer w.Close()
		var pending string
		settle := time.NewTimer(time.Hour)
		settle.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case ev, ok := <-w.Events:
				if !ok {
					return
				}
				if p, hit := want[ev.Name]; hit && ev.Op&(fsnotify.Write|fsnotify.Create|fsnotify.Rename|fsnotify.Remove) != 0 {
					pending = p
					settle.Reset(200 * time.Millisecond)
				}
			case <-w.Errors:
			case <-settle.C:
				select {
				case out <- pending:
				default:
				}
			}
		}
	}()
	return out, nil
}

// reexec replaces this process with a fresh copy of itself, same
// arguments and environment.
func reexec() error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("restart after a configuration change: %w", err)
	}
	return fmt.Errorf("restart after a configuration change: %w", syscall.Exec(exe, os.Args, os.Environ()))
}
