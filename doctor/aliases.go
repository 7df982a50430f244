package doctor

import (
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"

	"github.com/nixrb-discover/nixrb-discover/render"
)

// aliasPrefix starts the Host aliases the client writes.
const aliasPrefix = "nixrb-"

// checkAliases checks the ssh_config Host aliases that builders on a
// non-22 port need with a Nix that reads no port in a store URI
// (render.PortAlias), and that root's ssh reads the alias file. It returns the aliases, which say where such builders are.
func checkAliases(r *Report, opts Options, v render.NixVersion, entries []render.Entry) map[string]*alias {
	aliases, err := readAliases(opts.SSHConfigPath)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		r.fail("ssh_config aliases "+opts.SSHConfigPath+" are readable", err.Error(),
			"make the file readable by root, or pass --ssh-config FILE")
	}
	needInclude := false
	for _, en := range selected(entries, opts.Builder, aliases) {
		m := en.Machine
		host := m.URI.Host
		a := aliases[host]
		switch {
		case m.URI.Port != 0 && v.PortStyle() == render.PortAlias:
			name := aliasPrefix + strings.Trim(aliasUnsafe(host), "-")
			r.fail(fmt.Sprintf("builder %s: %s can reach port %d", host, v, m.URI.Port),
				fmt.Sprintf("%s:%d: %s reads no port in a store URI (CppNix 2.31 reads %s:%d, Lix 2.93 ?port=%d)", en.Path, en.Line, v, host, m.URI.Port, m.URI.Port),
				fmt.Sprintf("run the client with --ssh-config %s (it writes a Host alias and puts the alias in the machines file), "+
					"or add to %s the lines `Host %s`, `HostName %s`, `Port %d`, `HostKeyAlias %s`, write %s as the host in the URI, "+
					"and Include %s from /etc/ssh/ssh_config",
					opts.SSHConfigPath, opts.SSHConfigPath, name, host, m.URI.Port, name, name, opts.SSHConfigPath))
		case a != nil:
			needInclude = true
			checkAlias(r, opts, host, a)
		case strings.HasPrefix(host, aliasPrefix):
			r.fail(fmt.Sprintf("builder %s: ssh_config alias %s is defined in %s", host, host, opts.SSHConfigPath),
				fmt.Sprintf("%s:%d names %s, which looks like a nixrb-discover alias, but %s has no `Host %s`", en.Path, en.Line, host, opts.SSHConfigPath, host),
				fmt.Sprintf("run the client with --ssh-config %s (the same file doctor reads), or pass doctor the --ssh-config FILE the client writes", opts.SSHConfigPath))
		}
	}
	if needInclude {
		checkIncluded(r, opts)
	}
	return aliases
}

func checkAlias(r *Report, opts Options, host string, a *alias) {
	name := fmt.Sprintf("builder %s: ssh_config alias %s in %s is complete", host, host, opts.SSHConfigPath)
	port := a.Port
	if port == 0 {
		port = 22
	}
	switch {
	case a.HostName == "":
		r.fail(name, "no HostName: ssh would look up "+host+" itself",
			fmt.Sprintf("add `HostName ADDRESS` under `Host %s` (the client writes it)", host))
	case a.HostKeyAlias != host && a.HostName != host:
		r.fail(name, fmt.Sprintf("HostKeyAlias is %q: ssh checks the host key of %s:%d under another name than the one Nix pins it for", a.HostKeyAlias, a.HostName, port),
			fmt.Sprintf("add `HostKeyAlias %s` under `Host %s`", host, host))
	default:
		r.pass(name, fmt.Sprintf("HostName %s, Port %d", a.HostName, port))
	}
}

func checkIncluded(r *Report, opts Options) {
	name := fmt.Sprintf("root's ssh_config includes %s", opts.SSHConfigPath)
	for _, c := range opts.RootSSHConfigs {
		if includes(c, opts.SSHConfigPath) {
			r.pass(name, "through "+c)
			return
		}
	}
	r.fail(name, "none of "+strings.Join(opts.RootSSHConfigs, ", ")+" includes it: ssh (run by Nix as root) never sees the aliases",
		fmt.Sprintf("add `Include %s` to /etc/ssh/ssh_config before its first Host or Match block "+
			"(on NixOS: programs.ssh.extraConfig = \"Include %s\";)", opts.SSHConfigPath, opts.SSHConfigPath))
}

// aliasUnsafe replaces what a Host alias should not contain, as the
// client does.
func aliasUnsafe(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r == '.' || r == '-' || ('a' <= r && r <= 'z') || ('A' <= r && r <= 'Z') || ('0' <= r && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('-')
		}
	}
	return b.String()
}

// selected returns the SSH machines the per-builder checks look at: all,
// or those whose host, name or alias target is builder.
func selected(entries []render.Entry, builder string, aliases map[string]*alias) []render.Entry {
	var out []render.Entry
	for _, en := range entries {
		m := en.Machine
		if !m.URI.IsSSH() {
			continue
		}
		if builder != "" {
			a := aliases[m.URI.Host]
			hostPort := m.URI.Host
			if m.URI.Port != 0 {
				hostPort += ":" + strconv.Itoa(m.URI.Port)
			}
			match := builder == m.URI.Host || builder == m.Name() || builder == hostPort ||
				(a != nil && builder == a.HostName) || strings.TrimPrefix(m.URI.Host, aliasPrefix) == builder
			if !match {
				continue
			}
		}
		out = append(out, en)
	}
	return out
}
