package netnstest

import (
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestTopologyMulticast(t *testing.T) {
	RequireRoot(t)
	start := time.Now()
	topo := New(t)
	a := topo.AddHost(t, "a")
	b := topo.AddHost(t, "b")
	t.Logf("setup took %v", time.Since(start))

	group := &net.UDPAddr{IP: net.IPv4(224, 0, 0, 251), Port: 5353}
	got := make(chan string, 1)
	listening := make(chan error, 1)
	go func() {
		_ = b.Do(func() error {
			ifi, err := net.InterfaceByName(b.Iface)
			if err != nil {
				listening <- err
				return nil
			}
			c, err := net.ListenMulticastUDP("udp4", ifi, group)
			if err != nil {
				listening <- err
				return nil
			}
			defer c.Close()
			listening <- nil
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 1500)
			n, from, err := c.ReadFromUDP(buf)
			if err != nil {
				got <- "error: " + err.Error()
				return nil
			}
			got <- string(buf[:n]) + " from " + from.IP.String()
			return nil
		})
	}()
	if err := <-listening; err != nil {
		t.Fatalf("listen in b: %v", err)
	}
	err := a.Do(func() error {
		c, err := net.DialUDP("udp4", nil, group)
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("hello"))
		return err
	})
	if err != nil {
		t.Fatalf("send from a: %v", err)
	}
	select {
	case s := <-got:
		if want := "hello from " + a.IP.String(); s != want {
			t.Fatalf("b got %q, want %q", s, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no multicast packet within 5s")
	}

	out, err := a.Command("ip", "-o", "addr", "show", "dev", a.Iface).CombinedOutput()
	if err != nil || !strings.Contains(string(out), a.IP.String()) {
		t.Fatalf("Command ip addr in a: %v: %s", err, out)
	}
	if strings.Contains(string(out), "tentative") {
		t.Errorf("v6 address tentative although accept_dad=0: %s", out)
	}

	if err := a.LinkDown(); err != nil {
		t.Fatal(err)
	}
	if err := a.LinkUp(); err != nil {
		t.Fatal(err)
	}
	out, err = a.Command("ip", "route", "show", "224.0.0.0/4").CombinedOutput()
	if err != nil || !strings.Contains(string(out), a.Iface) {
		t.Fatalf("multicast route after LinkUp: %v: %s", err, out)
	}
}

func TestStartKilledAtCleanup(t *testing.T) {
	RequireRoot(t)
	topo := New(t)
	a := topo.AddHost(t, "a")
	var pid int
	t.Run("inner", func(t *testing.T) {
		cmd := a.Command("sleep", "60")
		if err := a.Start(t, cmd); err != nil {
			t.Fatal(err)
		}
		pid = cmd.Process.Pid
	})
	a.killProcs()
	if err := syscallKill0(pid); err == nil {
		t.Fatalf("process %d still alive after killProcs", pid)
	}
}

func syscallKill0(pid int) error { return unix.Kill(pid, 0) }
