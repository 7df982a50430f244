package advertise

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Bounds on what one Check reads.
const (
	// sshMaxNetRead bounds the bytes read from one tcp table. The kernel
	// lists listening sockets first, and the read stops at the first
	// connection, so this is only reached on a machine with thousands of
	// listeners.
	sshMaxNetRead = 1 << 20
	// sshMaxStatRead bounds a /proc/PID/stat read (a few hundred bytes).
	sshMaxStatRead = 4 << 10
	// sshMaxProcs and sshMaxFDs bound the owner scan (run only when the
	// listening socket changes).
	sshMaxProcs = 1 << 16
	sshMaxFDs   = 1 << 18
	// sshMaxOwners is how many processes holding one listening socket are
	// remembered (sshd itself, or systemd with socket activation).
	sshMaxOwners = 8
)

// TCP states in /proc/net/tcp (include/net/tcp_states.h).
const (
	tcpSynRecv = 0x03
	tcpListen  = 0x0A
)

// sshListener is one LISTEN socket on the watched port.
type sshListener struct {
	inode  uint64
	queued bool // rx_queue > 0: connections wait to be accepted
}

// sshWatchState is what Check remembers between calls.
type sshWatchState struct {
	cur, prev []sshListener
	// owners maps each listening inode to the processes holding it;
	// ownersOf is the sorted inode set it was scanned for.
	owners   map[uint64][]int
	ownersOf []uint64
	ownerErr error
	rd       *bufio.Reader
	buf      []byte
	diagBuf  []byte
	noDiag   bool // sock_diag failed once: read the tables in NetDir
	noCompat bool // the compat TCPDIAG_GETSOCK dump failed once
	files    *sshFiles
}

// sshFiles are what a watch keeps open between checks, because opening
// them is most of a check's cost: the sock_diag socket and the owner's
// stat file. The watch has no Close: they are closed when it is garbage
// collected (runtime.AddCleanup on this struct).
type sshFiles struct {
	*sshFDs
}

// sshFDs are the descriptors themselves (-1: not open).
type sshFDs struct {
	nl      int
	seq     uint32
	stat    int
	statPID int
}

func (s *sshWatchState) openFiles() *sshFDs {
	if s.files == nil {
		fds := &sshFDs{nl: -1, stat: -1}
		s.files = &sshFiles{fds}
		runtime.AddCleanup(s.files, func(f *sshFDs) { f.closeNetlink(); f.closeStat() }, fds)
	}
	return s.files.sshFDs
}

func (f *sshFDs) closeNetlink() {
	if f.nl >= 0 {
		unix.Close(f.nl)
		f.nl = -1
	}
}

func (f *sshFDs) closeStat() {
	if f.stat >= 0 {
		unix.Close(f.stat)
		f.stat, f.statPID = -1, 0
	}
}

// Check looks at sshd once: the listening sockets on Port, the state of
// the process holding them, and whether their accept queue moves.
func (w *SSHWatch) Check() SSHState {
	s := &w.state
	proc := w.ProcRoot
	if proc == "" {
		proc = DefaultProcRoot
	}
	st := SSHState{Port: w.port()}
	s.prev, s.cur = s.cur, s.prev[:0]
	if err := s.listeners(w.NetDir, proc, st.Port); err != nil {
		s.cur = s.cur[:0]
		st.Status, st.Err = SSHUnknown, err
		return st
	}
	if len(s.cur) == 0 {
		st.Status = SSHNotListening
		return st
	}
	if !s.ownersKnown() {
		s.scanOwners(proc)
		if len(s.owners) == 0 {
			s.ownersFromPidFile(proc, w.pidFile())
		}
	}
	st.PIDErr = s.ownerErr
	stalled := false
	for _, l := range s.cur {
		pids := s.owners[l.inode]
		if len(pids) > 0 && st.PID == 0 {
			st.PID = pids[0]
		}
		if stopped, pid, err := allStopped(proc, pids, s); err != nil {
			s.ownersOf = nil // an owner is gone: scan again next time
		} else if stopped {
			st.Status, st.PID = SSHStopped, pid
			return st
		}
		if l.queued && slices.Contains(s.prev, l) {
			stalled = true
		}
	}
	if stalled {
		st.Status = SSHStalled
	}
	return st
}

