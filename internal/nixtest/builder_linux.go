package nixtest

import (
	"context"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// BuilderOptions configure [StartBuilder]. The zero value (with a Version)
// is a builder that accepts root with no keys: set AuthorizedKeys.
type BuilderOptions struct {
	// Version is the Nix (and OpenSSH) the builder runs: V28 from the
	// host, V226 (OpenSSH 10) from the trixie chroot. Required.
	Version Version
	// Hostname is the builder's hostname in its UTS namespace, which a
	// [TrivialDerivation] writes to its output. Default
	// "nixtest-<version>-<slot>".
	Hostname string
	// SSHUser is the login user, created if missing (with useradd -m and
	// an unlocked, password-less entry) on the host for V28 or inside the
	// chroot for V226. A user that already exists on the host is used as
	// it is. Default "root".
	SSHUser string
	// TrustedUsers is the builder's nix.conf trusted-users. Nil means
	// root and SSHUser; a non-nil empty slice means nobody.
	TrustedUsers []string
	// AuthorizedKeys are the authorized_keys lines for SSHUser.
	AuthorizedKeys []string
	// SystemFeatures is the builder's nix.conf system-features. Nil
	// keeps Nix's default.
	SystemFeatures []string
	// HostKey is the sshd host private key in OpenSSH format. Nil
	// generates an ed25519 key.
	HostKey []byte
	// ExtraSSHDConfig is added to sshd_config. sshd keeps the first
	// value of a keyword, so lines before the first "Match" go before the
	// fixture's defaults (and win over them); the rest goes at the end.
	ExtraSSHDConfig string
	// ExtraNixConf is appended to the builder's nix.conf.
	ExtraNixConf string
	// BuildUsers is how many build users the builder's nix-daemon runs
	// builds as: group BuildUsersGroup with members nixtestbld1…N (UIDs
	// [Builder.BuildUIDs], a range no other builder of this process
	// uses: builders share the host's /proc, so an agent counting its
	// builds by UID must not count another builder's), in a passwd and group file of the builder's own,
	// bind-mounted over /etc/passwd and /etc/group in its mount namespace
	// (the host's files are untouched). An agent in the builder then sees
	// its running builds. 0 runs builds as the daemon's user
	// (build-users-group =), which no agent can count.
	BuildUsers int
	// Netns, if set, is an existing network namespace (as in `ip netns
	// list`) to run the builder in, such as a host of an
	// internal/netnstest topology, instead of a namespace of its own on a
	// veth to the root namespace. The caller owns the namespace and its
	// links (LinkDown and LinkUp then fail: cut the caller's link); the
	// builder's processes are still stopped at cleanup.
	Netns string
	// Addr is the address sshd listens on in Netns. Required with Netns.
	Addr netip.Addr
}

// Builder is a running remote builder: sshd and nix-daemon in a network,
// mount and UTS namespace of their own, with their own /nix and /etc/nix.
// Fields are fixed for the builder's life; HostKey and SSHDPID change with
// SetHostKey and RestartSSHD and are methods. Methods are safe for
// concurrent use.
type Builder struct {
	// Version is the Nix the builder runs.
	Version Version
	// Hostname is the builder's hostname.
	Hostname string
	// User is the SSH login user.
	User string
	// Addr is the builder's address, reachable from the root namespace.
	Addr netip.Addr
	// HostAddr is the root namespace's address on the builder's link
	// (invalid when the builder runs in a caller's Netns).
	HostAddr netip.Addr
	// Port is sshd's port on Addr (22: the namespace is the builder's own).
	Port int
	// HostKeyPath is the host private key file (its public key is next
	// to it, with ".pub").
	HostKeyPath string
	// Dir is the builder's work directory (its /nix is Dir/nix).
	Dir string
	// Netns is the network namespace name (ip netns exec Netns ...).
	Netns string
	// Root is the trixie chroot the builder runs in (V226), else "".
	Root string

	opts   BuilderOptions
	slot   *netSlot // nil in a caller's Netns
	netIno uint64   // the network namespace's inode, to find its processes
	mntIno uint64   // the builder's mount namespace's inode (its processes)
	inner  string   // Dir as seen by sshd: Dir (V28) or /nixtest (V226)

	mu        sync.Mutex
	hostKey   string
	sshd      *proc
	holderPID int // a sleep in the builder's namespaces, for nsenter

	firstBuildUID int      // see BuildUIDs
	uidLock       *os.File // holds the UID range (closed at cleanup)
}

// StartBuilder starts a builder and waits (bounded) until its nix-daemon
// socket exists and its sshd sends a banner. Everything is stopped by PID,
// the namespace deleted and the work directory removed in t.Cleanup.
func StartBuilder(t testing.TB, opts BuilderOptions) *Builder {
	t.Helper()
	RequireTools(t)
	if !opts.Version.valid() {
		t.Fatalf("nixtest: StartBuilder: invalid version %v", opts.Version)
	}
	b := &Builder{Version: opts.Version, Port: 22, opts: opts, User: opts.SSHUser}
	b.Dir = newWorkDir(t, "builder")
	b.inner = b.Dir
	if opts.Version == V226 {
		b.Root = EnsureTrixie(t)
		b.inner = "/nixtest"
	}
	ctx := context.Background()
	tag := ""
	if opts.Netns != "" {
		if !opts.Addr.IsValid() {
			t.Fatalf("nixtest: StartBuilder: Netns %s without Addr", opts.Netns)
		}
		ino, err := netnsInode("/run/netns/" + opts.Netns)
		if err != nil {
			t.Fatalf("nixtest: StartBuilder: netns %s: %v", opts.Netns, err)
		}
		b.Netns, b.Addr, b.netIno, tag = opts.Netns, opts.Addr, ino, opts.Netns
	} else {
		slot, err := newNetSlot(ctx)
		if err != nil {
			t.Fatalf("nixtest: StartBuilder: %v", err)
		}
		b.slot, b.Netns, b.Addr, b.HostAddr, b.netIno = slot, slot.ns, slot.peerIP, slot.hostIP, slot.ino
		tag = strconv.Itoa(slot.idx)
	}
	t.Cleanup(func() { b.cleanup(t) })

	if b.User == "" {
		b.User = "root"
	}
	b.Hostname = opts.Hostname
	if b.Hostname == "" {
		b.Hostname = "nixtest-" + strings.ReplaceAll(strings.TrimPrefix(opts.Version.String(), "nix-"), ".", "") + "-" + tag
	}
	if err := ensureUser(ctx, opts.Version, b.Root, b.User); err != nil {
		t.Fatalf("nixtest: StartBuilder: %v", err)
	}
	if err := b.writeFiles(t); err != nil {
		t.Fatalf("nixtest: StartBuilder: %v", err)
	}
	cmd := exec.Command("ip", "netns", "exec", b.Netns,
		"unshare", "--mount", "--uts", "--propagation", "private",
		"sh", filepath.Join(b.Dir, "start.sh"))
	if err := b.launch(cmd); err != nil {
		t.Fatalf("nixtest: StartBuilder: %v", err)
	}
	if err := b.waitStarted(); err != nil {
		t.Fatalf("nixtest: StartBuilder %s: %v", b.Hostname, err)
	}
	return b
}

func (b *Builder) writeFiles(t testing.TB) error {
	for _, d := range []string{"nix", "etc-nix", "tmp", "authorized_keys"} {
		if err := os.Mkdir(filepath.Join(b.Dir, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.Chmod(filepath.Join(b.Dir, "tmp"), 0o1777); err != nil {
		return err
	}
	trusted := b.opts.TrustedUsers
	if trusted == nil {
		trusted = []string{"root"}
		if b.User != "root" {
			trusted = append(trusted, b.User)
		}
	}
	group := ""
	if b.opts.BuildUsers > 0 {
		if b.opts.BuildUsers > 99 {
			return fmt.Errorf("build users: %d, want at most 99", b.opts.BuildUsers)
		}
		group = BuildUsersGroup
		if err := b.writeUserFiles(); err != nil {
			return err
		}
	}
	conf := "sandbox = false\nsubstituters =\nbuild-users-group = " + group + "\n" +
		"trusted-users = " + strings.Join(trusted, " ") + "\n"
	if b.opts.SystemFeatures != nil {
		conf += "system-features = " + strings.Join(b.opts.SystemFeatures, " ") + "\n"
	}
	conf += b.opts.ExtraNixConf + "\n"
	writeFile(t, filepath.Join(b.Dir, "etc-nix", "nix.conf"), conf, 0o644)
	keys := strings.Join(b.opts.AuthorizedKeys, "\n") + "\n"
	writeFile(t, filepath.Join(b.Dir, "authorized_keys", b.User), keys, 0o644)

	b.HostKeyPath = filepath.Join(b.Dir, "ssh_host_ed25519_key")
	if err := b.writeHostKey(b.opts.HostKey); err != nil {
		return err
	}
	writeFile(t, filepath.Join(b.Dir, "sshd_config"), b.sshdConfig(), 0o644)
	writeFile(t, filepath.Join(b.Dir, "start.sh"), b.startScript(), 0o755)
	writeFile(t, filepath.Join(b.Dir, "sshd.sh"), b.sshdScript(), 0o755)
	return nil
}

// BuildUsersGroup is the build users group of a builder with
// [BuilderOptions.BuildUsers].
const BuildUsersGroup = "nixtestbld"

// buildUsersBase is the GID of [BuildUsersGroup]; each builder's build
// users get the next free range above it: far from Debian's system and
// user ranges.
const buildUsersBase = 30000

// uidRangeLockDir holds one lock file per UID range: a builder with build
// users holds its range's lock for its life, so that no other builder on
// the machine, in this test process or another (go test runs packages in
// parallel), gets the same UIDs. Builders share the host's /proc, and Nix
// kills every process of a build user before and after a build: two
// builders with one UID kill each other's builds.
const uidRangeLockDir = "/run/nixrb-nixtest/uid-ranges"

// uidRanges is how many 100-UID ranges there are above buildUsersBase.
const uidRanges = 300

// claimUIDRange takes a free UID range (its lock stays held until lock
// is closed) and returns its index.
func claimUIDRange() (idx int, lock *os.File, err error) {
	if err := os.MkdirAll(uidRangeLockDir, 0o755); err != nil {
		return 0, nil, fmt.Errorf("build users: %w", err)
	}
	start := rand.IntN(uidRanges)
	for i := range uidRanges {
		idx := (start + i) % uidRanges
		if lock, err := lockFile(filepath.Join(uidRangeLockDir, strconv.Itoa(idx)+".lock"), 0); err == nil {
			return idx, lock, nil
		}
	}
	return 0, nil, fmt.Errorf("build users: all %d UID ranges in use", uidRanges)
}

// BuildUIDs is the first and last UID of the builder's build users (0, 0
// without [BuilderOptions.BuildUsers]).
func (b *Builder) BuildUIDs() (first, last int) {
	if b.opts.BuildUsers == 0 {
		return 0, 0
	}
	return b.firstBuildUID, b.firstBuildUID + b.opts.BuildUsers - 1
}

// writeUserFiles writes Dir/passwd and Dir/group: the host's (or the
// chroot's) files plus the build users, for the start script to bind
// over /etc/passwd and /etc/group.
func (b *Builder) writeUserFiles() error {
	etc := "/etc"
	if b.Root != "" {
		etc = filepath.Join(b.Root, "etc")
	}
	passwd, err := os.ReadFile(filepath.Join(etc, "passwd"))
	if err != nil {
		return fmt.Errorf("build users: %w", err)
	}
	group, err := os.ReadFile(filepath.Join(etc, "group"))
	if err != nil {
		return fmt.Errorf("build users: %w", err)
	}
	idx, lock, err := claimUIDRange()
	if err != nil {
		return err
	}
	b.uidLock = lock
	b.firstBuildUID = buildUsersBase + 1 + idx*100
	var users, members strings.Builder
	for i := 1; i <= b.opts.BuildUsers; i++ {
		name := fmt.Sprintf("%s%d", BuildUsersGroup, i)
		fmt.Fprintf(&users, "%s:x:%d:%d:Nix build user %d:/var/empty:/usr/sbin/nologin\n", name, b.firstBuildUID+i-1, buildUsersBase, i)
		if i > 1 {
			members.WriteString(",")
		}
		members.WriteString(name)
	}
	p := strings.TrimRight(string(passwd), "\n") + "\n" + users.String()
	g := strings.TrimRight(string(group), "\n") + "\n" + fmt.Sprintf("%s:x:%d:%s\n", BuildUsersGroup, buildUsersBase, members.String())
	if err := os.WriteFile(filepath.Join(b.Dir, "passwd"), []byte(p), 0o644); err != nil {
		return fmt.Errorf("build users: %w", err)
	}
	if err := os.WriteFile(filepath.Join(b.Dir, "group"), []byte(g), 0o644); err != nil {
		return fmt.Errorf("build users: %w", err)
	}
	return nil
}

// writeHostKey installs priv (nil: a new ed25519 key) as the host key.
func (b *Builder) writeHostKey(priv []byte) error {
	var pub string
	var err error
	if priv == nil {
		priv, pub, err = GenerateKey("nixtest-host")
	} else {
		pub, err = PublicKeyOf(priv)
	}
	if err != nil {
		return fmt.Errorf("host key: %w", err)
	}
	if err := os.WriteFile(b.HostKeyPath, priv, 0o600); err != nil {
		return fmt.Errorf("host key: %w", err)
	}
	if err := os.WriteFile(b.HostKeyPath+".pub", []byte(pub+"\n"), 0o644); err != nil {
		return fmt.Errorf("host key: %w", err)
	}
	b.mu.Lock()
	b.hostKey = pub
	b.mu.Unlock()
	return nil
}

func (b *Builder) sshdConfig() string {
	head, matches := splitMatch(b.opts.ExtraSSHDConfig)
	var c strings.Builder
	c.WriteString("# nixtest builder " + b.Hostname + "\n" + head + "\n")
	fmt.Fprintf(&c, `Port %d
ListenAddress %s
AddressFamily inet
HostKey %s/ssh_host_ed25519_key
PidFile none
UsePAM no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile %s/authorized_keys/%%u
StrictModes yes
UseDNS no
PrintMotd no
MaxStartups 1000
MaxSessions 100
LogLevel VERBOSE
`, b.Port, b.Addr, b.inner, b.inner)
	if b.Version == V226 {
		// OpenSSH 9.8+ refuses a source after repeated unauthenticated
		// connections, which health checks and banner probes are.
		c.WriteString("PerSourcePenalties no\n")
	}
	c.WriteString(matches + "\n")
	return c.String()
}

// splitMatch splits sshd_config text before its first Match line.
func splitMatch(conf string) (head, matches string) {
	lines := strings.SplitAfter(conf, "\n")
	for i, l := range lines {
		if f := strings.Fields(l); len(f) > 0 && strings.EqualFold(f[0], "Match") {
			return strings.Join(lines[:i], ""), strings.Join(lines[i:], "")
		}
	}
	return conf, ""
}

func (b *Builder) startScript() string {
	q := shellQuote
	var s strings.Builder
	s.WriteString("set -eu\nexport PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C\nunset TMPDIR\n")
	fmt.Fprintf(&s, "D=%s\n", q(b.Dir))
	if b.Version == V28 {
		// A /run of its own: sshd's privilege separation directory is
		// then the builder's, so nothing that resets the host's
		// /run/sshd (scripts/fresh-check.sh, a test) breaks its sshd.
		if b.opts.BuildUsers > 0 {
			// An /etc of its own with the build users: a bind mount on
			// /etc/passwd itself would vanish the moment the host's
			// file is replaced (useradd renames a new one in), which
			// unmounts a mountpoint in every other namespace.
			s.WriteString(`rm -rf "$D/etc"
cp -a /etc "$D/etc"
cp "$D/passwd" "$D/etc/passwd"
cp "$D/group" "$D/etc/group"
mount --bind "$D/etc" /etc
`)
		}
		s.WriteString(`mkdir -p /nix /etc/nix
mount --bind "$D/nix" /nix
mount --bind "$D/etc-nix" /etc/nix
mount --bind "$D/tmp" /tmp
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -m 0755 /run/sshd
`)
	} else {
		fmt.Fprintf(&s, "R=%s\n", q(b.Root))
		s.WriteString(`mount -t proc proc "$R/proc"
mount --rbind /dev "$R/dev"
mount -t sysfs sysfs "$R/sys"
mount -t tmpfs -o mode=0755 tmpfs "$R/run"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
mkdir -m 0755 "$R/run/sshd"
mount --bind "$D/nix" "$R/nix"
mount --bind "$D/etc-nix" "$R/etc/nix"
mount --bind "$D" "$R/nixtest"
`)
		if b.opts.BuildUsers > 0 {
			s.WriteString("mount --bind \"$D/passwd\" \"$R/etc/passwd\"\nmount --bind \"$D/group\" \"$R/etc/group\"\n")
		}
	}
	fmt.Fprintf(&s, "echo %s > /proc/sys/kernel/hostname\n", q(b.Hostname))
	s.WriteString(`sleep infinity </dev/null >/dev/null 2>&1 &
echo $! > "$D/holder.pid"
`)
	daemon := "nix-daemon"
	if b.Version == V226 {
		daemon = `chroot "$R" /usr/bin/nix-daemon`
	}
	s.WriteString(daemon + ` </dev/null >>"$D/nix-daemon.log" 2>&1 &
echo $! > "$D/nix-daemon.pid"
exec sh "$D/sshd.sh"
`)
	return s.String()
}

func (b *Builder) sshdScript() string {
	if b.Version == V28 {
		return "exec /usr/sbin/sshd -D -e -f " + shellQuote(filepath.Join(b.Dir, "sshd_config")) + "\n"
	}
	return "exec chroot " + shellQuote(b.Root) + " /usr/sbin/sshd -D -e -f /nixtest/sshd_config\n"
}

// HostKey returns the current host public key line ("ssh-ed25519 AAAA…").
func (b *Builder) HostKey() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.hostKey
}

// HostKeyBase64 returns the host key as field 8 of a machines line wants
// it: the base64 of the whole public key line.
func (b *Builder) HostKeyBase64() string {
	return base64.StdEncoding.EncodeToString([]byte(b.HostKey()))
}

// StoreURI returns proto://User@Addr, for proto "ssh" or "ssh-ng".
func (b *Builder) StoreURI(proto string) string {
	return proto + "://" + b.User + "@" + b.Addr.String()
}

// MachineLine returns a machines-file line for the builder: protocol proto
// ("ssh" or "ssh-ng"), the SSH key keyPath ("" for "-"), one job, speed 1,
// its SystemFeatures as supported features and its host key in field 8.
func (b *Builder) MachineLine(proto, keyPath string) string {
	if keyPath == "" {
		keyPath = "-"
	}
	features := "-"
	if len(b.opts.SystemFeatures) > 0 {
		features = strings.Join(b.opts.SystemFeatures, ",")
	}
	return strings.Join([]string{b.StoreURI(proto), System, keyPath, "1", "1", features, "-", b.HostKeyBase64()}, " ")
}

// Logs returns sshd's and nix-daemon's logs so far.
func (b *Builder) Logs() string {
	sshd, _ := os.ReadFile(filepath.Join(b.Dir, "sshd.log"))
	daemon, _ := os.ReadFile(filepath.Join(b.Dir, "nix-daemon.log"))
	return "--- sshd.log\n" + string(sshd) + "--- nix-daemon.log\n" + string(daemon)
}

func (b *Builder) cleanup(t testing.TB) {
	if t.Failed() && b.Dir != "" {
		t.Logf("nixtest: builder %s (%s, %s) logs:\n%s", b.Hostname, b.Version, b.Addr, tail(b.Logs(), 60))
	}
	b.mu.Lock()
	p, mnt := b.sshd, b.mntIno
	b.mu.Unlock()
	if b.slot != nil {
		if err := b.slot.destroy(); err != nil {
			t.Errorf("nixtest: builder %s: %v", b.Hostname, err)
		}
	} else {
		// In a caller's namespace: stop what runs in the builder's mount
		// namespace (sshd, nix-daemon, the holder and whatever Command
		// started), and sshd by PID in case it never got that far.
		if p != nil && !p.exited() {
			_ = p.cmd.Process.Kill()
		}
		if left := killNS("mnt", mnt, 3*time.Second); len(left) > 0 {
			t.Errorf("nixtest: builder %s: processes %v survived SIGKILL", b.Hostname, left)
		}
	}
	if p != nil {
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			t.Errorf("nixtest: builder %s: sshd %d not reaped", b.Hostname, p.cmd.Process.Pid)
		}
	}
	if b.uidLock != nil { // its processes are gone: the UIDs are free
		b.uidLock.Close()
	}
}
