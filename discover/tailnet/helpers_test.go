package tailnet_test

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/advertise"
	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/nixrb-discover/nixrb-discover/internal/tailnettest"
	"github.com/nixrb-discover/nixrb-discover/wire"
)

// tnHostKey is a valid ed25519 host key for test adverts.
const tnHostKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKuQNWRb4HT2KmI1rmjbWoNeP/sfmom8RX9eHRIRYTVg"

// tnAdvertFor is a valid advert naming host (which the source must not
// use for addressing).
func tnAdvertFor(host string) *wire.Advert {
	return &wire.Advert{
		Version:     wire.WireVersion,
		Hostname:    host,
		SSHUser:     "nix-builder",
		SSHPort:     22,
		Protocol:    wire.ProtocolSSHNG,
		HostKey:     tnHostKey,
		Systems:     []string{"x86_64-linux"},
		MaxJobs:     4,
		SpeedFactor: 1,
		Capacity:    wire.Capacity{Cores: 4},
		IssuedAt:    time.Now().UTC().Truncate(time.Second),
	}
}

// tnBuilder starts a node with tags that serves an advert whose hostname
// is "advertised-<name>" on the default port, until the test ends.
func tnBuilder(tb testing.TB, tn *tailnettest.Net, name string, tags ...string) *tailnettest.Node {
	tb.Helper()
	n := tn.AddNode(tb, name, tags...)
	tnServeAdvert(tb, n)
	return n
}

// tnServeAdvert serves on n, until the test ends, an advert whose
// hostname is "advertised-<name>" on the default port.
func tnServeAdvert(tb testing.TB, n *tailnettest.Node) {
	tb.Helper()
	body, err := wire.EncodeJSON(tnAdvertFor("advertised-" + n.Name))
	if err != nil {
		tb.Fatal(err)
	}
	s := &advertise.TailnetServer{
		LocalAPI: n.LocalClient,
		Listen:   n.Server.Listen,
		Advert:   func() ([]byte, error) { return body, nil },
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	tb.Cleanup(func() { cancel(); <-done })
}

// tnSnap is one emitted snapshot and when it was emitted.
type tnSnap struct {
	discover.Snapshot
	at time.Time
}

// tnRun runs src until the test ends and records every snapshot.
type tnRun struct {
	mu    sync.Mutex
	snaps []tnSnap
	wake  chan struct{}
}

func tnStart(tb testing.TB, src discover.Source) *tnRun {
	tb.Helper()
	r, stop := tnRunStoppable(tb, src)
	tb.Cleanup(func() {
		if err := stop(); err != nil {
			tb.Errorf("Run: %v", err)
		}
	})
	return r
}

// tnRunStoppable runs src, recording its snapshots, and returns a stop
// that cancels it, waits (bounded) for Run to return and returns Run's
// error; stop runs once, later calls return the same error.
func tnRunStoppable(tb testing.TB, src discover.Source) (*tnRun, func() error) {
	r := &tnRun{wake: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- src.Run(ctx, func(s discover.Snapshot) {
			r.mu.Lock()
			r.snaps = append(r.snaps, tnSnap{s, time.Now()})
			r.mu.Unlock()
			select {
			case r.wake <- struct{}{}:
			default:
			}
		})
	}()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(5 * time.Second):
				tb.Error("Run did not return after cancel")
			}
		})
		return runErr
	}
	return r, stop
}

// count is how many snapshots were emitted so far.
func (r *tnRun) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.snaps)
}

// wait returns the first snapshot at index >= from that satisfies ok, and
// its index, waiting at most d.
func (r *tnRun) wait(tb testing.TB, from int, d time.Duration, what string, ok func(discover.Snapshot) bool) (tnSnap, int) {
	tb.Helper()
	deadline := time.After(d)
	for {
		r.mu.Lock()
		for i := from; i < len(r.snaps); i++ {
			if ok(r.snaps[i].Snapshot) {
				s := r.snaps[i]
				r.mu.Unlock()
				return s, i
			}
		}
		var last any = "none"
		if n := len(r.snaps); n > 0 {
			last = tnDescribe(r.snaps[n-1].Snapshot)
		}
		r.mu.Unlock()
		select {
		case <-r.wake:
		case <-time.After(20 * time.Millisecond):
		case <-deadline:
			tb.Fatalf("no snapshot with %s within %v; last: %v", what, d, last)
		}
	}
}

// tnKeys are the candidate keys with a decoded advert, sorted.
func tnKeys(s discover.Snapshot) []string {
	var keys []string
	for _, c := range s.Candidates {
		if c.Advert != nil && c.Problem == "" {
			keys = append(keys, c.Key)
		}
	}
	slices.Sort(keys)
	return keys
}

// tnHasExactly is a snapshot predicate: no error and exactly these nodes
// as candidates with adverts.
func tnHasExactly(nodes ...*tailnettest.Node) func(discover.Snapshot) bool {
	var want []string
	for _, n := range nodes {
		want = append(want, "tailnet:"+string(n.StableID))
	}
	slices.Sort(want)
	return func(s discover.Snapshot) bool {
		return s.Err == nil && slices.Equal(tnKeys(s), want)
	}
}

// tnHas is a snapshot predicate: no error and node among the candidates
// with an advert.
func tnHas(node *tailnettest.Node) func(discover.Snapshot) bool {
	key := "tailnet:" + string(node.StableID)
	return func(s discover.Snapshot) bool { return s.Err == nil && slices.Contains(tnKeys(s), key) }
}

func tnDescribe(s discover.Snapshot) string {
	if s.Err != nil {
		return "err: " + s.Err.Error()
	}
	out := ""
	for _, c := range s.Candidates {
		out += fmt.Sprintf("[%s %s %q] ", c.Key, c.Address, c.Problem)
	}
	return out
}

// tnCountingDial counts dials, to show how busy the source is.
type tnCountingDial struct {
	mu   sync.Mutex
	n    int
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

func (d *tnCountingDial) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d.mu.Lock()
	d.n++
	d.mu.Unlock()
	return d.dial(ctx, network, addr)
}

func (d *tnCountingDial) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.n
}

// tnMedian is the median of ds.
func tnMedian(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}
