package tailnet_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"tailscale.com/ipn"

	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/nixrb-discover/nixrb-discover/internal/clienttest"
	"github.com/nixrb-discover/nixrb-discover/internal/netnstest"
	"github.com/nixrb-discover/nixrb-discover/internal/nixtest"
	"github.com/nixrb-discover/nixrb-discover/internal/tailnettest"
	"github.com/nixrb-discover/nixrb-discover/wire"
)

// BenchmarkTailnetIdleScale runs the real client binary, as a process of
// its own, on a tailnet of 1,000 peers as the client sees them: 100
// tagged builders that never answer, 3 real builders (tsnet nodes running
// the real agent in front of a real sshd + nix-daemon) and the rest
// untagged. The client's "tailscaled" is an in-process tsnet node: the
// binary reaches its LocalAPI through --tailscale-socket (a unix socket
// forwarding to the node's loopback LocalAPI) and reaches the peers from
// a network namespace where tailnet addresses behave as behind
// tailscaled's TUN (the real builders' SSH and advert ports are carried
// over the tailnet by the node; packets to every other tailnet address
// are dropped). The binary is unmodified and runs with its defaults.
//
// It reports:
//
//	ms/startup-join  client started → every real builder in the file
//	ms/join-p50      control marks a real builder online → its line in the file (median; also ms/join-max)
//	cpu%             the client's CPU (utime+stime from /proc) over a quiet window after settling
//	rss-MiB          its RSS at the end of the window (rss-peak-MiB: VmHWM, the peak since start)
//	rewrites         machines file rewrites in the window (mtime changes; goal 0)
//
// Targets: join < 500 ms, CPU < 0.5 %, RSS < 30 MiB. It runs once per
// benchmark run whatever -benchtime; repeat with -count. -short (or
// NIXRB_SCALE_PEERS=100) runs a smaller tailnet and shorter windows as
// a sanity check; NIXRB_SCALE_LOG=FILE keeps the client's log (run with
// GODEBUG=gctrace=1 to see its heap).
//
//	go test -run '^$' -bench BenchmarkTailnetIdleScale -benchtime 1x -timeout 20m ./discover
func BenchmarkTailnetIdleScale(b *testing.B) {
	nixtest.RequireTools(b)
	netnstest.RequireRoot(b)
	peers, joins := 1000, 5
	settle, window := 20*time.Second, 60*time.Second
	if testing.Short() {
		peers, joins = 100, 3
		settle, window = 5*time.Second, 15*time.Second
	}
	if v := os.Getenv("NIXRB_SCALE_PEERS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 20 {
			b.Fatalf("NIXRB_SCALE_PEERS=%q: want a number ≥ 20", v)
		}
		peers = n
	}
	const nReal = 3
	dead := peers / 10
	untagged := peers - dead - nReal

	dir := nixtest.WorkDir(b, "scaleidle")
	bin := clienttest.BuildBinary(b, dir)
	id, err := discover.LoadOrCreateIdentity(filepath.Join(dir, "id_ed25519"), "client")
	if err != nil {
		b.Fatal(err)
	}
	// Unix socket paths are short (108 bytes): keep them in a /tmp dir.
	sockDir, err := os.MkdirTemp("", "nrbsi")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(sockDir) })

	tn := tailnettest.New(b)
	tn.AddFakePeers(b, untagged)
	tn.AddFakePeers(b, dead, tailnettest.TagBuilder)
	var nodes []*tailnettest.Node
	for i := range nReal {
		tb := startTailnetBuilder(b, tn, fmt.Sprintf("real%d", i), []string{tailnettest.TagBuilder},
			nixtest.BuilderOptions{Version: nixtest.V28, AuthorizedKeys: []string{id.AuthorizedKey}})
		nodes = append(nodes, tb.node)
	}
	cn := tn.AddNode(b, "laptop", tailnettest.TagClient)
	for _, n := range nodes {
		tn.WaitPeer(b, cn, n)
		tn.WaitPeer(b, n, cn) // the agents' WhoIs knows the client
	}
	bus := watchBus(b, cn)
	tsSock := filepath.Join(sockDir, "tailscaled.sock")
	cn.ServeLocalAPI(b, tsSock)
	h := netnstest.New(b).AddHost(b, "laptop")
	cn.RouteTailnet(b, h, nodes, 22, wire.DefaultAdvertPort)

	machines := filepath.Join(dir, "machines")
	statusSock := filepath.Join(sockDir, "status.sock")
	logPath := filepath.Join(dir, "client.log")
	logf, err := os.Create(logPath)
	if err != nil {
		b.Fatal(err)
	}
	defer logf.Close()
	cmd := h.Command(bin, "client", "--tailscale-socket", tsSock, "--ssh-key", id.Path,
		"--machines", machines, "--socket", statusSock, "--log-level", "info")
	cmd.Stdout, cmd.Stderr = logf, logf
	// NIXRB_SCALE_CLIENT_ENV adds environment to the client alone (e.g.
	// "GODEBUG=gctrace=1 GOMEMLIMIT=16MiB"), not to this test process.
	cmd.Env = append(os.Environ(), strings.Fields(os.Getenv("NIXRB_SCALE_CLIENT_ENV"))...)
	fail := func(format string, args ...any) {
		b.Helper()
		log, _ := os.ReadFile(logPath)
		b.Fatalf("%s\nclient log:\n%s", fmt.Sprintf(format, args...), tail(log, 40))
	}
	start := time.Now()
	if err := h.Start(b, cmd); err != nil {
		b.Fatal(err)
	}
	pid := cmd.Process.Pid
	clienttest.WaitFile(b, machines, "listed every real builder", func(f string) bool {
		for _, n := range nodes {
			if !strings.Contains(f, "@"+n.FQDN+" ") {
				return false
			}
		}
		return true
	})
	startup := time.Since(start)
	// `ip netns exec` execs the client: same PID, now the binary.
	if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(comm)) != "nixrb-discover" {
		fail("process %d is %q, not the client", pid, comm)
	}

	var lat []time.Duration
	for i := range joins {
		n := nodes[i%nReal]
		line := "@" + n.FQDN + " "
		tn.SetOnline(b, n, false)
		clienttest.WaitFile(b, machines, "dropped "+n.Name+" marked offline", clienttest.NotContains(line))
		time.Sleep(500 * time.Millisecond) // the client has settled on the change
		t0 := time.Now()
		tn.SetOnline(b, n, true)
		clienttest.WaitFile(b, machines, "took "+n.Name+" back", clienttest.Contains(line))
		lat = append(lat, time.Since(t0))
	}

	time.Sleep(settle)
	fi, err := os.Stat(machines)
	if err != nil {
		fail("machines file: %v", err)
	}
	logStart, _ := logf.Seek(0, io.SeekCurrent)
	n0, p0 := bus.counts()
	t0, _ := clienttest.CPUTicks(b, pid)
	began := time.Now()
	b.ResetTimer()
	rewrites, last := 0, fi.ModTime()
	for time.Since(began) < window {
		time.Sleep(250 * time.Millisecond)
		if fi, err := os.Stat(machines); err == nil && !fi.ModTime().Equal(last) {
			rewrites++
			last = fi.ModTime()
		}
	}
	b.StopTimer()
	t1, rss := clienttest.CPUTicks(b, pid)
	elapsed := time.Since(began)
	hwm := procStatusKiB(pid, "VmHWM")
	anon, file := procStatusKiB(pid, "RssAnon"), procStatusKiB(pid, "RssFile")
	n1, p1 := bus.counts()
	if keep := os.Getenv("NIXRB_SCALE_LOG"); keep != "" {
		if log, err := os.ReadFile(logPath); err == nil {
			if err := os.WriteFile(keep, log, 0o644); err != nil {
				b.Fatal(err)
			}
		}
	}
	// What the client logged while it should have been quiet.
	if log, err := os.ReadFile(logPath); err == nil && int64(len(log)) > logStart {
		b.Logf("client log during the quiet window (last lines):\n%s", tail(log[logStart:], 30))
	}

	// The client knows every tagged builder: the real ones in the file,
	// the dead ones out of it.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	st, err := discover.FetchStatus(ctx, statusSock)
	cancel()
	if err != nil {
		fail("client status: %v", err)
	}
	states := map[string]int{}
	inFile := 0
	for _, bs := range st.Builders {
		states[string(bs.State)]++
		if bs.InFile {
			inFile++
		}
	}
	if len(st.Builders) != dead+nReal || inFile != nReal {
		fail("client knows %d builders (%d in the file), want %d (%d): %v", len(st.Builders), inFile, dead+nReal, nReal, states)
	}

	final, _ := os.ReadFile(machines)
	for _, n := range nodes {
		if !strings.Contains(string(final), "@"+n.FQDN+" ") {
			fail("real builder %s is not in the file at the end:\n%s", n.Name, final)
		}
	}
	if got := strings.Count(string(final), "ssh-ng://"); got != nReal {
		fail("the file has %d builders, want the %d real ones:\n%s", got, nReal, final)
	}

	const hz = 100 // USER_HZ on Linux
	cpu := float64(t1-t0) / hz / elapsed.Seconds() * 100
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	med, _ := clienttest.Quantiles(lat)
	b.ReportMetric(ms(startup), "ms/startup-join")
	b.ReportMetric(ms(med), "ms/join-p50")
	b.ReportMetric(ms(slicesMax(lat)), "ms/join-max")
	b.ReportMetric(cpu, "cpu%")
	b.ReportMetric(float64(rss)/1024, "rss-MiB")
	b.ReportMetric(float64(hwm)/1024, "rss-peak-MiB")
	b.ReportMetric(float64(anon)/1024, "rss-anon-MiB")
	b.ReportMetric(float64(file)/1024, "rss-file-MiB")
	b.ReportMetric(float64(rewrites), "rewrites")
	b.ReportMetric(float64(n1-n0)/elapsed.Minutes(), "bus-notes/min")
	b.ReportMetric(float64(p1-p0)/elapsed.Minutes(), "bus-peers/min")
	b.Logf("tailnet of %d peers (%d dead tagged builders, %d real): startup join %v, join p50 %v (n=%d, max %v); "+
		"over %v quiet after %v settling: client CPU %.3f%% of one core (%d ticks), RSS %.1f MiB (peak %.1f; anonymous %.1f, file %.1f), rewrites %d; builders by state %v; the IPN bus carried %d peer changes in %d notifications",
		peers, dead, nReal, startup.Round(time.Millisecond), med.Round(time.Millisecond), len(lat), slicesMax(lat).Round(time.Millisecond),
		elapsed.Round(time.Second), settle, cpu, t1-t0, float64(rss)/1024, float64(hwm)/1024, float64(anon)/1024, float64(file)/1024, rewrites, states, p1-p0, n1-n0)
}

