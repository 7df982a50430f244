package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/nixrb-discover/nixrb-discover/advertise"
	"github.com/nixrb-discover/nixrb-discover/wire"
	"github.com/peterbourgon/ff/v3/ffcli"
)

// authorizedKeysTimeout bounds the whole question to the agent: sshd
// waits on it for every login.
const authorizedKeysTimeout = 2 * time.Second

func newAuthorizedKeysCmd(e *env) *ffcli.Command {
	fs := flag.NewFlagSet("nixrb-discover authorized-keys", flag.ContinueOnError)
	socket := fs.String("socket", advertise.DefaultEnrollSocket, "the agent's enrolment socket (advertise --enroll-socket)")
	return &ffcli.Command{
		Name:       "authorized-keys",
		ShortUsage: "nixrb-discover authorized-keys [flags] USER",
		ShortHelp:  "Print the enrolled SSH keys for sshd's AuthorizedKeysCommand",
		LongHelp: strings.TrimSpace(`
Run by sshd for each login. When USER is the builder's SSH user (the
agent's --ssh-user), prints the keys tailnet clients enrolled with
'advertise --enroll-allow-tag/--enroll-allow-cap' whose node is still on
the tailnet with an allowed tag or capability, each accepted only from
its node's tailnet addresses (from="...") and restricted to the Nix
commands by a forced 'nixrb-discover ssh-gate', which asks the agent
again at the start of every session. For any other user,
or when the agent cannot be asked within 2 s, it prints nothing: sshd
then falls back to the user's authorized_keys files alone.

In sshd_config, three lines:

  AuthorizedKeysCommand /etc/ssh/nixrb-discover-authorized-keys %u
  AuthorizedKeysCommandUser root
  AuthorizedKeysFile .ssh/authorized_keys

sshd runs the command only if its path and every directory above it are
root-owned and not group- or world-writable. /nix/store is
group-writable: on NixOS point AuthorizedKeysCommand at a root-owned
copy or a wrapper script outside the store (e.g. /etc/ssh, mode 0755)
that runs 'nixrb-discover authorized-keys "$@"'. The forced command
names this binary's own path and --socket. AuthorizedKeysCommandUser
must be root or the agent's user: the socket (mode 0666, so that
ssh-gate, running as the builder user, can ask about its own session)
gives the key list to those only. The third line keeps the user's own
authorized_keys working alongside.

The agent answers on --socket for at most 5 s from one tailnet lookup.`),
		FlagSet: fs,
		Exec: func(ctx context.Context, args []string) error {
			if len(args) != 1 {
				return usageError("authorized-keys takes exactly one argument, the user sshd asks about (%%u)")
			}
			return runAuthorizedKeys(ctx, e, *socket, args[0])
		},
	}
}

func runAuthorizedKeys(ctx context.Context, e *env, socket, user string) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("cannot find this binary for the forced command: %w", err)
	}
	if !safeCommandPath(self) {
		return fmt.Errorf("this binary's path %q is unsafe in a forced command (want letters, digits and /._+-)", self)
	}
	ctx, cancel := context.WithTimeout(ctx, authorizedKeysTimeout)
	defer cancel()
	ans, err := advertise.FetchAuthorizedKeys(ctx, socket)
	if err != nil {
		return &exitError{code: 1, err: fmt.Errorf("no enrolled keys (deny): %w", err)}
	}
	if ans.User == "" || user != ans.User {
		return nil
	}
	if !safeCommandPath(socket) {
		return fmt.Errorf("the socket path %q is unsafe in a forced command (want letters, digits and /._+-)", socket)
	}
	var out strings.Builder
	for _, en := range ans.Entries {
		pk, err := wire.ParseEnrollKey(en.Key)
		if err != nil {
			return &exitError{code: 1, err: errors.New("the agent sent a key that does not parse (deny)")}
		}
		from, ok := fromPatterns(en.From)
		if !ok {
			continue // no address to accept it from, or one sshd could misread: leave the key out
		}
		fmt.Fprintf(&out, "restrict,from=\"%s\",command=\"%s ssh-gate --socket %s --key %s\" %s\n",
			from, self, socket, advertise.KeyFingerprint(pk), advertise.AuthorizedKey(pk))
	}
	_, err = fmt.Fprint(e.stdout, out.String())
	return err
}

// safeCommandPath reports whether p can go into command="p ssh-gate"
// unquoted: sshd hands that string to the user's shell.
func safeCommandPath(p string) bool {
	if p == "" || p[0] != '/' {
		return false
	}
	for _, r := range p {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("/._+-", r)
		if !ok {
			return false
		}
	}
	return true
}

// fromPatterns joins addresses for from="...": each an IP address or
// CIDR (or, from ExtraFrom, a plain pattern of letters, digits and
// .:*?/-), none empty.
func fromPatterns(addrs []string) (string, bool) {
	if len(addrs) == 0 {
		return "", false
	}
	for _, a := range addrs {
		if a == "" {
			return "", false
		}
		for _, r := range a {
			ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune(".:*?/-", r)
			if !ok {
				return "", false
			}
		}
	}
	return strings.Join(addrs, ","), true
}