// listeners sets cur to the LISTEN sockets on port: by sock_diag when
// watching this machine's own namespace (netDir unset, proc the real
// one), else (or when sock_diag fails) from the tcp and tcp6 tables.
func (s *sshWatchState) listeners(netDir, proc string, port int) error {
	if netDir == "" && proc == DefaultProcRoot && !s.noDiag {
		var err error
		if s.cur, err = s.diagListeners(port, s.cur); err == nil {
			return nil
		}
		s.cur, s.noDiag = s.cur[:0], true
	}
	if netDir == "" {
		netDir = filepath.Join(proc, "net")
	}
	var err4, err6 error
	s.cur, err4 = s.readListeners(filepath.Join(netDir, "tcp"), port, s.cur)
	s.cur, err6 = s.readListeners(filepath.Join(netDir, "tcp6"), port, s.cur)
	if err4 != nil && (err6 != nil || !errors.Is(err4, os.ErrNotExist)) {
		// tcp6 alone may be missing (IPv6 off); tcp must be readable.
		return errors.Join(err4, err6)
	}
	return nil
}

// readListeners appends the LISTEN sockets on port found in one of the
// kernel's tcp tables to out. It reads at most sshMaxNetRead bytes and
// stops at the first socket that is neither listening nor a pending
// connection: the kernel lists the listening hash table first.
func (s *sshWatchState) readListeners(path string, port int, out []sshListener) ([]sshListener, error) {
	f, err := os.Open(path)
	if err != nil {
		return out, err
	}
	defer f.Close()
	if s.rd == nil {
		s.rd = bufio.NewReaderSize(nil, 16<<10)
	}
	s.rd.Reset(io.LimitReader(f, sshMaxNetRead))
	header := true
	for {
		line, err := s.rd.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// Not a socket line; skip the rest of it.
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = s.rd.ReadSlice('\n')
			}
			continue
		}
		if len(line) > 0 && !header {
			l, state, lport, ok := parseTCPLine(line)
			if ok && state == tcpListen && lport == port {
				out = append(out, l)
			}
			if ok && state != tcpListen && state != tcpSynRecv {
				return out, nil
			}
		}
		header = false
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("read %s: %w", path, err)
		}
	}
}

// parseTCPLine reads one line of /proc/net/tcp or tcp6:
//
//	sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...
//	0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 12345 ...
func parseTCPLine(line []byte) (l sshListener, state, port int, ok bool) {
	var f [10][]byte
	rest := line
	for i := range f {
		rest = bytes.TrimLeft(rest, " \t")
		end := bytes.IndexAny(rest, " \t\n")
		if end < 0 {
			end = len(rest)
		}
		f[i], rest = rest[:end], rest[end:]
	}
	colon := bytes.LastIndexByte(f[1], ':')
	q := bytes.IndexByte(f[4], ':')
	if colon < 0 || q < 0 || len(f[9]) == 0 {
		return l, 0, 0, false
	}
	p, err1 := strconv.ParseUint(string(f[1][colon+1:]), 16, 16)
	st, err2 := strconv.ParseUint(string(f[3]), 16, 8)
	rx, err3 := strconv.ParseUint(string(f[4][q+1:]), 16, 64)
	ino, err4 := strconv.ParseUint(string(f[9]), 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || err4 != nil {
		return l, 0, 0, false
	}
	return sshListener{inode: ino, queued: rx > 0}, int(st), int(p), true
}

// ownersKnown reports whether owners was scanned for the current inodes.
func (s *sshWatchState) ownersKnown() bool {
	if len(s.ownersOf) != len(s.cur) {
		return false
	}
	for _, l := range s.cur {
		if _, found := slices.BinarySearch(s.ownersOf, l.inode); !found {
			return false
		}
	}
	return true
}

// scanOwners finds the processes holding the current listening sockets
// by reading the links in proc/*/fd ("socket:[INODE]"), within
// sshMaxProcs processes and sshMaxFDs links.
func (s *sshWatchState) scanOwners(proc string) {
	s.owners = make(map[uint64][]int, len(s.cur))
	s.ownersOf = s.ownersOf[:0]
	want := make(map[string]uint64, len(s.cur))
	for _, l := range s.cur {
		s.ownersOf = append(s.ownersOf, l.inode)
		want["socket:["+strconv.FormatUint(l.inode, 10)+"]"] = l.inode
	}
	slices.Sort(s.ownersOf)
	s.ownerErr = nil
	d, err := os.Open(proc)
	if err != nil {
		s.ownerErr = fmt.Errorf("find sshd's process: %w", err)
		return
	}
	defer d.Close()
	names, _ := d.Readdirnames(sshMaxProcs)
	fds, denied := 0, 0
	var deniedErr error
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil || pid <= 0 {
			continue
		}
		fdDir := filepath.Join(proc, name, "fd")
		links, err := readDirNames(fdDir, sshMaxFDs-fds)
		if err != nil {
			continue // gone, or a kernel thread
		}
		fds += len(links)
		for _, fd := range links {
			target, err := os.Readlink(filepath.Join(fdDir, fd))
			if err != nil {
				if errors.Is(err, os.ErrPermission) {
					denied++
					deniedErr = err
					break // every fd of this process is denied alike
				}
				continue
			}
			if ino, ok := want[target]; ok && len(s.owners[ino]) < sshMaxOwners {
				s.owners[ino] = append(s.owners[ino], pid)
			}
		}
		if fds >= sshMaxFDs {
			break
		}
	}
	if len(s.owners) == 0 {
		switch {
		case denied > 0:
			s.ownerErr = fmt.Errorf("find sshd's process: %d processes' fds unreadable (needs CAP_SYS_PTRACE): %w", denied, deniedErr)
		default:
			s.ownerErr = errors.New("find sshd's process: no process holds the listening socket")
		}
	}
}