// busCount counts what the IPN bus of a node delivers with the mask the
// tailnet source uses: the work the idle client is handed.
type busCount struct {
	mu           sync.Mutex
	notes, peers int
}

// watchBus counts node's IPN bus notifications (with peer changes) until
// the benchmark ends.
func watchBus(tb testing.TB, node *tailnettest.Node) *busCount {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w, err := node.LocalClient.WatchIPNBus(ctx, ipn.NotifyPeerChanges|ipn.NotifyPeerPatches)
	if err != nil {
		cancel()
		tb.Fatalf("watch the IPN bus: %v", err)
	}
	c := &busCount{}
	done := make(chan struct{})
	tb.Cleanup(func() { cancel(); w.Close(); <-done })
	go func() {
		defer close(done)
		for {
			n, err := w.Next()
			if err != nil {
				return
			}
			if k := len(n.PeersChanged) + len(n.PeerChangedPatch) + len(n.PeersRemoved); k > 0 {
				c.mu.Lock()
				c.notes++
				c.peers += k
				c.mu.Unlock()
			}
		}
	}()
	return c
}

func (c *busCount) counts() (notes, peers int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.notes, c.peers
}

// procStatusKiB reads one "Name: N kB" field of /proc/PID/status (0 if absent).
func procStatusKiB(pid int, name string) int64 {
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(status), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == name+":" {
			v, _ := strconv.ParseInt(f[1], 10, 64)
			return v
		}
	}
	return 0
}

// tail is the last n lines of b.
func tail(b []byte, n int) []byte {
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return bytes.Join(lines, []byte("\n"))
}
