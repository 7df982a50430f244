package discover

import (
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/nixrb-discover/nixrb-discover/health"
	"github.com/nixrb-discover/nixrb-discover/render"
)

// header is the comment on top of the machines file (no ';' in it).
const header = "managed by nixrb-discover client: edits here are overwritten\nadd static builders with --static FILE instead"

// content formats the file for the members in it. Members that cannot be
// written get a problem text (shown by list) instead of a line.
func (l *loop) content() (file []byte, problems map[string]string, sshConfig []byte) {
	problems = map[string]string{}
	var static, discovered []render.Machine
	var aliases strings.Builder
	aliases.WriteString("# managed by nixrb-discover client: Host aliases for builders on a port other than 22\n")
	for _, m := range l.mem.inFile() {
		if m.Machine != nil && m.Advert == nil {
			static = append(static, *m.Machine)
			continue
		}
		mach, alias, err := l.machineFor(m)
		if err != nil {
			problems[m.Key] = err.Error()
			continue
		}
		if alias != "" {
			aliases.WriteString(alias)
		}
		if _, err := mach.Line(l.c.NixVersion); err != nil {
			problems[m.Key] = err.Error()
			continue
		}
		discovered = append(discovered, mach)
	}
	out, err := render.Format(render.Merge(static, discovered), render.FormatOptions{NixVersion: l.c.NixVersion, Header: header})
	if err != nil {
		// Each line was validated above: this is a bug, keep the old file.
		l.log.Error("cannot format the machines file", "err", err)
		return l.written, problems, []byte(aliases.String())
	}
	return out, problems, []byte(aliases.String())
}

var aliasUnsafe = regexp.MustCompile(`[^A-Za-z0-9.-]+`)

// machineFor turns a discovered builder into its machines-file line (and
// an ssh_config alias when its port needs one for the local Nix).
func (l *loop) machineFor(m member) (render.Machine, string, error) {
	a := m.Advert
	if a == nil {
		return render.Machine{}, "", errors.New("no advert")
	}
	mach := render.Machine{
		URI:               render.StoreURI{Scheme: a.Protocol, User: a.SSHUser, Host: m.Address},
		Systems:           a.Systems,
		SSHKey:            l.c.SSHKeyPath,
		MaxJobs:           uint32(max(a.MaxJobs, 0)),
		SpeedFactor:       a.SpeedFactor,
		SupportedFeatures: a.SupportedFeatures,
		MandatoryFeatures: a.MandatoryFeatures,
		HostKey:           a.HostKey,
	}
	if a.SSHPort == 0 || a.SSHPort == 22 {
		return mach, "", nil
	}
	// How the port reaches Nix is the local implementation's rule:
	// host:port (CppNix 2.31), ?port= (Lix 2.93), else an ssh_config
	// alias (render.NixVersion.PortStyle).
	if l.c.NixVersion.PortStyle() != render.PortAlias {
		mach.URI.Port = a.SSHPort
		return mach, "", nil
	}
	if l.c.SSHConfigPath == "" {
		return mach, "", fmt.Errorf("SSH port %d: %s cannot read a port in the machines file (CppNix needs 2.31, Lix 2.93); run the client with --ssh-config FILE and Include that file in root's ssh_config", a.SSHPort, l.c.NixVersion)
	}
	alias := "nixrb-" + strings.Trim(aliasUnsafe.ReplaceAllString(m.Name, "-"), "-")
	mach.URI.Host = alias
	return mach, fmt.Sprintf("Host %s\n  HostName %s\n  Port %d\n  HostKeyAlias %s\n", alias, m.Address, a.SSHPort, alias), nil
}

// targetFor is what the health check dials and expects.
func targetFor(m member) (health.Target, error) {
	t := health.Target{Key: m.Key}
	var keyLine string
	switch {
	case m.Advert != nil:
		a := m.Advert
		port := a.SSHPort
		if port == 0 {
			port = 22
		}
		t.Addr = net.JoinHostPort(m.Address, strconv.Itoa(port))
		t.User, t.Protocol, keyLine = a.SSHUser, a.Protocol, a.HostKey
	case m.Machine != nil:
		u := m.Machine.URI
		if !u.IsSSH() {
			return t, fmt.Errorf("store %s is not an SSH store", u.Opaque)
		}
		port := u.Port
		if port == 0 {
			port = 22
		}
		t.Addr = net.JoinHostPort(u.Host, strconv.Itoa(port))
		t.User, t.Protocol, keyLine = u.User, u.Scheme, m.Machine.HostKey
		if t.User == "" {
			t.User = "root"
		}
		if keyLine == "" {
			return t, errNoHostKey
		}
	default:
		return t, errors.New("nothing to check")
	}
	k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(keyLine))
	if err != nil {
		return t, fmt.Errorf("host key: %w", err)
	}
	t.HostKey = k
	return t, nil
}

// errNoHostKey is why a static entry cannot be health-checked.
var errNoHostKey = errors.New("static entry has no host key (field 8): it cannot be checked safely")
