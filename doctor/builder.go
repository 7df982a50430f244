package doctor

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nixrb-discover/nixrb-discover/health"
	"github.com/nixrb-discover/nixrb-discover/render"
	"golang.org/x/crypto/ssh"
)

// checkBuilders runs the per-builder checks on every selected machine.
func checkBuilders(ctx context.Context, r *Report, opts Options, v render.NixVersion, entries []render.Entry, aliases map[string]*alias) {
	sel := selected(entries, opts.Builder, aliases)
	if opts.Builder != "" && len(sel) == 0 {
		r.fail(fmt.Sprintf("builder %s is in %s", opts.Builder, opts.MachinesPath),
			"no SSH machine there has that host or name",
			"name the builder by the host in its URI (nixrb-discover list shows them), or run doctor without BUILDER")
		return
	}
	for _, en := range sel {
		if ctx.Err() != nil {
			return
		}
		checkBuilder(ctx, r, opts, v, en, aliases[en.Machine.URI.Host])
	}
}

func checkBuilder(ctx context.Context, r *Report, opts Options, v render.NixVersion, en render.Entry, a *alias) {
	m := en.Machine
	label := "builder " + m.URI.Host
	host, port := m.URI.Host, m.URI.Port
	if a != nil && a.HostName != "" {
		host, port = a.HostName, a.Port
	}
	if port == 0 {
		port = 22
	}
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	user := m.URI.User
	if user == "" {
		user = opts.User
	}

	// The key: field 3, or root's default.
	var signer ssh.Signer
	kp := keyPath(m.SSHKey, opts.RootHome)
	if kp == "" {
		r.fail(label+": has an SSH key",
			fmt.Sprintf("%s:%d: field 3 is empty and root has no default key in %s/.ssh", en.Path, en.Line, opts.RootHome),
			"write the private key path in field 3 (the client uses /var/lib/nixrb-discover/id_ed25519)")
	} else {
		name := fmt.Sprintf("%s: SSH key %s is readable and has no passphrase", label, kp)
		s, err := loadKey(kp)
		var ke *keyError
		if errors.As(err, &ke) {
			r.fail(name, ke.detail, ke.fix)
		} else {
			signer = s
			r.pass(name, ssh.FingerprintSHA256(s.PublicKey()))
		}
	}

	ip, ok := checkResolve(ctx, r, opts, label, host)
	if !ok {
		return
	}
	// Connect to the address the resolver gave, as ssh does.
	dialAddr := net.JoinHostPort(ip, strconv.Itoa(port))
	ident, ok := checkTCP(ctx, r, opts, label, dialAddr)
	if !ok {
		return
	}

	var hostKey ssh.PublicKey
	if m.HostKey == "" {
		r.fail(label+": host key is pinned in field 8",
			fmt.Sprintf("%s:%d: field 8 is empty: ssh falls back to root's known_hosts and refuses an unknown host", en.Path, en.Line),
			"put the base64 of the builder's host key line in field 8 (on the builder: base64 -w0 /etc/ssh/ssh_host_ed25519_key.pub)")
		return
	}
	hk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(m.HostKey))
	if err != nil {
		r.fail(label+": host key in field 8 parses", fmt.Sprintf("%s:%d: %v", en.Path, en.Line, err),
			"put the base64 of the builder's host key line in field 8")
		return
	}
	hostKey = hk
	if signer == nil {
		return // the key check failed: nothing to log in with
	}

	// The check applies the local Nix's rules, as the client does: whether
	// it builds on a daemon that does not trust it, and the oldest daemon
	// it still speaks to.
	c := &health.Checker{Signer: signer, Timeout: opts.Timeout, BannerTimeout: opts.Timeout, RefreshChecks: -1,
		UntrustedBuilds: v.BuildsOnUntrustedDaemon(), MinDaemonProtocol: v.MinDaemonProtocol()}
	defer c.Close()
	res := c.Check(ctx, health.Target{Key: m.URI.Host, Addr: dialAddr, User: user, Protocol: m.URI.Scheme, HostKey: hostKey})
	sshChecks(r, v, label, addr, user, kp, ident, m, res)
}

