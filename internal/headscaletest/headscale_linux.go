package headscaletest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"tailscale.com/ipn/ipnstate"
	"tailscale.com/net/netns"
	"tailscale.com/tailcfg"
	"tailscale.com/tsnet"
	"tailscale.com/tstest/integration"
	"tailscale.com/types/logger"

	"github.com/nixrb-discover/nixrb-discover/internal/tailnettest"
)

// BaseDomain is the MagicDNS base domain of every test headscale: a node
// called b1 is b1.hs-test.example.
const BaseDomain = "hs-test.example"

// User owns the untagged nodes; in a policy it is "owner@".
const User = "owner"

// Tags the default policy knows, and the app capability it grants.
const (
	TagBuilder = tailnettest.TagBuilder
	TagClient  = tailnettest.TagClient
	// TagRetired is a tag with no meaning to nixrb-discover: headscale
	// (>= 0.28) cannot untag a tagged node, only retag it.
	TagRetired = "tag:retired"
	// CapNix is the peer capability the default policy grants nodes
	// tagged TagClient on nodes tagged TagBuilder (a headscale >= 0.29
	// `app` grant; the name must look like domain/path).
	CapNix = tailcfg.PeerCapability("nixrb-discover.example/cap/nix")
)

// Timeout bounds every wait and every CLI call in this package.
const Timeout = 30 * time.Second

// DefaultPolicy lets every node reach every other (an `ip` grant), lets
// the owner hand out the three tags, and grants CapNix from TagClient
// nodes to TagBuilder nodes.
const DefaultPolicy = `{
  "tagOwners": {
    "tag:nix-builder": ["owner@"],
    "tag:nix-client": ["owner@"],
    "tag:retired": ["owner@"]
  },
  "grants": [
    {"src": ["*"], "dst": ["*"], "ip": ["*"]},
    {"src": ["tag:nix-client"], "dst": ["tag:nix-builder"], "app": {"nixrb-discover.example/cap/nix": [{}]}}
  ]
}
`

// NoCapPolicy is DefaultPolicy without the CapNix grant.
const NoCapPolicy = `{
  "tagOwners": {
    "tag:nix-builder": ["owner@"],
    "tag:nix-client": ["owner@"],
    "tag:retired": ["owner@"]
  },
  "grants": [
    {"src": ["*"], "dst": ["*"], "ip": ["*"]}
  ]
}
`

// Options configure Start.
type Options struct {
	// Policy is the HuJSON policy file; "" means DefaultPolicy.
	Policy string
}

// Server is one running headscale.
type Server struct {
	// URL is its server_url (http on 127.0.0.1).
	URL string
	// Bin is the headscale binary.
	Bin string

	config, policy, log string
	cmd                 *exec.Cmd
	user                uint64
	derpMap             *tailcfg.DERPMap
}

// Start builds headscale if needed (see [Prepare]), starts it with a
// fresh SQLite database, noise key and policy file under tb.TempDir(),
// DERP and STUN on loopback, waits until it answers /health and creates
// [User]. It is stopped (SIGTERM, then SIGKILL, by PID) in tb.Cleanup.
func Start(tb testing.TB, opts Options) *Server {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), LockWait)
	defer cancel()
	bin, err := Prepare(ctx, tb.Logf)
	if err != nil {
		tb.Fatalf("headscaletest: %v", err)
	}
	netns.SetEnabled(false)
	tb.Cleanup(func() { netns.SetEnabled(true) })

	dir := tb.TempDir()
	// The CLI's unix socket path must stay short (108 bytes).
	sockDir, err := os.MkdirTemp("", "hs-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(sockDir) })

	derpMap := integration.RunDERPAndSTUN(tb, logger.Discard, "127.0.0.1")
	derpPath := filepath.Join(dir, "derp.yaml")
	if err := os.WriteFile(derpPath, []byte(derpYAML(derpMap)), 0o600); err != nil {
		tb.Fatal(err)
	}
	policy := opts.Policy
	if policy == "" {
		policy = DefaultPolicy
	}
	s := &Server{
		Bin:     bin,
		config:  filepath.Join(dir, "config.yaml"),
		policy:  filepath.Join(dir, "policy.hujson"),
		log:     filepath.Join(dir, "headscale.log"),
		derpMap: derpMap,
	}
	if err := os.WriteFile(s.policy, []byte(policy), 0o600); err != nil {
		tb.Fatal(err)
	}
	ports := freePorts(tb, 3)
	s.URL = "http://127.0.0.1:" + strconv.Itoa(ports[0])
	cfg := fmt.Sprintf(configTemplate, s.URL, ports[0], ports[1], ports[2],
		filepath.Join(dir, "noise_private.key"), derpPath,
		filepath.Join(dir, "db.sqlite"), s.policy, BaseDomain,
		filepath.Join(sockDir, "headscale.sock"))
	if err := os.WriteFile(s.config, []byte(cfg), 0o600); err != nil {
		tb.Fatal(err)
	}
	logf, err := os.Create(s.log)
	if err != nil {
		tb.Fatal(err)
	}
	s.cmd = exec.Command(bin, "serve", "-c", s.config)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		logf.Close()
		tb.Fatalf("headscaletest: start %s: %v", bin, err)
	}
	exited := make(chan struct{})
	go func() { s.cmd.Wait(); logf.Close(); close(exited) }()
	tb.Cleanup(func() {
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			s.cmd.Process.Kill()
			<-exited
		}
	})
	s.waitHealthy(tb, exited)
	var u struct {
		ID uint64 `json:"id"`
	}
	s.CLIJSON(tb, &u, "users", "create", User)
	s.user = u.ID
	return s
}

