package tailnet_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"tailscale.com/client/local"
	"tailscale.com/ipn"

	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/nixrb-discover/nixrb-discover/discover/tailnet"
	"github.com/nixrb-discover/nixrb-discover/internal/tailnettest"
)

// tnKept is a snapshot predicate for "the builder did not leave": the
// snapshot is an error (the source is down: membership keeps its last
// set) or lists node with an advert (its last good one, maybe flagged).
func tnKept(node *tailnettest.Node) func(discover.Snapshot) bool {
	key := "tailnet:" + string(node.StableID)
	return func(s discover.Snapshot) bool {
		if s.Err != nil {
			return true
		}
		for _, c := range s.Candidates {
			if c.Key == key {
				return c.Advert != nil
			}
		}
		return false
	}
}

// tnCheckKept fails t if a snapshot in [from, to] of run lost node.
func tnCheckKept(t *testing.T, run *tnRun, from, to int, node *tailnettest.Node, what string) {
	t.Helper()
	run.mu.Lock()
	defer run.mu.Unlock()
	for _, s := range run.snaps[from:min(to+1, len(run.snaps))] {
		if !tnKept(node)(s.Snapshot) {
			t.Errorf("%s: snapshot %s lost %s", what, tnDescribe(s.Snapshot), node.Name)
		}
	}
}

// tnNoAdvert is a snapshot predicate: node is a candidate, without an
// advert yet (its agent is not up).
func tnNoAdvert(node *tailnettest.Node) func(discover.Snapshot) bool {
	key := "tailnet:" + string(node.StableID)
	return func(s discover.Snapshot) bool {
		for _, c := range s.Candidates {
			if c.Key == key {
				return c.Advert == nil && c.Problem != ""
			}
		}
		return false
	}
}

// tnPushed toggles draining on agent and waits for a snapshot with the
// new flag: proof that the source holds a long poll on that agent.
func tnPushed(t *testing.T, run *tnRun, from int, node *tailnettest.Node, agent *tnAgent) int {
	t.Helper()
	time.Sleep(200 * time.Millisecond) // the poll that followed the first fetch is held
	agent.ToggleDrain()
	_, i := run.wait(t, from, 10*time.Second, node.Name+" draining, pushed by its agent", tnDraining(node, true))
	return i
}

// TestTailnetJoinPaths: every way a builder (re)joins, on the in-process
// tailnet with the real agent (its facts overridden, no nix): the builder
// ends up listed with its advert, and the source long-polls its agent.
// None of these asserts a latency; BenchmarkTailnetJoinPaths measures them.
func TestTailnetJoinPaths(t *testing.T) {
	tn := tailnettest.New(t)
	c := tn.AddNode(t, "c1", tailnettest.TagClient)
	const wait = 10 * time.Second

	// The client has run a while when the builder's agent starts (the
	// builder's tailscaled was up first): it joins.
	t.Run("agent-started-after-client", func(t *testing.T) {
		b := tn.AddNode(t, "late", tailnettest.TagBuilder)
		tn.WaitPeer(t, c, b)
		tn.WaitPeer(t, b, c)
		run := tnStart(t, &tailnet.Source{LocalAPI: c.LocalClient, Dial: c.Server.Dial, Refresh: time.Hour})
		_, i := run.wait(t, 0, wait, "late without an advert", tnNoAdvert(b))
		time.Sleep(3 * time.Second) // past the first steps of any backoff
		agent := tnStartAgent(t, b, 0, nil)
		_, i = run.wait(t, i, wait, "late with its advert", tnDraining(b, false))
		tnPushed(t, run, i, b, agent)
	})

	// The agent is SIGKILLed (its listener and held long poll cut, no
	// draining advert) and started again seconds later: the builder keeps
	// its last good advert throughout, and the new agent is long-polled.
	t.Run("agent-killed-and-started-again", func(t *testing.T) {
		b := tn.AddNode(t, "killed", tailnettest.TagBuilder)
		tn.WaitPeer(t, c, b)
		tn.WaitPeer(t, b, c)
		crash := &tnCrash{listen: b.Server.Listen}
		first := tnStartAgent(t, b, 0, crash.Listen)
		run := tnStart(t, &tailnet.Source{LocalAPI: c.LocalClient, Dial: c.Server.Dial, Refresh: time.Hour})
		_, i := run.wait(t, 0, wait, "killed up", tnDraining(b, false))
		time.Sleep(200 * time.Millisecond)
		crash.crash()
		first.stop() // its Run ends with the listener: nothing more is served
		time.Sleep(2 * time.Second)
		agent := tnStartAgent(t, b, 0, nil)
		j := tnPushed(t, run, i, b, agent)
		tnCheckKept(t, run, i, j, b, "through the agent's restart")
	})

	// The builder reboots: its node goes offline, comes back online (a new
	// tailscaled process, same node), and its agent starts a while later.
	t.Run("builder-rebooted", func(t *testing.T) {
		b := tn.AddRestartableNode(t, "reboot", tailnettest.TagBuilder)
		tn.WaitPeer(t, c, b)
		tn.WaitPeer(t, b, c)
		tnStartAgent(t, b, 0, nil)
		run := tnStart(t, &tailnet.Source{LocalAPI: c.LocalClient, Dial: c.Server.Dial, Refresh: time.Hour})
		_, i := run.wait(t, 0, wait, "reboot up", tnDraining(b, false))
		nb := tn.Restart(t, b, func() {
			_, i = run.wait(t, i, wait, "reboot gone while offline", func(s discover.Snapshot) bool { return s.Err == nil && !tnHas(b)(s) })
		})
		tn.WaitPeer(t, nb, c)
		_, i = run.wait(t, i, wait, "reboot online, no agent yet", tnNoAdvert(nb))
		time.Sleep(time.Second)
		agent := tnStartAgent(t, nb, 0, nil)
		// In-process, the client's WireGuard session with the old process
		// can keep the new one unreachable for ~10 s (see BENCHMARKS.md).
		_, i = run.wait(t, i, tailnettest.Timeout, "reboot with its advert", tnDraining(nb, false))
		tnPushed(t, run, i, nb, agent)
	})

	// tailscaled on the laptop restarts: the LocalAPI goes away and comes
	// back, every connection through it dies. The source reconnects, the
	// builder is never lost (error snapshots while down keep the last
	// set), and its agent is long-polled again.
	t.Run("laptop-tailscaled-restarted", func(t *testing.T) {
		b := tn.AddNode(t, "steady", tailnettest.TagBuilder)
		laptop := tn.AddRestartableNode(t, "laptop", tailnettest.TagClient)
		tn.WaitPeer(t, laptop, b)
		tn.WaitPeer(t, b, laptop)
		agent := tnStartAgent(t, b, 0, nil)
		sys := &tnSystemTailscaled{node: laptop}
		run := tnStart(t, &tailnet.Source{LocalAPI: sys, Dial: sys.Dial, Refresh: time.Hour})
		_, i := run.wait(t, 0, wait, "steady up", tnDraining(b, false))
		time.Sleep(200 * time.Millisecond)
		nl := tn.Restart(t, laptop, func() {
			sys.set(nil)
			run.wait(t, i, wait, "the source down", func(s discover.Snapshot) bool { return s.Err != nil })
		})
		sys.set(nl)
		tn.WaitPeer(t, b, nl) // the agent's WhoIs knows the laptop again
		_, j := run.wait(t, i, wait, "steady after the restart", tnDraining(b, false))
		j = tnPushed(t, run, j, b, agent)
		tnCheckKept(t, run, i, j, b, "through the laptop's tailscaled restart")
	})

	// The laptop's network goes away and comes back (suspend and resume):
	// every tailnet connection dies, nothing answers for a while; the
	// builder keeps its advert throughout, and its agent is long-polled
	// again once the network is back.
	t.Run("laptop-network-away-and-back", func(t *testing.T) {
		b := tn.AddNode(t, "resume", tailnettest.TagBuilder)
		tn.WaitPeer(t, c, b)
		tn.WaitPeer(t, b, c)
		agent := tnStartAgent(t, b, 0, nil)
		link := &tnLink{dial: c.Server.Dial}
		run := tnStart(t, &tailnet.Source{LocalAPI: c.LocalClient, Dial: link.Dial, Refresh: time.Hour, FetchTimeout: 500 * time.Millisecond})
		_, i := run.wait(t, 0, wait, "resume up", tnDraining(b, false))
		time.Sleep(200 * time.Millisecond)
		link.setDown(true)
		time.Sleep(3 * time.Second)
		link.setDown(false)
		j := tnPushed(t, run, i, b, agent)
		tnCheckKept(t, run, i, j, b, "through the network outage")
	})
}

