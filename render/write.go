package render

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"

	"github.com/google/renameio/v2"
)

// DefaultMode is the mode of a machines file created by WriteAtomic.
const DefaultMode fs.FileMode = 0o644

// ErrStoreSymlink is returned by WriteAtomic when the machines file is a
// symlink into the Nix store, as NixOS makes /etc/nix/machines when
// nix.distributedBuilds is set.
var ErrStoreSymlink = errors.New("machines file is a symlink into the Nix store (managed by NixOS)")

// ErrSymlink is returned by WriteAtomic when the file is a symlink that
// does not point into the Nix store. nixrb-discover never creates one, so
// it was made by someone else, and writing through it would replace a
// file we did not write.
var ErrSymlink = errors.New("file is a symlink nixrb-discover did not create")

// SymlinkHint tells the user what to do about ErrSymlink.
const SymlinkHint = "remove the symlink and point Nix at a file of ours (builders = @/var/lib/nixrb-discover/machines, --machines /var/lib/nixrb-discover/machines), or pass --machines with the symlink's target itself"

// StoreSymlinkHint tells the user what to do about ErrStoreSymlink.
// NixOS and nix-darwin both make /etc/nix/machines such a symlink
// (environment.etc) when nix.buildMachines is set.
const StoreSymlinkHint = `point Nix at a file of ours instead: on NixOS or nix-darwin set nix.settings.builders = "@/var/lib/nixrb-discover/machines" (the nixrb-discover client modules do this) and run the client with --machines /var/lib/nixrb-discover/machines`

// WriteResult says what WriteAtomic did.
type WriteResult struct {
	// Changed is false when the file already held exactly these bytes and
	// was not touched.
	Changed bool
	// Path is the file written.
	Path string
}

// WriteAtomic replaces the file at path with content so that a reader
// (Nix) sees either the old or the new file, never a mix: the bytes go to
// a temporary file in the same directory, are fsynced, renamed over path,
// and the directory is fsynced. Identical bytes are not rewritten. The
// existing file's mode and owner are kept (DefaultMode for a new file).
// On any error (ENOSPC, EROFS, EACCES) the old file is left intact and no
// temporary file remains. A symlink is never followed: one into the Nix
// store is refused with ErrStoreSymlink, any other with ErrSymlink, and
// the file is read with O_NOFOLLOW, so one swapped in after the check is
// refused too. A directory another user owns or others may write to is
// refused with ErrUnsafeDir (see CheckDir): its writers could plant or
// swap in a symlink or a file of their own; so is a FIFO or device at
// path (ErrNotRegular).
//
// WriteAtomic is not safe for concurrent use on the same path.
func WriteAtomic(path string, content []byte) (WriteResult, error) {
	if err := CheckDir(filepath.Dir(path)); err != nil {
		return WriteResult{Path: path}, fmt.Errorf("write %s: %w", path, err)
	}
	if err := CheckSymlink(path); err != nil {
		return WriteResult{Path: path}, fmt.Errorf("write %s: %w", path, err)
	}
	target := path
	res := WriteResult{Path: target}
	old, err := ReadNoFollow(target)
	switch {
	case err == nil && bytes.Equal(old, content):
		return res, nil
	case errors.Is(err, ErrSymlink) || errors.Is(err, ErrStoreSymlink) || errors.Is(err, ErrNotRegular):
		return res, fmt.Errorf("write %s: %w", target, err)
	case err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, errTooLarge):
		return res, fmt.Errorf("write %s: read current file: %w", target, err)
	}
	var uid, gid = -1, -1
	if fi, err := os.Lstat(target); err == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			uid, gid = int(st.Uid), int(st.Gid)
		}
	}
	pf, err := renameio.NewPendingFile(target,
		renameio.WithTempDir(filepath.Dir(target)),
		renameio.WithStaticPermissions(DefaultMode),
		renameio.WithExistingPermissions())
	if err != nil {
		return res, fmt.Errorf("write %s: %w", target, err)
	}
	defer pf.Cleanup()
	if uid >= 0 && uid != os.Getuid() || gid >= 0 && gid != os.Getgid() {
		if err := pf.Chown(uid, gid); err != nil {
			return res, fmt.Errorf("write %s: keep owner: %w", target, err)
		}
	}
	if _, err := pf.Write(content); err != nil {
		return res, fmt.Errorf("write %s: %w", target, err)
	}
	if err := pf.CloseAtomicallyReplace(); err != nil {
		return res, fmt.Errorf("write %s: %w", target, err)
	}
	res.Changed = true
	if err := syncDir(filepath.Dir(target)); err != nil {
		return res, fmt.Errorf("write %s: %w", target, err)
	}
	return res, nil
}

// CheckSymlink returns nil unless path is a symlink, which WriteAtomic
// refuses: ErrStoreSymlink when it points into the Nix store (NixOS),
// ErrSymlink anywhere else.
func CheckSymlink(path string) error {
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode()&fs.ModeSymlink == 0 {
		return nil
	}
	dest, err := os.Readlink(path)
	if err != nil {
		return err
	}
	if !filepath.IsAbs(dest) {
		dest = filepath.Join(filepath.Dir(path), dest)
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		real = filepath.Clean(dest)
	}
	if strings.HasPrefix(filepath.Clean(dest), "/nix/store/") || strings.HasPrefix(real, "/nix/store/") {
		return fmt.Errorf("%w: it points to %s", ErrStoreSymlink, dest)
	}
	return fmt.Errorf("%w: it points to %s", ErrSymlink, dest)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// SweepStale removes temporary files that an interrupted WriteAtomic to
// path left behind ("." + base name + digits, renameio's naming) and
// returns how many it removed. Call it once at start, before writing.
func SweepStale(path string) (int, error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	re := regexp.MustCompile(`^\.` + regexp.QuoteMeta(base) + `-?[0-9]+$`)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("sweep stale temporary files in %s: %w", dir, err)
	}
	n := 0
	for _, e := range ents {
		if !e.Type().IsRegular() || !re.MatchString(e.Name()) {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return n, fmt.Errorf("sweep stale temporary file: %w", err)
		}
		n++
	}
	return n, nil
}
