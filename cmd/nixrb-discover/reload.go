package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/nixrb-discover/nixrb-discover/discover/static"
	"github.com/nixrb-discover/nixrb-discover/internal/localnix"
	"github.com/peterbourgon/ff/v3"
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

// configRefusal is a changed config file the running client refused.
type configRefusal struct {
	path string
	err  error
}

// clientArgs are the client's command-line flags as this process got
// them (after "client"), for checkConfig; just --config when they cannot
// be found.
func clientArgs(configPath string) []string {
	for i, a := range os.Args {
		if a == "client" && i > 0 {
			return os.Args[i+1:]
		}
	}
	return []string{"--config", configPath}
}

// checkConfig parses args and the config file they name as a restart
// would, and validates what can be validated without starting: the
// values, the machines path, the static file. A nil error means a
// restart will start.
func checkConfig(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("nixrb-discover client", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var f clientFlags
	f.register(fs)
	if err := ff.Parse(fs, args, configOptions(fs)...); err != nil {
		return err
	}
	if _, err := f.check(); err != nil {
		return err
	}
	if f.static != "" {
		v, err := checkVersion(ctx, f.nixVersion)
		if err != nil {
			return err
		}
		if err := staticError(&static.Source{Path: f.static, NixVersion: v, LocalSystem: localnix.System()}); err != nil {
			return err
		}
	}
	return nil
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