// ownersFromPidFile is the fallback when the fds of other processes are
// unreadable (no CAP_SYS_PTRACE, as under the shipped systemd unit): the
// PID sshd wrote to its pid file, if that process is an sshd, is taken
// as the owner of every listening socket on the port.
func (s *sshWatchState) ownersFromPidFile(proc, pidFile string) {
	if pidFile == "" {
		return
	}
	b, err := os.ReadFile(pidFile)
	if err != nil || len(b) > 32 {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return
	}
	comm, err := os.ReadFile(filepath.Join(proc, strconv.Itoa(pid), "comm"))
	if err != nil || strings.TrimSpace(string(comm)) != "sshd" {
		return
	}
	for _, l := range s.cur {
		s.owners[l.inode] = []int{pid}
	}
	s.ownerErr = nil
}

// readDirNames lists at most n entries of dir.
func readDirNames(dir string, n int) ([]string, error) {
	if n <= 0 {
		return nil, nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Readdirnames(n)
	if errors.Is(err, io.EOF) {
		err = nil
	}
	return names, err
}

// allStopped reports whether every one of pids is stopped (state T or t
// in proc/PID/stat), and one of them; false for no pids. An error means
// a pid is gone.
func allStopped(proc string, pids []int, s *sshWatchState) (bool, int, error) {
	if len(pids) == 0 {
		return false, 0, nil
	}
	for _, pid := range pids {
		state, err := s.procState(proc, pid)
		if err != nil {
			return false, 0, err
		}
		if state != 'T' && state != 't' {
			return false, 0, nil
		}
	}
	return true, pids[0], nil
}

// procState reads the state letter of proc/PID/stat: "PID (comm) S ...",
// where comm may hold spaces and parentheses.
func (s *sshWatchState) procState(proc string, pid int) (byte, error) {
	// The file stays open (see sshFiles) and is re-read from offset 0,
	// which makes procfs generate it afresh; once the process is gone the
	// read fails (ESRCH), even if its pid was reused. unix, not os: no
	// poller registration. Only the real procfs behaves so: the file of a
	// fake proc tree is opened each time.
	f := s.openFiles()
	path := proc + "/" + strconv.Itoa(pid) + "/stat"
	if f.statPID != pid || proc != DefaultProcRoot {
		f.closeStat()
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return 0, &os.PathError{Op: "open", Path: path, Err: err}
		}
		f.stat, f.statPID = fd, pid
	}
	if s.buf == nil {
		s.buf = make([]byte, sshMaxStatRead)
	}
	n, err := unix.Pread(f.stat, s.buf, 0) // the kernel fills stat in one read
	if err != nil || proc != DefaultProcRoot {
		f.closeStat()
	}
	if err != nil {
		return 0, &os.PathError{Op: "read", Path: path, Err: err}
	}
	b := s.buf[:n]
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return 0, fmt.Errorf("proc %d: malformed stat", pid)
	}
	return b[i+2], nil
}
