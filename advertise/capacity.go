package advertise

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/nixrb-discover/nixrb-discover/wire"
)

// Quantisation of published capacity (docs/PROTOCOL.md, "Capacity").
const (
	// loadStep is the step Load1 is rounded to.
	loadStep = 0.5
	// mibStep is the step, in MiB, that free memory and store space are
	// rounded down to (1 GiB).
	mibStep = 1024
)

// quantise rounds c to what an advert carries: Load1 to the nearest
// loadStep, MemAvailMiB and StoreFreeMiB down to a multiple of mibStep.
// Cores, MemTotalMiB and RunningBuilds are kept as they are.
func quantise(c wire.Capacity) wire.Capacity {
	c.Load1 = math.Round(c.Load1/loadStep) * loadStep
	c.MemAvailMiB -= c.MemAvailMiB % mibStep
	c.StoreFreeMiB -= c.StoreFreeMiB % mibStep
	return c
}

// meaningfullyDifferent reports whether a fresh measurement c differs
// enough from the published capacity prev to publish a new advert. Any
// change in Cores, MemTotalMiB or RunningBuilds counts. The noisy numbers
// count only past a threshold wider than their quantisation step, so a
// value wobbling around a step boundary does not flip the advert
// (hysteresis): Load1 must move by at least max(0.75, Cores/10), MemAvailMiB
// by at least max(1 GiB, MemTotalMiB/10), StoreFreeMiB by at least
// max(1 GiB, prev.StoreFreeMiB/20).
func meaningfullyDifferent(c, prev wire.Capacity) bool {
	if c.Cores != prev.Cores || c.MemTotalMiB != prev.MemTotalMiB || c.RunningBuilds != prev.RunningBuilds {
		return true
	}
	if math.Abs(c.Load1-prev.Load1) >= max(0.75, float64(c.Cores)/10) {
		return true
	}
	if absDiff(c.MemAvailMiB, prev.MemAvailMiB) >= max(mibStep, c.MemTotalMiB/10) {
		return true
	}
	return absDiff(c.StoreFreeMiB, prev.StoreFreeMiB) >= max(mibStep, prev.StoreFreeMiB/20)
}

func absDiff(a, b int64) int64 {
	if a > b {
		return a - b
	}
	return b - a
}

// BuildUsers says which Unix users run Nix builds, from the Nix settings
// build-users-group, auto-allocate-uids, start-id and id-count. It is how
// RunningBuilds is measured.
type BuildUsers struct {
	// Group is build-users-group ("" when builds run as the daemon's user,
	// which makes running builds unmeasurable: RunningBuilds stays 0).
	Group string
	// AutoAllocate is auto-allocate-uids: builds run as UIDs from
	// [StartID, StartID+IDCount), one slot of 65536 UIDs per build.
	AutoAllocate bool
	StartID      int64
	IDCount      int64
}

// autoUIDSlot is how many UIDs Nix reserves per build with
// auto-allocate-uids (maxIdsPerBuild in Nix's lock.cc).
const autoUIDSlot = 1 << 16

