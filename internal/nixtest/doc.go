// Package nixtest gives tests real Nix peers: remote builders (a real sshd
// in front of a real nix-daemon, each in network, mount and UTS namespaces
// of its own) and real nix-build clients that offload to them.
//
// Two Nix versions are available as lanes, listed in [Versions]: Nix 2.8
// (Debian bookworm's nix-bin on the host) and Nix 2.26 (Debian trixie's
// nix-bin, run from a debootstrap chroot that [EnsureTrixie] builds once,
// caches as a zstd tarball and unpacks per test process).
//
// # Usage
//
//	func TestOffload(t *testing.T) {
//		for _, v := range nixtest.Versions {
//			t.Run(v.String(), func(t *testing.T) {
//				key := nixtest.NewClientKey(t)
//				b := nixtest.StartBuilder(t, nixtest.BuilderOptions{
//					Version:        v,
//					AuthorizedKeys: []string{key.Public},
//				})
//				machines := nixtest.WriteMachinesFile(t, b.MachineLine("ssh-ng", key.Path))
//				out, stderr, err := nixtest.NixBuild(t, t.Context(), nixtest.ClientOptions{
//					Version:      v,
//					MachinesFile: machines,
//					Expr:         nixtest.TrivialDerivation("offload"),
//				})
//				// out == b.Hostname + "\n" when the build ran on b.
//			})
//		}
//	}
//
// Each test that uses Nix 2.26 holds a reference to the process's
// unpacked chroot, removed when the last holder finishes; a parent test
// that calls [EnsureTrixie] first keeps one chroot for all its subtests.
//
// # Requirements
//
// Everything needs root on Linux and the Debian packages openssh-server,
// nix-bin, debootstrap, zstd and iproute2. Call [RequireTools] (the
// fixtures call it themselves) to skip with a clear message where they are
// missing. The first Nix 2.26 use downloads Debian trixie packages from the
// mirror in this machine's apt sources (~45 s); `go test -run
// TestPrepareTrixie ./internal/nixtest` builds that cache ahead of time.
//
// # Failure injection
//
// [Builder.KillSSHD] (new connections refused, open sessions survive),
// [Builder.StopSSHD] (TCP accepted, no banner: Nix waits forever),
// [Builder.LinkDown] (packets silently dropped), [Builder.SetHostKey]
// (re-key), [Builder.RestartSSHD], [Builder.Exec] inside the builder.
//
// # Facts the tests pin
//
// With the builder's user not in trusted-users, ssh-ng fails with "you are
// not privileged to build input-addressed derivations" for every client
// and builder pairing except a 2.26 client on a 2.26 builder, which builds:
// the client learns from the handshake that it is untrusted, copies the
// .drv over and builds it by path. ssh:// and ssh-ng:// both work across
// versions.
//
// # Isolation
//
// Builders are addressed on private veth pairs in 10.232.0.0/16, one /30
// per builder, so test traffic never leaves namespaces the test created.
// Every builder and client has its own /nix store and nix.conf; root's
// known_hosts and the host's /nix are never touched. All processes are
// stopped by PID, namespaces deleted and work directories removed in
// t.Cleanup.
package nixtest