// checkResolve resolves host with root's resolver, as ssh will, and
// returns the first address.
func checkResolve(ctx context.Context, r *Report, opts Options, label, host string) (string, bool) {
	if net.ParseIP(host) != nil {
		return host, true
	}
	name := fmt.Sprintf("%s: %s resolves (root's resolver)", label, host)
	lookup := opts.LookupHost
	if lookup == nil {
		lookup = net.DefaultResolver.LookupHost
	}
	lctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	addrs, err := lookup(lctx, host)
	if err == nil && len(addrs) > 0 {
		r.pass(name, strings.Join(addrs, ", "))
		return addrs[0], true
	}
	if err == nil {
		err = errors.New("no addresses")
	}
	fix := "make the name resolve for root (DNS or /etc/hosts), or write the builder's address in the URI"
	switch {
	case strings.HasPrefix(host, aliasPrefix):
		fix = "define the ssh_config alias (see above): ssh resolves an undefined alias as a host name"
	case strings.HasSuffix(strings.TrimSuffix(host, "."), ".ts.net") || !strings.Contains(host, "."):
		fix = "a MagicDNS name resolves only when root's resolver asks tailscaled (100.100.100.100): " +
			"run `tailscale set --accept-dns=true` and let /etc/resolv.conf point at it (systemd-resolved, or on NixOS " +
			"services.tailscale with services.resolved), or write the builder's full MagicDNS name or tailnet IP in the URI"
	}
	r.fail(name, err.Error(), fix)
	return "", false
}

// checkTCP connects to sshd and reads its banner, as every Nix build
// does first. It returns the server's identification line.
func checkTCP(ctx context.Context, r *Report, opts Options, label, addr string) (string, bool) {
	name := fmt.Sprintf("%s: TCP reaches sshd on %s", label, addr)
	dctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(dctx, "tcp", addr)
	if err != nil {
		switch {
		case errors.Is(err, syscall.ECONNREFUSED):
			r.fail(name, err.Error(), "nothing listens on that port: start sshd on the builder, or correct the port (Nix before 2.31 needs an ssh_config alias for a non-22 port)")
		case dctx.Err() != nil || isTimeout(err):
			r.fail(name, fmt.Sprintf("no answer within %s", opts.Timeout),
				"the builder is off or a firewall drops SSH (Nix would wait minutes): start it, open port 22; on a tailnet check `tailscale ping HOST` and the ACLs")
		default:
			r.fail(name, err.Error(), "check the builder's address and the route to it")
		}
		return "", false
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	_ = conn.SetDeadline(time.Now().Add(opts.Timeout))
	_, _ = conn.Write([]byte("SSH-2.0-nixrb-discover_doctor\r\n"))
	br := bufio.NewReaderSize(conn, 256)
	for range 16 {
		line, err := br.ReadString('\n')
		if strings.HasPrefix(line, "SSH-") && err == nil {
			ident := strings.TrimRight(line, "\r\n")
			r.pass(name, ident)
			return ident, true
		}
		if err != nil {
			if isTimeout(err) {
				r.fail(name, fmt.Sprintf("timeout: the connection was accepted but no SSH banner came within %s", opts.Timeout),
					"sshd on the builder is hung or overloaded (Nix would wait forever): restart sshd there, check MaxStartups")
			} else {
				r.fail(name, "connection closed before the SSH banner: "+err.Error(),
					"sshd refused the connection early: check its logs (MaxStartups, tcp_wrappers, PerSourcePenalties)")
			}
			return "", false
		}
	}
	r.fail(name, "the server does not speak SSH", "check that the port in the URI or ssh_config alias is sshd's")
	return "", false
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}
