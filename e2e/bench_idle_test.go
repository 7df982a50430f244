//go:build linux

package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/internal/clienttest"
	"github.com/nixrb-discover/nixrb-discover/internal/netnstest"
	"github.com/nixrb-discover/nixrb-discover/internal/nixtest"
)

// BenchmarkIdleFleet runs the real binaries over mDNS between namespaces:
// N builders (sshd + signed agent each) and one client, all healthy, and
// reports the client's and one agent's CPU share and RSS over a quiet
// minute, and how often the machines file was rewritten (goal 0).
//
//	go test -run '^$' -bench BenchmarkIdleFleet -benchtime 1x ./e2e
func BenchmarkIdleFleet(b *testing.B) {
	nixtest.RequireTools(b)
	netnstest.RequireRoot(b)
	for _, n := range []int{3, 10} {
		b.Run(fmt.Sprintf("builders=%d", n), func(b *testing.B) { idleFleet(b, n) })
	}
}

func idleFleet(b *testing.B, n int) {
	bin := buildBinaryTB(b)
	topo := netnstest.New(b)
	laptop := newHostTB(b, topo, "laptop")
	fleet := filepath.Join(laptop.dir, "fleet")
	if out, err := exec.Command(bin, "keygen", "--out", fleet).CombinedOutput(); err != nil {
		b.Fatalf("keygen: %v %s", err, out)
	}
	priv, _ := os.ReadFile(fleet)
	clientKey := filepath.Join(laptop.dir, "id_ed25519")
	exec.Command(bin, "client", "--once", "--tailnet=false", "--static", "/dev/null", "--ssh-key", clientKey, "--machines", filepath.Join(laptop.dir, "first")).Run()
	clientPub, _ := os.ReadFile(clientKey + ".pub")
	machines := filepath.Join(laptop.dir, "machines")
	var agent *exec.Cmd
	for i := range n {
		h := newHostTB(b, topo, fmt.Sprintf("b%d", i))
		signKey := filepath.Join(h.dir, "fleet")
		if err := os.WriteFile(signKey, priv, 0o600); err != nil {
			b.Fatal(err)
		}
		hostKey := h.startSSHD(b, strings.TrimSpace(string(clientPub)))
		agent = h.start(b, "advertise", bin, "advertise", "--tailnet=false", "--mdns", "--mdns-iface", netnstest.HostIface,
			"--sign-key", signKey, "--ssh-user", "root", "--ssh-host-key", hostKey, "--hostname", fmt.Sprintf("b%d", i), "--log-level", "warn")
	}
	// Info: each join and leave is logged (a handful of lines at steady
	// state), so that a rewrite can be explained.
	client := laptop.start(b, "client", bin, "client", "--tailnet=false", "--mdns", "--mdns-iface", netnstest.HostIface,
		"--trust-key", fleet+".pub", "--ssh-key", clientKey, "--machines", machines, "--socket", filepath.Join(laptop.dir, "sock"), "--log-level", "info")
	waitFor(b, 60*time.Second, "all builders in the file", func() bool {
		data, _ := os.ReadFile(machines)
		return strings.Count(string(data), "ssh-ng://") == n
	})
	settle, window := 20*time.Second, 60*time.Second
	if testing.Short() {
		settle, window = 5*time.Second, 15*time.Second
	}
	// NIXRB_IDLE_WINDOW sets the quiet window, e.g. 1h for rewrites per
	// hour.
	if w, err := time.ParseDuration(os.Getenv("NIXRB_IDLE_WINDOW")); err == nil && w > 0 {
		window = w
	}
	time.Sleep(settle)
	c0, _ := clienttest.CPUTicks(b, client.Process.Pid)
	a0, _ := clienttest.CPUTicks(b, agent.Process.Pid)
	// Every write replaces the file (a new inode, a new mtime): count them.
	stopCount, counted := make(chan struct{}), make(chan int, 1)
	go func() {
		n := 0
		last, _ := os.Stat(machines)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stopCount:
				counted <- n
				return
			case <-tick.C:
			}
			fi, err := os.Stat(machines)
			if err == nil && last != nil && (!os.SameFile(fi, last) || !fi.ModTime().Equal(last.ModTime())) {
				n++
			}
			if err == nil {
				last = fi
			}
		}
	}()
	b.ResetTimer()
	time.Sleep(window)
	b.StopTimer()
	c1, crss := clienttest.CPUTicks(b, client.Process.Pid)
	a1, arss := clienttest.CPUTicks(b, agent.Process.Pid)
	close(stopCount)
	rewrites := float64(<-counted)
	const hz = 100 // USER_HZ
	ccpu := float64(c1-c0) / hz / window.Seconds() * 100
	acpu := float64(a1-a0) / hz / window.Seconds() * 100
	b.ReportMetric(ccpu, "client-cpu%")
	b.ReportMetric(float64(crss)/1024, "client-rss-MiB")
	b.ReportMetric(acpu, "agent-cpu%")
	b.ReportMetric(float64(arss)/1024, "agent-rss-MiB")
	b.ReportMetric(rewrites, "rewrites")
	if rewrites > 0 {
		log, _ := os.ReadFile(filepath.Join(laptop.dir, "client.log"))
		for _, l := range strings.Split(string(log), "\n") {
			if strings.Contains(l, "leaves") || strings.Contains(l, "joins") || strings.Contains(l, "lost") || strings.Contains(l, "WARN") {
				b.Logf("client: %s", l)
			}
		}
	}
	b.Logf("%d builders, %v quiet: client CPU %.3f%% RSS %.1f MiB; one agent CPU %.3f%% RSS %.1f MiB; machines file rewrites: %.0f",
		n, window, ccpu, float64(crss)/1024, acpu, float64(arss)/1024, rewrites)
}