// configTemplate is headscale's config: server_url and every listener on
// loopback, no TLS, our DERP map only, no update check, no logtail.
const configTemplate = `server_url: %s
listen_addr: 127.0.0.1:%d
metrics_listen_addr: 127.0.0.1:%d
grpc_listen_addr: 127.0.0.1:%d
grpc_allow_insecure: false
noise:
  private_key_path: %s
prefixes:
  v4: 100.64.0.0/10
  v6: fd7a:115c:a1e0::/48
  allocation: sequential
derp:
  server:
    enabled: false
  urls: []
  paths:
    - %s
  auto_update_enabled: false
disable_check_updates: true
database:
  type: sqlite
  sqlite:
    path: %s
    write_ahead_log: true
log:
  level: info
  format: text
policy:
  mode: file
  path: %s
dns:
  magic_dns: true
  base_domain: %s
  override_local_dns: false
  nameservers:
    global: []
unix_socket: %s
unix_socket_permission: "0770"
logtail:
  enabled: false
`

// derpYAML writes m in the YAML headscale's derp.paths reads (yaml.v3
// into tailcfg.DERPMap: field names lowercased).
func derpYAML(m *tailcfg.DERPMap) string {
	var b strings.Builder
	b.WriteString("regions:\n")
	for id, r := range m.Regions {
		fmt.Fprintf(&b, "  %d:\n    regionid: %d\n    regioncode: %s\n    regionname: %s\n    nodes:\n", id, r.RegionID, r.RegionCode, r.RegionCode)
		for _, n := range r.Nodes {
			fmt.Fprintf(&b, "      - name: %q\n        regionid: %d\n        hostname: %q\n        ipv4: %q\n        ipv6: %q\n"+
				"        stunport: %d\n        derpport: %d\n        insecurefortests: %t\n        stuntestip: %q\n",
				n.Name, n.RegionID, n.HostName, n.IPv4, n.IPv6, n.STUNPort, n.DERPPort, n.InsecureForTests, n.STUNTestIP)
		}
	}
	return b.String()
}

// freePorts returns n distinct free TCP ports on 127.0.0.1.
func freePorts(tb testing.TB, n int) []int {
	tb.Helper()
	var lns []net.Listener
	var out []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		lns = append(lns, ln)
		out = append(out, ln.Addr().(*net.TCPAddr).Port)
	}
	for _, ln := range lns {
		ln.Close()
	}
	return out
}

