package doctor

import (
	"fmt"
	"strings"
	"time"

	"github.com/nixrb-discover/nixrb-discover/health"
	"github.com/nixrb-discover/nixrb-discover/render"
)

// sshChecks turns the Checker's verdict into one check per step Nix takes
// after the banner: host key, login, Nix on PATH and handshake, trust.
// Steps before the failing one passed; later ones are not reported.
func sshChecks(r *Report, v render.NixVersion, label, addr, user, keyPath, ident string, m render.Machine, res health.Result) {
	hostKey := label + ": host key matches field 8"
	login := fmt.Sprintf("%s: %s accepts key %s for user %s", label, addr, keyPath, user)
	prog := "nix-daemon --stdio"
	if m.URI.Scheme == health.ProtocolSSH {
		prog = "nix-store --serve --write"
	}
	onPath := fmt.Sprintf("%s: Nix is on %s's non-interactive PATH", label, user)
	handshake := fmt.Sprintf("%s: %s answers the Nix handshake", label, prog)
	trusted := fmt.Sprintf("%s: %s is a trusted user of the builder's Nix", label, user)

	keyOK := func() { r.pass(hostKey, res.PresentedKeyFingerprint) }
	loginOK := func() { keyOK(); r.pass(login, "") }
	switch res.Reason {
	case health.ReasonOK:
		loginOK()
		r.pass(onPath, "")
		v := "protocol " + res.ProtocolVersion
		if res.NixVersion != "" {
			v += ", Nix " + res.NixVersion
		}
		r.pass(handshake, fmt.Sprintf("%s, rtt %s", v, res.RTT.Round(10*time.Microsecond)))
		switch res.Trusted {
		case health.TrustedYes:
			r.pass(trusted, "the daemon says so")
		case health.TrustedNo:
			r.pass(fmt.Sprintf("%s: %s may build without being a trusted user", label, user),
				fmt.Sprintf("the daemon does not trust %s; %s copies the derivation and builds it by path, which an untrusted user may do", user, v))
		default:
			r.pass(fmt.Sprintf("%s: whether %s is trusted is not reported by protocol %s (Nix before 2.15, or ssh://)",
				label, user, res.ProtocolVersion),
				"if builds fail with \"not privileged to build input-addressed derivations\", add "+user+" to trusted-users on the builder")
		}
	case health.ReasonHostKeyMismatch:
		r.fail(hostKey, res.Detail,
			"the builder was re-keyed or this is not the builder: update field 8 (base64 of its new host key line) "+
				"or let the client re-learn it from the builder's advert")
	case health.ReasonAuthRefused:
		keyOK()
		r.fail(login, res.Detail,
			fmt.Sprintf("add the client key (%s.pub) to %s's authorized_keys on the builder, or enable enrolment "+
				"(the builder's AuthorizedKeysCommand nixrb-discover authorized-keys)", keyPath, user))
	case health.ReasonNixNotFound:
		loginOK()
		r.fail(onPath, res.Detail,
			"Nix must be on the remote's non-interactive PATH: on NixOS it is; elsewhere set PATH in "+user+"'s ~/.bashrc "+
				"before its interactive check, or use `?remote-program=/nix/var/nix/profiles/default/bin/nix-daemon` in the URI")
	case health.ReasonNotTrusted:
		loginOK()
		r.pass(onPath, "")
		r.pass(handshake, "protocol "+res.ProtocolVersion+", Nix "+res.NixVersion)
		r.fail(trusted, res.Detail,
			fmt.Sprintf("add %s to trusted-users on the builder (nix.settings.trusted-users on NixOS): "+
				"%s sends a bare derivation, which only a trusted user may build (CppNix 2.16 and Lix build by path instead)", user, v))
	case health.ReasonDaemonError:
		loginOK()
		r.pass(onPath, "")
		r.fail(handshake, res.Detail,
			"make the remote command's stdout clean (no shell startup file may print) and read the remote error above")
	case health.ReasonTimeout:
		tailscale := strings.Contains(ident, "Tailscale") || strings.Contains(res.Detail, "Tailscale SSH")
		switch {
		case tailscale:
			r.fail(login, "timeout: "+res.Detail+" (server "+ident+")",
				"a Tailscale SSH rule in check mode waits for a browser: use accept mode for the builder user "+user)
		case strings.Contains(res.Detail, "SSH handshake"):
			r.fail(login, "timeout: "+res.Detail+" (the server sent its banner, then no login progress)",
				"if the builder uses Tailscale SSH, a rule in check mode waits for a browser: use accept mode for "+user+
					"; otherwise sshd is overloaded or hung: restart it")
		default:
			r.fail(fmt.Sprintf("%s: SSH session on %s completes", label, addr), "timeout: "+res.Detail,
				"the builder or its sshd stopped answering: restart sshd, check the network (Nix would stall on it)")
		}
	default:
		r.fail(fmt.Sprintf("%s: SSH session on %s completes", label, addr), string(res.Reason)+": "+res.Detail,
			"check the builder is up and its sshd answers (ssh -i KEY USER@HOST as root)")
	}
}
