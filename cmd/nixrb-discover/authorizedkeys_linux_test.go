package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/peterbourgon/ff/v3/ffcli"
	"golang.org/x/crypto/ssh"

	"github.com/nixrb-discover/nixrb-discover/advertise"
	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/nixrb-discover/nixrb-discover/discover/tailnet"
	"github.com/nixrb-discover/nixrb-discover/health"
	"github.com/nixrb-discover/nixrb-discover/internal/clienttest"
	"github.com/nixrb-discover/nixrb-discover/internal/nixtest"
	"github.com/nixrb-discover/nixrb-discover/internal/tailnettest"
	"github.com/nixrb-discover/nixrb-discover/render"
	"github.com/nixrb-discover/nixrb-discover/wire"
)

// gateBinName is the name this test binary runs under when sshd starts
// it as the AuthorizedKeysCommand or the forced command: it then runs
// authorized-keys or ssh-gate (wired here, so the test does not depend
// on the root command's list) and exits before any test runs.
const gateBinName = "nixrb-discover-enroll-test"

func init() {
	if filepath.Base(os.Args[0]) != gateBinName {
		return
	}
	e := &env{stdout: os.Stdout, stderr: os.Stderr}
	fs := flag.NewFlagSet("nixrb-discover", flag.ContinueOnError)
	root := &ffcli.Command{Name: "nixrb-discover", FlagSet: fs,
		Subcommands: []*ffcli.Command{newAuthorizedKeysCmd(e), newSSHGateCmd(e)}}
	err := root.ParseAndRun(context.Background(), os.Args[1:])
	os.Exit(exitCode(err, os.Stderr))
}

// installGateBinary copies this test binary into a root-owned 0755
// directory outside /tmp (sshd refuses an AuthorizedKeysCommand under a
// writable directory) under gateBinName.
func installGateBinary(t *testing.T, dir string) string {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, gateBinName)
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// enrollOver POSTs key to the builder's enrolment endpoint from node.
func enrollOver(t *testing.T, from *tailnettest.Node, builder *tailnettest.Node, key string) (int, string) {
	t.Helper()
	hc := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DialContext: from.Server.Dial}}
	body, _ := json.Marshal(wire.EnrollRequest{PublicKey: key})
	url := fmt.Sprintf("http://%s:%d%s", builder.IPv4, wire.DefaultAdvertPort, wire.EnrollPath)
	deadline := time.Now().Add(tailnettest.Timeout)
	for {
		resp, err := hc.Post(url, "application/json", bytes.NewReader(body))
		if err == nil {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			return resp.StatusCode, strings.TrimSpace(string(b))
		}
		if time.Now().After(deadline) {
			t.Fatalf("enrol from %s: %v", from.Name, err)
		}
		time.Sleep(50 * time.Millisecond) // the agent is still binding
	}
}