// waitHealthy waits until headscale answers GET /health with 200 and its
// CLI socket exists.
func (s *Server) waitHealthy(tb testing.TB, exited <-chan struct{}) {
	tb.Helper()
	deadline := time.After(Timeout)
	hc := &http.Client{Timeout: 2 * time.Second}
	for {
		resp, err := hc.Get(s.URL + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-exited:
			tb.Fatalf("headscaletest: headscale exited at start:\n%s", s.Log())
		case <-deadline:
			tb.Fatalf("headscaletest: headscale not healthy within %v (last: %v):\n%s", Timeout, err, s.Log())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Log returns the last 8 KiB of headscale's output.
func (s *Server) Log() string {
	b, _ := os.ReadFile(s.log)
	return tail(string(b), 8<<10)
}

// CLI runs `headscale -c CONFIG args...` against the running server and
// returns its stdout; a failure fails the test.
func (s *Server) CLI(tb testing.TB, args ...string) []byte {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.Bin, append([]string{"-c", s.config}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		tb.Fatalf("headscaletest: headscale %s: %v\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.Bytes()
}

// CLIJSON runs CLI with `-o json` and decodes its answer into v.
func (s *Server) CLIJSON(tb testing.TB, v any, args ...string) {
	tb.Helper()
	out := s.CLI(tb, append(args, "-o", "json")...)
	if err := json.Unmarshal(out, v); err != nil {
		tb.Fatalf("headscaletest: headscale %s: decode %q: %v", strings.Join(args, " "), out, err)
	}
}

// AuthKey creates a single-use pre-auth key valid for an hour: with tags,
// a tagged key (the node it registers is owned by the tags, shown as the
// tagged-devices user); without, a key of [User].
func (s *Server) AuthKey(tb testing.TB, tags ...string) string {
	tb.Helper()
	args := []string{"preauthkeys", "create", "--expiration", "1h"}
	if len(tags) > 0 {
		args = append(args, "--tags", strings.Join(tags, ","))
	} else {
		args = append(args, "--user", strconv.FormatUint(s.user, 10))
	}
	var k struct {
		Key string `json:"key"`
	}
	s.CLIJSON(tb, &k, args...)
	if k.Key == "" {
		tb.Fatalf("headscaletest: preauthkeys create %v: no key", tags)
	}
	return k.Key
}

// AddNode joins a tsnet node called name with a fresh pre-auth key (tagged
// with tags, or [User]'s when none) and waits until it is Running and has
// heard from its home DERP. It is closed in tb.Cleanup.
func (s *Server) AddNode(tb testing.TB, name string, tags ...string) *tailnettest.Node {
	tb.Helper()
	ts := &tsnet.Server{
		Dir:        filepath.Join(tb.TempDir(), name),
		Hostname:   name,
		ControlURL: s.URL,
		AuthKey:    s.AuthKey(tb, tags...),
		Logf:       logger.Discard,
		UserLogf:   logger.Discard,
	}
	return tailnettest.Join(tb, ts)
}

// NodeID is node's headscale ID, the number `headscale nodes` takes
// (headscale's stable node ID is that number in decimal).
func NodeID(tb testing.TB, node *tailnettest.Node) uint64 {
	tb.Helper()
	id, err := strconv.ParseUint(string(node.StableID), 10, 64)
	if err != nil {
		tb.Fatalf("headscaletest: node %s: stable ID %q is not a headscale node ID", node.Name, node.StableID)
	}
	return id
}

// Node is a node as `headscale nodes list` shows it.
type Node struct {
	ID        uint64   `json:"id"`
	Name      string   `json:"name"`
	GivenName string   `json:"given_name"`
	NodeKey   string   `json:"node_key"`
	Tags      []string `json:"tags"`
	Online    bool     `json:"online"`
	User      struct {
		Name string `json:"name"`
	} `json:"user"`
}

// Nodes lists every node headscale knows.
func (s *Server) Nodes(tb testing.TB) []Node {
	tb.Helper()
	var ns []Node
	s.CLIJSON(tb, &ns, "nodes", "list")
	return ns
}

// SetTags replaces node's tags at the server (`headscale nodes tag`); at
// least one tag: headscale keeps a tagged node tagged.
func (s *Server) SetTags(tb testing.TB, node *tailnettest.Node, tags ...string) {
	tb.Helper()
	s.CLI(tb, "nodes", "tag", "-i", strconv.FormatUint(NodeID(tb, node), 10), "-t", strings.Join(tags, ","))
}

// Delete removes node at the server (`headscale nodes delete --force`).
func (s *Server) Delete(tb testing.TB, node *tailnettest.Node) {
	tb.Helper()
	s.CLI(tb, "nodes", "delete", "-i", strconv.FormatUint(NodeID(tb, node), 10), "--force")
}

// SetPolicy checks policy with `headscale policy check`, writes it over
// the policy file and sends headscale SIGHUP, which reloads it and pushes
// the change to every node. Effects reach nodes asynchronously: wait for
// them.
func (s *Server) SetPolicy(tb testing.TB, policy string) {
	tb.Helper()
	tmp := s.policy + ".new"
	if err := os.WriteFile(tmp, []byte(policy), 0o600); err != nil {
		tb.Fatal(err)
	}
	s.CLI(tb, "policy", "check", "-f", tmp)
	if err := os.Rename(tmp, s.policy); err != nil {
		tb.Fatal(err)
	}
	if err := s.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		tb.Fatalf("headscaletest: SIGHUP headscale: %v", err)
	}
}

// WaitPeer waits until from's LocalAPI status shows peer online.
func (s *Server) WaitPeer(tb testing.TB, from, peer *tailnettest.Node) *ipnstate.PeerStatus {
	tb.Helper()
	return s.WaitPeerStatus(tb, from, peer, "online", func(ps *ipnstate.PeerStatus) bool { return ps.Online })
}

// WaitPeerStatus waits until from's LocalAPI status shows peer in a state
// ok accepts (ps is nil while peer is not in from's netmap); what names
// the state for the failure message.
func (s *Server) WaitPeerStatus(tb testing.TB, from, peer *tailnettest.Node, what string, ok func(ps *ipnstate.PeerStatus) bool) *ipnstate.PeerStatus {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	for {
		st, err := from.LocalClient.Status(ctx)
		if err == nil {
			if ps := st.Peer[peer.Key]; ok(ps) {
				return ps
			}
		}
		select {
		case <-ctx.Done():
			tb.Fatalf("headscaletest: %s does not see %s %s within %v (last err %v)", from.Name, peer.Name, what, Timeout, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
