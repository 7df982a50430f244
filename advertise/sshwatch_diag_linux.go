package advertise

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// The kernel's sock_diag structures (linux/inet_diag.h, linux/netlink.h).
const (
	nlmsgHdrLen       = 16
	inetDiagReqLen    = 56 // inet_diag_req_v2
	inetDiagReqOldLen = 60 // inet_diag_req, of the compat TCPDIAG_GETSOCK
	inetDiagMsgLen    = 72 // inet_diag_msg
	tcpDiagGetSock    = 18 // TCPDIAG_GETSOCK
	// sshMaxDiagRead bounds the bytes one dump may return.
	sshMaxDiagRead = 1 << 20
)

// diagListeners appends the TCP sockets in state LISTEN on port, IPv4 and
// IPv6, to out, asking the kernel by sock_diag netlink (as ss -lt does).
//
// This is what Check uses for this machine's own namespace: a dump of
// LISTEN sockets only walks the listening hash table, while reading
// /proc/net/tcp6 walks every bucket of the established one, which costs
// milliseconds on a large machine even when it is empty. The listening
// table (one bucket per 2 MB of RAM) is shared by IPv4 and IPv6: one
// compat TCPDIAG_GETSOCK dump (family AF_UNSPEC in the kernel) walks it
// once for both, where two inet_diag_req_v2 dumps (one per family, the
// fallback) walk it twice.
//
// The netlink socket stays open between checks (see [sshFiles]); after
// an error it is closed and the next check opens a new one.
func (s *sshWatchState) diagListeners(port int, out []sshListener) ([]sshListener, error) {
	f := s.openFiles()
	if f.nl < 0 {
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
		if err != nil {
			return out, fmt.Errorf("sock_diag: %w", err)
		}
		tv := unix.NsecToTimeval(int64(sshDiagTimeout))
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			unix.Close(fd)
			return out, fmt.Errorf("sock_diag: %w", err)
		}
		f.nl = fd
	}
	if s.diagBuf == nil {
		s.diagBuf = make([]byte, 32<<10)
	}
	var err error
	if !s.noCompat {
		n := len(out)
		f.seq++
		if out, err = s.diagDump(f.nl, f.seq, tcpDiagGetSock, 0, port, out); err == nil {
			return out, nil
		}
		out, s.noCompat = out[:n], true
	}
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		f.seq++
		out, err = s.diagDump(f.nl, f.seq, unix.SOCK_DIAG_BY_FAMILY, family, port, out)
		if err != nil && family == unix.AF_INET6 && errors.Is(err, syscall.ENOENT) {
			continue // IPv6 is off
		}
		if err != nil {
			f.closeNetlink()
			return out, err
		}
	}
	return out, nil
}

// sshDiagTimeout bounds each netlink receive (the kernel answers at once).
const sshDiagTimeout = 1e9 // 1 s, in ns

// diagDump sends one dump request for LISTEN sockets and reads the answer
// up to NLMSG_DONE: typ SOCK_DIAG_BY_FAMILY with an inet_diag_req_v2 for
// family, or TCPDIAG_GETSOCK with an inet_diag_req (both families).
func (s *sshWatchState) diagDump(fd int, seq uint32, typ uint16, family uint8, port int, out []sshListener) ([]sshListener, error) {
	ne := binary.NativeEndian
	var buf [nlmsgHdrLen + inetDiagReqOldLen]byte
	req := buf[:nlmsgHdrLen+inetDiagReqLen]
	if typ == tcpDiagGetSock {
		// inet_diag_req: family, src_len, dst_len, ext, inet_diag_sockid
		// (48 bytes), states, dbs.
		req = buf[:]
		ne.PutUint32(req[nlmsgHdrLen+52:], 1<<tcpListen)
	} else {
		// inet_diag_req_v2: family, protocol, ext, pad, states, sockid.
		req[16] = family
		req[17] = unix.IPPROTO_TCP
		ne.PutUint32(req[20:], 1<<tcpListen)
	}
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], typ)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(req[8:], seq)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return out, fmt.Errorf("sock_diag: send: %w", err)
	}
	for total := 0; total < sshMaxDiagRead; {
		n, _, err := unix.Recvfrom(fd, s.diagBuf, 0)
		if err != nil {
			return out, fmt.Errorf("sock_diag: receive: %w", err)
		}
		total += n
		b := s.diagBuf[:n]
		for len(b) >= nlmsgHdrLen {
			l := int(ne.Uint32(b[0:]))
			mtyp := ne.Uint16(b[4:])
			if l < nlmsgHdrLen || l > len(b) {
				return out, errors.New("sock_diag: malformed answer")
			}
			msg := b[nlmsgHdrLen:l]
			switch {
			case ne.Uint32(b[8:]) != seq:
				// Left over from a dump an error cut short: skip.
			case mtyp == unix.NLMSG_DONE:
				return out, nil
			case mtyp == unix.NLMSG_ERROR:
				if len(msg) >= 4 {
					if errno := -int32(ne.Uint32(msg)); errno > 0 {
						return out, fmt.Errorf("sock_diag: %w", syscall.Errno(errno))
					}
				}
				return out, nil
			case (mtyp == unix.SOCK_DIAG_BY_FAMILY || mtyp == tcpDiagGetSock) && len(msg) >= inetDiagMsgLen:
				// inet_diag_msg: family, state, timer, retrans, then
				// inet_diag_sockid (sport, dport big-endian, ...), then
				// expires, rqueue, wqueue, uid, inode.
				sport := int(binary.BigEndian.Uint16(msg[4:]))
				if msg[1] == tcpListen && sport == port {
					out = append(out, sshListener{inode: uint64(ne.Uint32(msg[68:])), queued: ne.Uint32(msg[56:]) > 0})
				}
			}
			if next := (l + 3) &^ 3; next < len(b) { // NLMSG_ALIGN
				b = b[next:]
			} else {
				b = nil
			}
		}
	}
	return out, errors.New("sock_diag: answer too long")
}