// TestEnrollmentOnTailnet: a tagged client enrols its key over the
// tailnet and then logs in to a real sshd that reads keys only through
// the real authorized-keys command; an untagged peer cannot; the forced
// ssh-gate runs Nix and nothing else; untagging the client locks it out.
func TestEnrollmentOnTailnet(t *testing.T) {
	nixtest.RequireTools(t)
	tn := tailnettest.New(t)
	dir := nixtest.WorkDir(t, "enroll")
	bin := installGateBinary(t, dir)
	sock := filepath.Join(dir, "enroll.sock")
	b := nixtest.StartBuilder(t, nixtest.BuilderOptions{
		Version: nixtest.V28,
		ExtraSSHDConfig: fmt.Sprintf("AuthorizedKeysCommand %s authorized-keys --socket %s %%u\nAuthorizedKeysCommandUser root\n",
			bin, sock),
	})
	bnode := tn.AddNode(t, "builder", tailnettest.TagBuilder)
	bnode.ForwardTCP(t, 22, net.JoinHostPort(b.Addr.String(), "22"))

	var logBuf clienttest.SyncBuffer
	log := slog.New(slog.NewTextHandler(io.MultiWriter(&logBuf, t.Output()), nil))
	newEnroller := func(state string) *advertise.Enroller {
		return &advertise.Enroller{
			AllowTags: []string{tailnettest.TagClient},
			StorePath: filepath.Join(dir, state, "enrolled.json"),
			User:      b.User,
			LocalAPI:  bnode.LocalClient,
			CacheFor:  time.Second,
			Logger:    log,
			// The tailnet here is tsnet in this process, forwarding to
			// sshd from the root namespace's address on the builder's link
			// (as a userspace-networking tailscaled forwards from
			// 127.0.0.1): accept that source too, as ExtraFrom is for.
			ExtraFrom: []string{b.HostAddr.String()},
		}
	}
	enr := newEnroller("state")
	// current is the enroller serving now; a later subtest replaces it
	// with one that knows no keys (the builder reinstalled).
	var current atomic.Pointer[advertise.Enroller]
	current.Store(enr)
	tsrv := &advertise.TailnetServer{LocalAPI: bnode.LocalClient, Listen: bnode.Server.Listen, Logger: log}
	tsrv.Handle("POST "+wire.EnrollPath, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		current.Load().Handler().ServeHTTP(w, r)
	}))
	agent := &advertise.Agent{
		Facts: advertise.FactsOptions{
			HostKeyPath: b.HostKeyPath + ".pub",
			Overrides: advertise.Overrides{Hostname: "builder", SSHUser: b.User, SSHPort: 22, MaxJobs: 1,
				AgentVersion: "test", Enroll: true},
		},
		Tailnet: tsrv,
		Logger:  log,
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := agent.Run(ctx); err != nil {
			t.Errorf("agent: %v", err)
		}
	}()
	// serveSocket serves e's key socket for sshd until the returned stop.
	serveSocket := func(e *advertise.Enroller) (stop func()) {
		sctx, scancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			if err := e.ServeSocket(sctx, sock); err != nil {
				t.Errorf("enroll socket: %v", err)
			}
		}()
		return func() { scancel(); <-done }
	}
	stopSocket := serveSocket(enr)
	t.Cleanup(func() { stopSocket(); cancel(); wg.Wait() })

	laptop := tn.AddNode(t, "laptop", tailnettest.TagClient)
	rogue := tn.AddNode(t, "rogue")
	for _, n := range []*tailnettest.Node{laptop, rogue} {
		tn.WaitPeer(t, n, bnode)
		tn.WaitPeer(t, bnode, n)
	}
	laptopID, err := discover.LoadOrCreateIdentity(filepath.Join(dir, "laptop_ed25519"), "laptop")
	if err != nil {
		t.Fatal(err)
	}
	rogueID, err := discover.LoadOrCreateIdentity(filepath.Join(dir, "rogue_ed25519"), "rogue")
	if err != nil {
		t.Fatal(err)
	}
	hostKey, _, _, _, err := ssh.ParseAuthorizedKey([]byte(b.HostKey()))
	if err != nil {
		t.Fatal(err)
	}
	check := func(from *tailnettest.Node, id *discover.Identity, proto string) health.Result {
		c := &health.Checker{Signer: id.Signer, Dial: from.Server.Dial, RefreshChecks: -1, Timeout: 20 * time.Second}
		defer c.Close()
		cctx, ccancel := context.WithTimeout(context.Background(), time.Minute)
		defer ccancel()
		return c.Check(cctx, health.Target{Key: from.Name, Addr: net.JoinHostPort(bnode.IPv4.String(), "22"),
			User: b.User, Protocol: proto, HostKey: hostKey})
	}

	if r := check(laptop, laptopID, health.ProtocolSSHNG); r.OK || r.Reason != health.ReasonAuthRefused {
		t.Fatalf("before enrolment the laptop's check = %+v, want auth refused", r)
	}

	t.Run("untagged-peer-refused", func(t *testing.T) {
		code, body := enrollOver(t, rogue, bnode, rogueID.AuthorizedKey)
		if code != http.StatusForbidden || body != `{"error":"enrolment refused: caller lacks tag:nix-client"}` {
			t.Fatalf("rogue enrolment: %d %s", code, body)
		}
		if r := check(rogue, rogueID, health.ProtocolSSHNG); r.Reason != health.ReasonAuthRefused {
			t.Fatalf("rogue check = %+v, want auth refused", r)
		}
	})

	t.Run("tagged-client-enrols-and-builds", func(t *testing.T) {
		code, body := enrollOver(t, laptop, bnode, laptopID.AuthorizedKey)
		if code != http.StatusOK || body != fmt.Sprintf(`{"user":%q}`, b.User) {
			t.Fatalf("laptop enrolment: %d %s", code, body)
		}
		for _, proto := range []string{health.ProtocolSSHNG, health.ProtocolSSH} {
			if r := check(laptop, laptopID, proto); !r.OK {
				t.Fatalf("%s check through ssh-gate after enrolment = %+v\nbuilder logs:\n%s", proto, r, b.Logs())
			}
		}
	})

	// Real nix-build clients reach the builder's sshd directly (as a
	// machines file from the client would, through the tailnet): what
	// each Nix sends must pass the gate, with the enrolled key alone.
	for _, tc := range []struct {
		client nixtest.Version
		proto  string
	}{
		{nixtest.V28, "ssh-ng"}, {nixtest.V28, "ssh"}, {nixtest.V226, "ssh-ng"}, {nixtest.V226, "ssh"},
	} {
		t.Run(fmt.Sprintf("real-nix-build/%s-client-%s", tc.client, tc.proto), func(t *testing.T) {
			if tc.client == nixtest.V226 {
				nixtest.EnsureTrixie(t)
			}
			machines := filepath.Join(dir, "machines-"+tc.proto)
			if err := os.WriteFile(machines, []byte(b.MachineLine(tc.proto, laptopID.Path)+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			bctx, bcancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer bcancel()
			out, stderr, err := nixtest.NixBuild(t, bctx, nixtest.ClientOptions{
				Version: tc.client, MachinesFile: machines, BindPaths: []string{dir},
				Expr: nixtest.TrivialDerivation(fmt.Sprintf("enrolled-%s-%s", tc.client, tc.proto)),
			})
			if err != nil {
				t.Fatalf("nix-build with the enrolled key: %v\n%s\nbuilder logs:\n%s", err, stderr, b.Logs())
			}
			if strings.TrimSpace(out) != b.Hostname {
				t.Errorf("the build ran on %q, want %s", out, b.Hostname)
			}
		})
	}

	t.Run("ssh-gate-refuses-a-shell", func(t *testing.T) {
		for _, cmd := range []string{"sh", "sh -c id", "nix-daemon --stdio; sh"} {
			out, err := runSSH(t, laptop, bnode, b.User, laptopID.Signer, hostKey, cmd)
			var ee *ssh.ExitError
			if !errors.As(err, &ee) || ee.ExitStatus() != 1 || !strings.Contains(out, "refused") {
				t.Errorf("ssh %q: err %v, output %q; want exit 1 and a refusal", cmd, err, out)
			}
		}
	})

	// runClient runs a client daemon on node with its own identity and
	// machines file, stopped at the end of t.
	runClient := func(t *testing.T, node *tailnettest.Node, name string) (*discover.Client, string) {
		id, err := discover.LoadOrCreateIdentity(filepath.Join(dir, name+"_ed25519"), name)
		if err != nil {
			t.Fatal(err)
		}
		machines := filepath.Join(dir, name+"-machines")
		c := &discover.Client{
			Sources:      []discover.Source{&tailnet.Source{LocalAPI: node.LocalClient, Dial: node.Server.Dial}},
			Checker:      &health.Checker{Signer: id.Signer, Dial: node.Server.Dial, Timeout: 20 * time.Second},
			Enroll:       (&tailnet.Enroller{Dial: node.Server.Dial, PublicKey: id.AuthorizedKey}).Enroll,
			MachinesPath: machines,
			SSHKeyPath:   id.Path,
			NixVersion:   render.NixVersion{Major: 2, Minor: 8},
			Logger:       slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
		}
		c.Init() // Status may be called before Run starts
		cctx, ccancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- c.Run(cctx) }()
		t.Cleanup(func() { ccancel(); <-done })
		return c, machines
	}

	// The client daemon does all of it by itself: a new tagged laptop with
	// a fresh key enrols before its first check, lands in its machines
	// file and real Nix builds through that file; an untagged laptop's
	// client says why the builder is not in its file.
	t.Run("client-daemon-enrols-by-itself", func(t *testing.T) {
		laptop2 := tn.AddNode(t, "laptop2", tailnettest.TagClient)
		plain := tn.AddNode(t, "plain")
		_, machines := runClient(t, laptop2, "laptop2")
		plainClient, _ := runClient(t, plain, "plain")

		deadline := time.Now().Add(tailnettest.Timeout)
		for {
			if f, _ := os.ReadFile(machines); strings.Contains(string(f), bnode.FQDN) {
				break
			}
			if time.Now().After(deadline) {
				f, _ := os.ReadFile(machines)
				t.Fatalf("the enrolled builder never reached laptop2's machines file:\n%s", f)
			}
			time.Sleep(50 * time.Millisecond)
		}
		cfg := filepath.Join(dir, "laptop2-ssh_config")
		if err := os.WriteFile(cfg, []byte(fmt.Sprintf("Host %s\n  HostName %s\n  HostKeyAlias %s\n", bnode.FQDN, b.Addr, bnode.FQDN)), 0o644); err != nil {
			t.Fatal(err)
		}
		bctx, bcancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer bcancel()
		out, stderr, err := nixtest.NixBuild(t, bctx, nixtest.ClientOptions{Version: nixtest.V28, MachinesFile: machines, SSHOpts: "-F " + cfg,
			Expr: nixtest.TrivialDerivation("client-enrolled")})
		if err != nil || strings.TrimSpace(out) != b.Hostname {
			t.Fatalf("nix-build through the client's own file: %v %q\n%s", err, out, stderr)
		}

		for {
			st, err := plainClient.Status(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			var reason string
			for _, bs := range st.Builders {
				if bs.Name == bnode.FQDN {
					reason = bs.Reason
					if bs.InFile {
						t.Fatalf("the untagged laptop's client put the builder in its file: %+v", bs)
					}
				}
			}
			if strings.Contains(reason, "enrolment refused") && strings.Contains(reason, "caller lacks tag:nix-client") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the untagged laptop's client does not say why: reason %q", reason)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})

	// from=: the enrolled, tagged laptop's key is accepted only from its
	// node's tailnet addresses. Without ExtraFrom the same login, arriving
	// from the forwarder's address, is refused by sshd itself.
	t.Run("key-only-from-its-nodes-addresses", func(t *testing.T) {
		strict := newEnroller("state")
		strict.ExtraFrom = nil
		stopSocket()
		stopSocket = serveSocket(strict)
		defer func() { stopSocket(); stopSocket = serveSocket(enr) }()
		if r := check(laptop, laptopID, health.ProtocolSSHNG); r.Reason != health.ReasonAuthRefused {
			t.Fatalf("a login from %s (not the laptop's tailnet address) = %+v, want auth refused", b.HostAddr, r)
		}
		keys, err := advertise.FetchAuthorizedKeys(context.Background(), sock)
		if err != nil {
			t.Fatal(err)
		}
		want := strings.Join(strings.Fields(laptopID.AuthorizedKey)[:2], " ")
		var from []string
		for _, en := range keys.Entries {
			if en.Key == want {
				from = en.From
			}
		}
		if !slices.Contains(from, laptop.IPv4.String()) || slices.Contains(from, b.HostAddr.String()) {
			t.Fatalf("the laptop's key may log in from %v, want its tailnet addresses only (%s, ...)", from, laptop.IPv4)
		}
	})

	// The review's attack: the laptop keeps a real OpenSSH ControlMaster
	// open, runs nix-daemon over it, then loses its tag. The running
	// nix-daemon is ended by the agent, and a new nix-daemon over the
	// still open master is refused by ssh-gate.
	t.Run("revocation-ends-sessions-over-an-open-controlmaster", func(t *testing.T) {
		cdir, err := os.MkdirTemp("", "cm") // short: a ControlPath is a unix socket path
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(cdir)
		ctl, kh := filepath.Join(cdir, "ctl"), filepath.Join(cdir, "known_hosts")
		if err := os.WriteFile(kh, []byte(b.Addr.String()+" "+b.HostKey()+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		sshArgs := func(extra ...string) []string {
			return append([]string{"-F", "/dev/null", "-i", laptopID.Path, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
				"-o", "UserKnownHostsFile=" + kh, "-o", "StrictHostKeyChecking=yes", "-S", ctl, "-l", b.User}, extra...)
		}
		master := exec.Command("ssh", sshArgs("-M", "-N", "-o", "ControlPersist=no", b.Addr.String())...)
		var mlog clienttest.SyncBuffer
		master.Stdout, master.Stderr = &mlog, &mlog
		if err := master.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { master.Process.Kill(); master.Wait() }()
		deadline := time.Now().Add(tailnettest.Timeout)
		for exec.Command("ssh", sshArgs("-O", "check", b.Addr.String())...).Run() != nil {
			if time.Now().After(deadline) {
				t.Fatalf("the ControlMaster never came up:\n%s\nbuilder logs:\n%s", mlog.String(), b.Logs())
			}
			time.Sleep(100 * time.Millisecond)
		}
		// A nix-daemon session over the master, its stdin held open.
		sess := exec.Command("ssh", sshArgs(b.Addr.String(), "nix-daemon --stdio")...)
		stdin, err := sess.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		var sessOut clienttest.SyncBuffer
		sess.Stdout, sess.Stderr = &sessOut, &sessOut
		if err := sess.Start(); err != nil {
			t.Fatal(err)
		}
		defer stdin.Close()
		ended := make(chan error, 1)
		go func() { ended <- sess.Wait() }()
		select {
		case err := <-ended:
			t.Fatalf("the nix-daemon session over the master ended while the laptop was tagged: %v\n%s", err, sessOut.String())
		case <-time.After(2 * time.Second):
		}

		tn.SetTags(t, laptop)
		select {
		case <-ended:
		case <-time.After(tailnettest.Timeout):
			sess.Process.Kill()
			t.Fatalf("the nix-daemon session over the master outlived the revocation:\n%s", logBuf.String())
		}
		if !strings.Contains(logBuf.String(), "ended sessions of revoked keys") {
			t.Errorf("no audit line for the ended session:\n%s", logBuf.String())
		}
		if exec.Command("ssh", sshArgs("-O", "check", b.Addr.String())...).Run() != nil {
			t.Skip("the master closed too; nothing left to open a session over")
		}
		out, err := exec.Command("ssh", sshArgs(b.Addr.String(), "nix-daemon --stdio")...).CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "refused") {
			t.Fatalf("a new nix-daemon over the open master after revocation: %v %q; want exit 1 and a refusal", err, out)
		}
	})

	t.Run("untagged-client-locked-out", func(t *testing.T) {
		tn.SetTags(t, laptop)
		deadline := time.Now().Add(tailnettest.Timeout)
		for {
			r := check(laptop, laptopID, health.ProtocolSSHNG)
			if r.Reason == health.ReasonAuthRefused {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the untagged laptop can still log in: %+v", r)
			}
			time.Sleep(200 * time.Millisecond)
		}
		if !strings.Contains(logBuf.String(), "enrolled key expired") {
			t.Errorf("no audit line for the expired key:\n%s", logBuf.String())
		}
	})

	t.Run("client-re-enrols-after-builder-reinstall", func(t *testing.T) {
		laptop3 := tn.AddNode(t, "laptop3", tailnettest.TagClient)
		laptop3Client, machines := runClient(t, laptop3, "laptop3")
		laptop3Key := strings.Fields(mustIdentity(t, filepath.Join(dir, "laptop3_ed25519")).AuthorizedKey)[1]
		healthy := func(what string) {
			t.Helper()
			deadline := time.Now().Add(tailnettest.Timeout)
			for {
				st, err := laptop3Client.Status(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				for _, bs := range st.Builders {
					if bs.Name == bnode.FQDN && bs.InFile && bs.State == discover.StateHealthy {
						return
					}
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s: the builder is not healthy in laptop3's file: %+v", what, st.Builders)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		healthy("first enrolment")

		// The builder is reinstalled: a fresh key store that knows no
		// keys, and every open SSH connection gone. laptop3's client meets
		// "auth refused" at its next login and enrols again by itself.
		fresh := newEnroller("state-after-reinstall")
		stopSocket()
		current.Store(fresh)
		stopSocket = serveSocket(fresh)
		if err := b.DropSessions(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(tailnettest.Timeout)
		for {
			keys, err := fresh.Keys()
			if err != nil {
				t.Fatal(err)
			}
			if len(keys) == 1 && strings.Contains(keys[0].PublicKey, laptop3Key) {
				break
			}
			if time.Now().After(deadline) {
				st, _ := laptop3Client.Status(context.Background())
				t.Fatalf("laptop3's client did not enrol again after the builder forgot its key: keys %+v, status %+v", keys, st)
			}
			time.Sleep(50 * time.Millisecond)
		}
		healthy("after the re-enrolment")
		cfg := filepath.Join(dir, "laptop3-ssh_config")
		if err := os.WriteFile(cfg, []byte(fmt.Sprintf("Host %s\n  HostName %s\n  HostKeyAlias %s\n", bnode.FQDN, b.Addr, bnode.FQDN)), 0o644); err != nil {
			t.Fatal(err)
		}
		bctx, bcancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer bcancel()
		out, stderr, err := nixtest.NixBuild(t, bctx, nixtest.ClientOptions{Version: nixtest.V28, MachinesFile: machines, SSHOpts: "-F " + cfg,
			Expr: nixtest.TrivialDerivation("client-re-enrolled")})
		if err != nil || strings.TrimSpace(out) != b.Hostname {
			t.Fatalf("nix-build after the re-enrolment: %v %q\n%s", err, out, stderr)
		}
	})
}

// mustIdentity loads the client identity at path (made by runClient).
func mustIdentity(t *testing.T, path string) *discover.Identity {
	t.Helper()
	id, err := discover.LoadOrCreateIdentity(path, "")
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// runSSH runs cmd on the builder as user over the tailnet and returns its
// combined output.
func runSSH(t *testing.T, from, to *tailnettest.Node, user string, signer ssh.Signer, hostKey ssh.PublicKey, cmd string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	addr := net.JoinHostPort(to.IPv4.String(), "22")
	conn, err := from.Server.Dial(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	cc, chans, reqs, err := ssh.NewClientConn(conn, addr, &ssh.ClientConfig{
		User: user, Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)}, HostKeyCallback: ssh.FixedHostKey(hostKey),
	})
	if err != nil {
		t.Fatalf("ssh to the builder: %v", err)
	}
	client := ssh.NewClient(cc, chans, reqs)
	defer client.Close()
	s, err := client.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	out, err := s.CombinedOutput(cmd)
	return string(out), err
}