// measureCapacity reads the live capacity of this machine: cores from
// <ProcRoot>/stat, load from loadavg, memory from meminfo, free space on
// StoreDir by statfs, and running builds (see [BuildUsers]). It measures
// what it can: a field it cannot read stays 0 (unknown) and the returned
// error says which and why.
func measureCapacity(o FactsOptions, bu BuildUsers) (wire.Capacity, error) {
	o = o.withDefaults()
	var c wire.Capacity
	var errs []error
	var err error
	if c.Cores, err = countCPUs(o.ProcRoot); err != nil {
		errs = append(errs, fmt.Errorf("cores: %w", err))
	}
	if c.Load1, err = readLoad1(o.ProcRoot); err != nil {
		errs = append(errs, fmt.Errorf("load: %w", err))
	}
	if c.MemTotalMiB, c.MemAvailMiB, err = readMeminfo(o.ProcRoot); err != nil {
		errs = append(errs, fmt.Errorf("memory: %w", err))
	}
	if c.StoreFreeMiB, err = freeMiB(o.StoreDir); err != nil {
		errs = append(errs, fmt.Errorf("store free space: %w", err))
	}
	if c.RunningBuilds, err = countRunningBuilds(o, bu); err != nil {
		errs = append(errs, fmt.Errorf("running builds: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return c, fmt.Errorf("measure capacity: %w", err)
	}
	return c, nil
}

// readSmall reads a small file (procfs files report size 0, so read to
// EOF with a bound).
func readSmall(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(io.LimitReader(f, 1<<20)); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return buf.Bytes(), nil
}

func countCPUs(proc string) (int, error) {
	b, err := readSmall(filepath.Join(proc, "stat"))
	if err != nil {
		return 0, err
	}
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		if len(l) > 3 && strings.HasPrefix(l, "cpu") && l[3] >= '0' && l[3] <= '9' {
			n++
		}
	}
	if n == 0 {
		return 0, errors.New("no cpuN lines in stat")
	}
	return n, nil
}

func readLoad1(proc string) (float64, error) {
	b, err := readSmall(filepath.Join(proc, "loadavg"))
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, errors.New("loadavg is empty")
	}
	l, err := strconv.ParseFloat(f[0], 64)
	if err != nil || l < 0 || l > wire.MaxLoad {
		return 0, fmt.Errorf("loadavg: bad 1-minute load %q", f[0])
	}
	return l, nil
}

