//go:build linux

package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/internal/netnstest"
	"github.com/nixrb-discover/nixrb-discover/internal/nixtest"
)

// TestAvahiSeesRealAdvert: `nixrb-discover advertise --mdns --mdns-iface X`
// (the built binary, facts from the real nix) is visible to Avahi's
// avahi-browse on another host, with the systems this machine's nix
// reports in its TXT record.
func TestAvahiSeesRealAdvert(t *testing.T) {
	nixtest.RequireTools(t)
	netnstest.RequireRoot(t)
	for _, bin := range []string{"avahi-daemon", "avahi-browse", "dbus-daemon"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed: apt-get install avahi-daemon avahi-utils dbus", bin)
		}
	}
	bin := buildBinary(t)
	topo := netnstest.New(t)
	b1, q := newHost(t, topo, "b1"), newHost(t, topo, "avahi")
	key := filepath.Join(b1.dir, "ssh_host_ed25519_key")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v %s", err, out)
	}
	b1.start(t, "advertise", bin, "advertise", "--tailnet=false", "--mdns", "--mdns-iface", netnstest.HostIface,
		"--ssh-host-key", key+".pub", "--hostname", "b1", "--ssh-port", "2222")

	tmpl, err := os.ReadFile("../advertise/testdata/mdns/avahi-daemon.conf")
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(q.dir, "avahi-daemon.conf")
	if err := os.WriteFile(conf, []byte(strings.ReplaceAll(string(tmpl), "@IFACE@", netnstest.HostIface)), 0o644); err != nil {
		t.Fatal(err)
	}
	script, _ := filepath.Abs("../advertise/testdata/mdns/avahi-browse.sh")
	cmd := q.Command("unshare", "-m", "--propagation", "private", "sh", script, conf, "_nix-builder._tcp")
	var out, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := q.Start(t, cmd); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	select {
	case err := <-waited:
		if err != nil {
			t.Fatalf("avahi-browse: %v\n%s\n%s", err, out.String(), stderr.String())
		}
	case <-time.After(40 * time.Second):
		t.Fatalf("avahi-browse did not finish\n%s", stderr.String())
	}

	nixOut, err := exec.Command("nix", "--extra-experimental-features", "nix-command", "show-config", "--json").Output()
	if err != nil {
		t.Fatalf("nix show-config: %v", err)
	}
	var conf2 map[string]struct{ Value any }
	json.Unmarshal(nixOut, &conf2)
	system, _ := conf2["system"].Value.(string)
	for _, line := range strings.Split(out.String(), "\n") {
		f := strings.SplitN(line, ";", 10)
		if len(f) == 10 && f[0] == "=" && f[2] == "IPv4" && f[3] == "b1" {
			if f[7] != b1.IP.String() || f[8] != "2222" {
				t.Errorf("avahi resolved b1 at %s:%s, want %s:2222", f[7], f[8], b1.IP)
			}
			if !strings.Contains(f[9], `"sy=`+system) {
				t.Errorf("avahi TXT lacks the real system %q: %s", system, f[9])
			}
			t.Logf("avahi-browse: %s", line)
			return
		}
	}
	t.Fatalf("avahi-browse did not resolve b1:\n%s\n%s", out.String(), stderr.String())
}
