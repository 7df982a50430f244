// Package doctor explains why Nix does or does not use a remote builder.
//
// [Run] goes through the classic remote-builder pitfalls in the order Nix
// meets them and returns one [Check] per step, each with a concrete fix
// when it fails:
//
//   - Nix's effective `builders` setting (from the real `nix show-config
//     --json`, or `nix config show --json`) includes our machines file;
//   - the machines file parses as the local Nix reads it;
//   - builders on a non-22 port have the ssh_config Host alias that a Nix
//     before 2.31 needs, and root's ssh_config includes the alias file;
//   - for each builder: the SSH key in field 3 is readable and has no
//     passphrase, the host resolves with root's resolver, TCP reaches
//     sshd and it sends its banner, the host key matches field 8, the key
//     is accepted, Nix is on the remote's non-interactive PATH, and the
//     remote user is trusted.
//
// Run must run as the user nix-daemon runs builds as (root): that user's
// resolver, keys and ssh_config are what Nix will use. Every step is
// bounded by [Options.Timeout].
package doctor