// tnSystemTailscaled stands for the system tailscaled at its fixed socket:
// the LocalAPI and the tailnet of whichever node runs now (nil: none,
// tailscaled is restarting and its socket refuses connections). Setting
// nil ends the IPN bus streams, as tailscaled's exit closes its socket (a
// closed tsnet server leaves them open: a harness artefact).
type tnSystemTailscaled struct {
	mu       sync.Mutex
	node     *tailnettest.Node
	watchers []*local.IPNBusWatcher
}

func (s *tnSystemTailscaled) set(n *tailnettest.Node) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.node = n
	if n == nil {
		for _, w := range s.watchers {
			w.Close()
		}
		s.watchers = nil
	}
}

func (s *tnSystemTailscaled) get() (*tailnettest.Node, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.node == nil {
		return nil, errors.New("dial unix /var/run/tailscale/tailscaled.sock: connect: connection refused (test: tailscaled restarting)")
	}
	return s.node, nil
}

func (s *tnSystemTailscaled) WatchIPNBus(ctx context.Context, mask ipn.NotifyWatchOpt) (*local.IPNBusWatcher, error) {
	n, err := s.get()
	if err != nil {
		return nil, err
	}
	w, err := n.LocalClient.WatchIPNBus(ctx, mask)
	if err == nil {
		s.mu.Lock()
		s.watchers = append(s.watchers, w)
		s.mu.Unlock()
	}
	return w, err
}

func (s *tnSystemTailscaled) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	n, err := s.get()
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: errors.New("network is unreachable (test: tailscaled restarting)")}
	}
	return n.Server.Dial(ctx, network, addr)
}

// tnLink is a fake for a fault the in-process tailnet cannot produce: the
// laptop's network going away (suspend, a dead Wi-Fi). While down, every
// connection it made is cut and new ones get no answer until their
// deadline, as through a link that drops every packet.
type tnLink struct {
	mu    sync.Mutex
	down  bool
	conns []net.Conn
	dial  func(ctx context.Context, network, addr string) (net.Conn, error)
}

func (l *tnLink) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	l.mu.Lock()
	down := l.down
	l.mu.Unlock()
	if down {
		<-ctx.Done()
		return nil, &net.OpError{Op: "dial", Net: network, Err: ctx.Err()}
	}
	c, err := l.dial(ctx, network, addr)
	if err == nil {
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
	}
	return c, err
}

func (l *tnLink) setDown(down bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.down = down
	if down {
		for _, c := range l.conns {
			c.Close()
		}
		l.conns = nil
	}
}
