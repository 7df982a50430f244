// Package slots holds Nix's own build-hook slot locks, so that the local
// Nix never connects to a builder the client knows is down and sees the
// load other clients put on each builder.
//
// # How Nix uses the locks
//
// Nix's build hook (build-remote.cc, the same logic from 2.8 to 2.35)
// considers each eligible machine of the machines file in turn and tries a
// non-blocking exclusive flock on
// <state-dir>/current-load/<escapeUri(storeUri)>-<slot> for every slot
// 0..maxJobs-1, where escapeUri replaces each '/' with '_'. A slot it cannot
// lock counts as load; a machine with no free slot is skipped without any
// connection. When machines of the right type exist but none has a free
// slot and the build cannot run locally (--max-jobs 0), the hook answers
// "# postpone" and Nix asks again a few seconds later. The hook also takes
// current-load/main-lock while it scans and <uri>.upload-lock while it
// copies; this package never touches either.
//
// So a [Locker] that holds all of a machine's slots makes Nix skip it, and
// one that holds some makes Nix see them as load. Locks are flock locks:
// the kernel drops them when the process dies, so a crashed client
// degrades to a plain machines file, never to a blocked Nix.
//
// # Names
//
// [StoreURI] turns a machines-file URI into the store URI the hook names
// its lock files after, which depends on the Nix release ([Dialect]); and
// [LockName] gives a slot's file name. For the URIs the client writes
// (ssh-ng://user@host, ssh://user@host, a bare host) both dialects agree;
// they differ once a URI has query parameters or percent escapes.
//
// # Usage
//
//	l, err := slots.New("", slots.DialectFor(2, 26)) // /nix/var/nix
//	if err != nil { ... }
//	defer l.Close()
//	// A builder failed its check: Nix must not use it.
//	st, err := l.Set("ssh-ng://root@b1.tail1234.ts.net", 4, 4)
//	// Later: it is healthy and its advert says it runs 2 builds.
//	st, err = l.Scan("ssh-ng://root@b1.tail1234.ts.net", 4)
//	others := max(0, 2-st.OwnRunning) // builds of other clients
//	st, err = l.Set("ssh-ng://root@b1.tail1234.ts.net", 4, others)
//
// # Limits
//
// Probing a slot means locking it for a few microseconds, exactly as
// Nix's hooks probe each other: a hook that scans in that instant counts
// the slot as busy once, and a probe that meets a hook's scan counts one
// slot too many in State.OwnRunning. Only one Locker per host should work
// on one directory: slots another Locker holds count as the local Nix's.
// Each held slot costs one file descriptor.
package slots
