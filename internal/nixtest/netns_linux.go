package nixtest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Builder networks: one /30 per slot in 10.232.0.0/16. Slot i uses
// 10.232.0.0 + 4i; the root-namespace end is .1, the builder end .2.
const (
	netSlots   = 1 << 14
	netLockDir = "/run/nixrb-nixtest/net"
	nsPrefix   = "nixtest-"
	hostIfPfx  = "ntr" // root-side veth: ntr<slot>, at most 8 chars
	peerIfName = "eth0"
)

// netSlot is a network namespace joined to the root namespace by a veth.
type netSlot struct {
	idx    int
	ns     string     // netns name, /run/netns/<ns>
	hostIf string     // veth end in the root namespace
	hostIP netip.Addr // address of hostIf
	peerIP netip.Addr // address of eth0 inside ns
	ino    uint64     // netns inode, to find its processes
	lock   *os.File   // flock held while the slot is in use
}

func slotAddrs(idx int) (host, peer netip.Addr) {
	n := uint32(10)<<24 | uint32(232)<<16 | uint32(idx*4)
	a := func(n uint32) netip.Addr {
		return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
	}
	return a(n + 1), a(n + 2)
}

// newNetSlot claims a free slot (a file lock shared by every test process
// on the machine), clears what a dead holder left behind and creates the
// namespace and veth pair.
func newNetSlot(ctx context.Context) (*netSlot, error) {
	if err := os.MkdirAll(netLockDir, 0o755); err != nil {
		return nil, fmt.Errorf("netns: %w", err)
	}
	sweepNetOnce.Do(sweepStaleSlots)
	start := rand.IntN(netSlots)
	for i := 0; i < netSlots; i++ {
		idx := (start + i) % netSlots
		lock, err := lockFile(filepath.Join(netLockDir, strconv.Itoa(idx)+".lock"), 0)
		if err != nil {
			continue
		}
		s := &netSlot{idx: idx, ns: nsPrefix + strconv.Itoa(idx), hostIf: hostIfPfx + strconv.Itoa(idx), lock: lock}
		s.hostIP, s.peerIP = slotAddrs(idx)
		if err := s.create(ctx); err != nil {
			s.destroy()
			return nil, err
		}
		return s, nil
	}
	return nil, fmt.Errorf("netns: all %d slots in use", netSlots)
}

func (s *netSlot) create(ctx context.Context) error {
	s.clearStale()
	ip := func(args ...string) error {
		_, err := runCmd(ctx, 10*time.Second, "ip", args...)
		return err
	}
	steps := [][]string{
		{"netns", "add", s.ns},
		{"link", "add", s.hostIf, "type", "veth", "peer", "name", peerIfName, "netns", s.ns},
		{"addr", "add", s.hostIP.String() + "/30", "dev", s.hostIf},
		{"link", "set", s.hostIf, "up"},
		{"-n", s.ns, "addr", "add", s.peerIP.String() + "/30", "dev", peerIfName},
		{"-n", s.ns, "link", "set", peerIfName, "up"},
		{"-n", s.ns, "link", "set", "lo", "up"},
	}
	for i, st := range steps {
		if err := ip(st...); err != nil {
			return fmt.Errorf("netns %s: %w", s.ns, err)
		}
		if i == 0 {
			ino, err := netnsInode("/run/netns/" + s.ns)
			if err != nil {
				return fmt.Errorf("netns %s: %w", s.ns, err)
			}
			s.ino = ino
		}
	}
	// A permanent neighbour entry for the builder: with its link down,
	// packets are then dropped silently (connections time out) instead
	// of failing after ARP gives up ("no route to host").
	out, err := runCmd(ctx, 10*time.Second, "ip", "-n", s.ns, "-o", "link", "show", peerIfName)
	if err != nil {
		return fmt.Errorf("netns %s: %w", s.ns, err)
	}
	f := strings.Fields(out)
	i := slices.Index(f, "link/ether")
	if i < 0 || i+1 >= len(f) {
		return fmt.Errorf("netns %s: no MAC address in %q", s.ns, out)
	}
	if err := ip("neigh", "replace", s.peerIP.String(), "lladdr", f[i+1], "dev", s.hostIf, "nud", "permanent"); err != nil {
		return fmt.Errorf("netns %s: %w", s.ns, err)
	}
	return nil
}

var sweepNetOnce sync.Once

// sweepStaleSlots clears every slot a dead test process left behind (its
// lock file exists but nobody holds the lock), so that a crashed run's
// sshd and nix-daemon do not linger until their slot is drawn again.
func sweepStaleSlots() {
	locks, _ := filepath.Glob(filepath.Join(netLockDir, "*.lock"))
	for _, l := range locks {
		idx, err := strconv.Atoi(strings.TrimSuffix(filepath.Base(l), ".lock"))
		if err != nil || idx < 0 || idx >= netSlots {
			continue
		}
		lock, err := lockFile(l, 0)
		if err != nil {
			continue // in use
		}
		s := &netSlot{idx: idx, ns: nsPrefix + strconv.Itoa(idx), hostIf: hostIfPfx + strconv.Itoa(idx)}
		s.clearStale()
		lock.Close() // never remove a lock file: another process may hold it open

	}
}

// clearStale removes a namespace and veth that a dead test process left in
// this slot (we hold its lock, so nobody alive uses them).
func (s *netSlot) clearStale() {
	path := "/run/netns/" + s.ns
	if ino, err := netnsInode(path); err == nil {
		killNetns(ino, time.Second)
		_, _ = runCmd(context.Background(), 10*time.Second, "ip", "netns", "delete", s.ns)
	}
	if _, err := os.Stat("/sys/class/net/" + s.hostIf); err == nil {
		_, _ = runCmd(context.Background(), 10*time.Second, "ip", "link", "delete", s.hostIf)
	}
}

// destroy kills what still runs in the namespace, deletes it and the veth
// and releases the slot. It returns the first problem.
func (s *netSlot) destroy() error {
	var first error
	if s.ino != 0 {
		if left := killNetns(s.ino, 3*time.Second); len(left) > 0 {
			first = fmt.Errorf("netns %s: processes %v survived SIGKILL", s.ns, left)
		}
	}
	if _, err := os.Stat("/run/netns/" + s.ns); err == nil {
		if _, err := runCmd(context.Background(), 10*time.Second, "ip", "netns", "delete", s.ns); err != nil && first == nil {
			first = err
		}
	}
	// The veth goes with the namespace; wait for it (bounded) so the
	// slot is clean for the next holder.
	deadline := time.Now().Add(3 * time.Second)
	for {
		if _, err := os.Stat("/sys/class/net/" + s.hostIf); err != nil {
			break
		}
		if time.Now().After(deadline) {
			if _, err := runCmd(context.Background(), 10*time.Second, "ip", "link", "delete", s.hostIf); err != nil && first == nil {
				first = err
			}
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.lock.Close()
	return first
}
