package discover

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nixrb-discover/nixrb-discover/render"
)

// ErrForeignFile is returned by CheckMachinesPath (and Client.Run) when the
// machines file exists, holds something, and was not written by us: it
// has no header of ours. Replacing it would lose the user's builders.
var ErrForeignFile = errors.New("machines file was not written by nixrb-discover")

// ourMark is how a file of ours starts: the first line of header.
const ourMark = "# managed by nixrb-discover"

// Ours reports whether content is a machines file the client may replace:
// empty (only whitespace), or starting with our header.
func Ours(content []byte) bool {
	t := bytes.TrimSpace(content)
	return len(t) == 0 || bytes.HasPrefix(t, []byte(ourMark))
}

// ForeignFileHint says how to hand a foreign machines file at path over
// to the client.
func ForeignFileHint(path string) string {
	return fmt.Sprintf("move its builders to a static file the client merges in (mv %s %s.static, then pass --static %s.static), or pass --adopt to have the client do that (it keeps a backup)", path, path, path)
}

// CheckMachinesPath says whether the client can keep the machines file at
// path, before it starts: its directory exists and is writable, and the
// file is missing, ours or empty. It never follows a symlink: one into the
// Nix store is render.ErrStoreSymlink, any other render.ErrSymlink; a file
// we did not write is ErrForeignFile. Each error names the path and fix.
func CheckMachinesPath(path string) error {
	dir := filepath.Dir(path)
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("machines file %s: directory %s does not exist (create it: mkdir -p %s)", path, dir, dir)
	case err != nil:
		return fmt.Errorf("machines file %s: %w", path, err)
	case !fi.IsDir():
		return fmt.Errorf("machines file %s: %s is not a directory", path, dir)
	}
	if err := syscall.Access(dir, 2 /* W_OK */); err != nil {
		return fmt.Errorf("machines file %s: directory %s is not writable (%v): run the client as root, or choose a writable --machines such as /var/lib/nixrb-discover/machines", path, dir, err)
	}
	if err := render.CheckDir(dir); err != nil {
		return fmt.Errorf("machines file %s: %w", path, err)
	}
	return checkOurs(path)
}

// checkOurs refuses a symlink at path and a file we did not write.
func checkOurs(path string) error {
	if err := render.CheckSymlink(path); err != nil {
		return fmt.Errorf("machines file %s: %w", path, err)
	}
	b, err := render.ReadNoFollow(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("machines file %s: %w", path, err)
	case !Ours(b):
		return fmt.Errorf("%w: %s has no %q header, refusing to replace it", ErrForeignFile, path, ourMark)
	}
	return nil
}

// AdoptResult says what Adopt did.
type AdoptResult struct {
	// Adopted is false when the file was ours (or absent) already.
	Adopted bool
	// Backup is the copy of the file as it was.
	Backup string
	// Builders is how many valid lines went to the static file.
	Builders int
	// Skipped are the lines that were not valid, FILE:LINE: field: problem;
	// they stay only in the backup.
	Skipped []string
}

// Adopt hands a machines file we did not write over to the client: it
// copies the file to a backup (path.orig, or path.orig.N if that exists),
// appends its valid lines to staticPath (created if absent; the client
// reads it with --static), and rewrites path with our header and the
// same builders, so Nix sees no gap. A file that is ours, empty or absent
// is left alone. A symlink is refused as in CheckMachinesPath.
func Adopt(path, staticPath string, opts render.ParseOptions) (AdoptResult, error) {
	var res AdoptResult
	if err := render.CheckSymlink(path); err != nil {
		return res, fmt.Errorf("adopt %s: %w", path, err)
	}
	orig, err := render.ReadNoFollow(path)
	if errors.Is(err, fs.ErrNotExist) || err == nil && Ours(orig) {
		return res, nil
	}
	if err != nil {
		return res, fmt.Errorf("adopt %s: %w", path, err)
	}
	entries, err := render.ParseFile(path, opts)
	var problems render.ParseErrors
	if err != nil && !errors.As(err, &problems) {
		return res, fmt.Errorf("adopt %s: %w", path, err)
	}
	var machines []render.Machine
	var lines strings.Builder
	fmt.Fprintf(&lines, "# adopted by nixrb-discover from %s on %s (backup: BACKUP)\n", path, time.Now().UTC().Format(time.DateOnly))
	for _, en := range entries {
		line, err := en.Machine.Line(opts.NixVersion)
		if err != nil {
			problems = append(problems, &render.LineError{Path: en.Path, Line: en.Line, Err: err})
			continue
		}
		machines = append(machines, en.Machine)
		lines.WriteString(line + "\n")
	}
	for _, p := range problems {
		res.Skipped = append(res.Skipped, p.Error())
	}
	fi, _ := os.Stat(path)
	mode := render.DefaultMode
	if fi != nil {
		mode = fi.Mode().Perm()
	}
	if res.Backup, err = writeBackup(path, orig, mode); err != nil {
		return res, fmt.Errorf("adopt %s: %w", path, err)
	}
	block := strings.Replace(lines.String(), "BACKUP", res.Backup, 1)
	if err := appendFile(staticPath, block); err != nil {
		return res, fmt.Errorf("adopt %s: static file: %w (the original is kept in %s)", path, err, res.Backup)
	}
	content, err := render.Format(machines, render.FormatOptions{NixVersion: opts.NixVersion, Header: header})
	if err != nil {
		return res, fmt.Errorf("adopt %s: %w", path, err)
	}
	if _, err := render.WriteAtomic(path, content); err != nil {
		return res, fmt.Errorf("adopt %s: %w (the original is kept in %s)", path, err, res.Backup)
	}
	res.Adopted, res.Builders = true, len(machines)
	return res, nil
}

// writeBackup copies content to the first free name of path.orig,
// path.orig.1, …; it never replaces a file.
func writeBackup(path string, content []byte, mode fs.FileMode) (string, error) {
	for i := 0; i < 100; i++ {
		name := path + ".orig"
		if i > 0 {
			name = fmt.Sprintf("%s.orig.%d", path, i)
		}
		f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("backup: %w", err)
		}
		if _, err := f.Write(content); err != nil {
			f.Close()
			return "", fmt.Errorf("backup %s: %w", name, err)
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return "", fmt.Errorf("backup %s: %w", name, err)
		}
		return name, f.Close()
	}
	return "", fmt.Errorf("backup: %s.orig through .orig.99 all exist", path)
}

// appendFile appends text to path, creating it; the data is fsynced.
func appendFile(path, text string) error {
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("%s: %w", path, render.ErrSymlink)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, render.DefaultMode)
	if errors.Is(err, syscall.ELOOP) {
		return fmt.Errorf("%s: %w", path, render.ErrSymlink)
	}
	if err != nil {
		return err
	}
	if fi, err := f.Stat(); err == nil && fi.Size() > 0 {
		text = "\n" + text
	}
	if _, err := f.WriteString(text); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