func readMeminfo(proc string) (total, avail int64, err error) {
	b, err := readSmall(filepath.Join(proc, "meminfo"))
	if err != nil {
		return 0, 0, err
	}
	vals := map[string]int64{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, rest, ok := strings.Cut(sc.Text(), ":")
		f := strings.Fields(rest)
		if !ok || len(f) == 0 || (k != "MemTotal" && k != "MemAvailable") {
			continue
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil || kb < 0 {
			return 0, 0, fmt.Errorf("meminfo: bad %s %q", k, f[0])
		}
		vals[k] = kb / 1024
	}
	total, okT := vals["MemTotal"]
	avail, okA := vals["MemAvailable"]
	if !okT || !okA {
		return total, avail, errors.New("meminfo lacks MemTotal or MemAvailable")
	}
	return total, avail, nil
}

// countRunningBuilds counts the builds running now: the distinct build
// users (members of the build users group, or auto-allocated UID slots)
// that own at least one process. Nix never runs two builds as one build
// user at once, and every process of a build runs as its build user.
func countRunningBuilds(o FactsOptions, bu BuildUsers) (int, error) {
	uids := map[int64]bool{}
	if bu.Group != "" {
		var err error
		if uids, err = groupUIDs(o.GroupFile, o.PasswdFile, bu.Group); err != nil {
			return 0, err
		}
	}
	if len(uids) == 0 && !bu.AutoAllocate {
		return 0, nil
	}
	// A build holds its build user's lock from the moment Nix picks the
	// user, before its first process runs as that user: the locks see a
	// build starting sooner, the processes see one without a lock file.
	locked := countLockedBuildUsers(o.ProcRoot, o.NixStateDir)
	entries, err := os.ReadDir(o.ProcRoot)
	if err != nil {
		return locked, err
	}
	busy := map[int64]bool{}
	for _, e := range entries {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		uid, ok := processUID(filepath.Join(o.ProcRoot, e.Name(), "status"))
		switch {
		case !ok: // the process has gone, or it is not a process directory
		case uids[uid]:
			busy[uid] = true
		case bu.AutoAllocate && uid >= bu.StartID && uid < bu.StartID+bu.IDCount:
			busy[-1-(uid-bu.StartID)/autoUIDSlot] = true // slots never clash with real UIDs
		}
	}
	return max(len(busy), locked), nil
}

// maxLockFiles bounds how many lock files of a user pool are looked at
// (a pool has one per build user: tens, or hundreds on a big builder).
const maxLockFiles = 4096

// countLockedBuildUsers is how many of Nix's build-user lock files under
// stateDir (see [userPoolDirs]) are flocked now, read from
// <procRoot>/locks: Nix holds a build user's lock for as long as a build
// runs as it (libstore/lock.cc, 2.8; libstore/unix/user-lock.cc, 2.19+),
// and the lock is there before the build's first process. 0 when there
// is nothing to read (no pool yet, no /proc/locks off Linux).
func countLockedBuildUsers(procRoot, stateDir string) int {
	files := map[fileID]bool{}
	for _, dir := range userPoolDirs(stateDir) {
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range entries[:min(len(entries), maxLockFiles)] {
			if id, err := statID(filepath.Join(dir, e.Name())); err == nil {
				files[id] = true
			}
		}
	}
	if len(files) == 0 {
		return 0
	}
	b, err := readSmall(filepath.Join(procRoot, "locks"))
	if err != nil {
		return 0
	}
	held := map[fileID]bool{}
	for _, l := range strings.Split(string(b), "\n") {
		if id, ok := parseProcLock(l); ok && files[id] {
			held[id] = true
		}
	}
	return len(held)
}

// parseProcLock reads the file a /proc/locks line names, e.g.
// "3: FLOCK  ADVISORY  WRITE 1234 00:2e:5678 0 EOF" (major and minor in
// hex, the inode in decimal; fs/locks.c). A waiter's line ("3: -> FLOCK
// ...") holds nothing and is skipped.
func parseProcLock(line string) (fileID, bool) {
	f := strings.Fields(line)
	if len(f) < 6 || f[1] == "->" {
		return fileID{}, false
	}
	for _, field := range f[2:] {
		parts := strings.Split(field, ":")
		if len(parts) != 3 {
			continue
		}
		major, err1 := strconv.ParseUint(parts[0], 16, 32)
		minor, err2 := strconv.ParseUint(parts[1], 16, 32)
		ino, err3 := strconv.ParseUint(parts[2], 10, 64)
		if err1 != nil || err2 != nil || err3 != nil {
			return fileID{}, false
		}
		return fileID{uint32(major), uint32(minor), ino}, true
	}
	return fileID{}, false
}

// processUID is the real UID on the "Uid:" line of a /proc/PID/status.
func processUID(path string) (int64, bool) {
	b, err := readSmall(path)
	if err != nil {
		return 0, false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "Uid:"); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				return 0, false
			}
			uid, err := strconv.ParseInt(f[0], 10, 64)
			return uid, err == nil
		}
	}
	return 0, false
}

// groupUIDs is the UIDs of the members of group: users listed in its
// /etc/group line plus users whose primary group it is.
func groupUIDs(groupFile, passwdFile, group string) (map[int64]bool, error) {
	gb, err := readSmall(groupFile)
	if err != nil {
		return nil, err
	}
	gid, members := "", map[string]bool{}
	for _, l := range strings.Split(string(gb), "\n") {
		f := strings.Split(l, ":")
		if len(f) >= 4 && f[0] == group {
			gid = f[2]
			for _, m := range strings.Split(f[3], ",") {
				if m != "" {
					members[m] = true
				}
			}
			break
		}
	}
	if gid == "" {
		return nil, fmt.Errorf("build users group %q is not in %s", group, groupFile)
	}
	pb, err := readSmall(passwdFile)
	if err != nil {
		return nil, err
	}
	uids := map[int64]bool{}
	for _, l := range strings.Split(string(pb), "\n") {
		f := strings.Split(l, ":")
		if len(f) < 4 || (!members[f[0]] && f[3] != gid) {
			continue
		}
		if uid, err := strconv.ParseInt(f[2], 10, 64); err == nil && uid != 0 {
			uids[uid] = true
		}
	}
	return uids, nil
}
