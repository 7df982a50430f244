package slots

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/internal/nixtest"
)

// dialectOf is the dialect of a nixtest lane, by its release number.
func dialectOf(v nixtest.Version) Dialect {
	if v == nixtest.V28 {
		return DialectFor(2, 8)
	}
	return DialectFor(2, 26)
}

// clientState makes a /nix for nixtest clients and a Locker over its
// state directory, as a Nix installation has /nix/var/nix before any
// build.
func clientState(t *testing.T, v nixtest.Version) (nixDir string, l *Locker) {
	t.Helper()
	nixDir = nixtest.WorkDir(t, "slots-nix")
	stateDir := nixtest.ClientStateDir(nixDir)
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := New(stateDir, dialectOf(v))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return nixDir, l
}

// lockFiles lists current-load's files, sorted.
func lockFiles(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// lockedFiles lists current-load's files another process holds locked.
func lockedFiles(t *testing.T, dir string) []string {
	t.Helper()
	var held []string
	for _, n := range lockFiles(t, dir) {
		if lockedElsewhere(t, filepath.Join(dir, n)) {
			held = append(held, n)
		}
	}
	return held
}

var drvNonce atomic.Int64

// sleepDerivation builds for secs seconds, then writes the builder's
// hostname, like nixtest.TrivialDerivation.
func sleepDerivation(name string, secs int) string {
	n := fmt.Sprintf("%d-%d-%d", os.Getpid(), time.Now().UnixNano(), drvNonce.Add(1))
	return fmt.Sprintf(`derivation { name = %q; system = %q; builder = "/bin/sh"; `+
		`args = [ "-c" "/bin/sleep %d; read h < /proc/sys/kernel/hostname; echo $h > $out" ]; nonce = %q; }`,
		name, nixtest.System, secs, n)
}

func machineLine(uri string, b *nixtest.Builder, key string, maxJobs, speed int) string {
	return fmt.Sprintf("%s %s %s %d %d - - %s", uri, nixtest.System, key, maxJobs, speed, b.HostKeyBase64())
}

// TestNixNamesSlotLocksLikeLockName gives a real nix-build every URI of
// nameCases (2 slots each, ssh failing at once) and checks that the lock
// files its hook creates are exactly LockName(StoreURI(uri)) for slots 0
// and 1, and that Nix 2.26 refuses the machines file where StoreURI
// refuses the URI.
func TestNixNamesSlotLocksLikeLockName(t *testing.T) {
	nixtest.RequireTools(t)
	nixtest.EnsureTrixie(t)
	for _, v := range nixtest.Versions {
		t.Run(v.String(), func(t *testing.T) {
			var lines []string
			want := []string{"main-lock"}
			var refused []string
			for _, c := range nameCases {
				stem := c.legacy
				if v == nixtest.V226 {
					stem = c.rendered
					if stem == "" {
						stem = c.nix226
					}
					if stem == "" && c.legacy != "" {
						refused = append(refused, c.uri)
					}
				}
				if stem == "" {
					continue
				}
				lines = append(lines, c.uri+" "+nixtest.System+" - 2 1 - - -")
				want = append(want, LockName(stem, 0), LockName(stem, 1))
			}
			slices.Sort(want)
			want = slices.Compact(want)
			t.Run("accepted", func(t *testing.T) {
				t.Parallel()
				nixDir := nixtest.WorkDir(t, "slots-names")
				out, stderr, err := build(t, v, nixtest.ClientOptions{
					MachinesFile: nixtest.WriteMachinesFile(t, lines...),
					NixDir:       nixDir,
					SSHOpts:      "-oProxyCommand=false",
				}, 2*time.Minute)
				if err == nil || !strings.Contains(stderr, "Failed to find a machine for remote build") {
					t.Fatalf("build with unreachable machines: out %q, err %v, want no machine found\n%s", out, err, stderr)
				}
				got := lockFiles(t, filepath.Join(nixtest.ClientStateDir(nixDir), "current-load"))
				if !slices.Equal(got, want) {
					t.Fatalf("Nix created %d lock files, want %d\nonly Nix's: %q\nonly ours: %q",
						len(got), len(want), diff(got, want), diff(want, got))
				}
				t.Logf("%d URIs: Nix's %d lock files match LockName", len(lines), len(got))
			})
			for i, uri := range refused {
				t.Run(fmt.Sprintf("refused-%02d", i), func(t *testing.T) {
					t.Parallel()
					nixDir := nixtest.WorkDir(t, "slots-refused")
					_, stderr, err := build(t, v, nixtest.ClientOptions{
						MachinesFile: nixtest.WriteMachinesFile(t, uri+" "+nixtest.System+" - 2 1 - - -"),
						NixDir:       nixDir,
						SSHOpts:      "-oProxyCommand=false",
					}, time.Minute)
					if err == nil || !strings.Contains(stderr, "Cannot parse Nix store") && !strings.Contains(stderr, "invalid URI parameter") {
						t.Fatalf("%q: err %v, want Nix to refuse the store URI\n%s", uri, err, stderr)
					}
					for _, n := range lockFiles(t, filepath.Join(nixtest.ClientStateDir(nixDir), "current-load")) {
						if n != "main-lock" {
							t.Errorf("%q: Nix created lock file %q", uri, n)
						}
					}
				})
			}
		})
	}
}

func diff(a, b []string) []string {
	var d []string
	for _, s := range a {
		if !slices.Contains(b, s) {
			d = append(d, s)
		}
	}
	return d
}

// build runs nixtest.NixBuild for lane v, bounded by timeout.
func build(t *testing.T, v nixtest.Version, opts nixtest.ClientOptions, timeout time.Duration) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	opts.Version = v
	return nixtest.NixBuild(t, ctx, opts)
}

type result struct {
	out, stderr string
	err         error
	took        time.Duration
}

// buildAsync starts a build in the background. If the test ends first,
// its cleanup stops the build (by ending its context) and waits for it.
func buildAsync(t *testing.T, v nixtest.Version, opts nixtest.ClientOptions, timeout time.Duration) <-chan result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	ch := make(chan result, 1)
	finished := make(chan struct{})
	start := time.Now()
	opts.Version = v
	go func() {
		defer close(finished)
		out, stderr, err := nixtest.NixBuild(t, ctx, opts)
		ch <- result{out, stderr, err, time.Since(start)}
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-finished:
		case <-time.After(15 * time.Second):
			t.Errorf("background nix-build still running 15s after its context ended")
		}
	})
	return ch
}

// TestNixHoldsTheLockNamedByLockName runs a 3 s build on a builder for each
// way of writing its machines line, and checks while it runs that the
// only lock Nix holds is LockName(StoreURI(uri), 0) and that the Locker
// counts it as the local Nix's and cannot take it.
func TestNixHoldsTheLockNamedByLockName(t *testing.T) {
	nixtest.RequireTools(t)
	nixtest.EnsureTrixie(t)
	for _, v := range nixtest.Versions {
		t.Run(v.String(), func(t *testing.T) {
			key := nixtest.NewClientKey(t)
			type variant struct {
				name string
				uri  func(b *nixtest.Builder, alias string) string
			}
			variants := []variant{
				{"ssh-ng", func(b *nixtest.Builder, _ string) string { return b.StoreURI("ssh-ng") }},
				{"ssh", func(b *nixtest.Builder, _ string) string { return b.StoreURI("ssh") }},
				{"schemeless", func(b *nixtest.Builder, _ string) string { return "root@" + b.Addr.String() }},
				{"ssh_config-alias", func(_ *nixtest.Builder, alias string) string { return "ssh-ng://" + alias }},
				{"remote-store", func(b *nixtest.Builder, _ string) string { return b.StoreURI("ssh-ng") + "?remote-store=daemon" }},
				{"two-params", func(b *nixtest.Builder, _ string) string {
					return b.StoreURI("ssh-ng") + "?remote-store=daemon&compress=true"
				}},
			}
			for i, vr := range variants {
				t.Run(vr.name, func(t *testing.T) {
					t.Parallel()
					b := nixtest.StartBuilder(t, nixtest.BuilderOptions{Version: v, AuthorizedKeys: []string{key.Public}})
					alias := fmt.Sprintf("nixtest-slots-alias-%d", i)
					confDir := nixtest.WorkDir(t, "slots-ssh")
					conf := filepath.Join(confDir, "ssh_config")
					err := os.WriteFile(conf, []byte(fmt.Sprintf("Host %s\n  HostName %s\n  User root\n  HostKeyAlias %s\n", alias, b.Addr, alias)), 0o644)
					if err != nil {
						t.Fatal(err)
					}
					uri := vr.uri(b, alias)
					store, err := StoreURI(uri, dialectOf(v))
					if err != nil {
						t.Fatal(err)
					}
					nixDir, l := clientState(t, v)
					done := buildAsync(t, v, nixtest.ClientOptions{
						MachinesFile: nixtest.WriteMachinesFile(t, machineLine(uri, b, key.Path, 1, 1)),
						NixDir:       nixDir,
						SSHOpts:      "-F " + conf,
						BindPaths:    []string{confDir},
						Expr:         sleepDerivation("slots-"+vr.name, 3),
					}, 2*time.Minute)

					// Wait (bounded) until the build holds its slot and
					// nothing else (main-lock and the upload lock are held
					// briefly).
					want := []string{LockName(store, 0)}
					var held []string
					deadline := time.Now().Add(60 * time.Second)
					for !slices.Equal(held, want) {
						select {
						case r := <-done:
							t.Fatalf("build ended before its slot lock was seen as %q (last seen %q): %v\n%s", want, held, r.err, r.stderr)
						default:
						}
						if time.Now().After(deadline) {
							t.Fatalf("Nix never held exactly %q in 60s; last seen %q", want, held)
						}
						time.Sleep(50 * time.Millisecond)
						held = lockedFiles(t, l.Dir())
						for _, n := range held {
							// The hook also holds main-lock while it picks a
							// machine, and the upload lock while it copies.
							if n != want[0] && n != "main-lock" && !strings.HasSuffix(n, ".upload-lock") {
								t.Fatalf("Nix holds %q, want only %q", n, want[0])
							}
						}
					}
					st, err := l.Scan(uri, 1)
					wantState(t, "Scan during the build", st, err, State{MaxJobs: 1, OwnRunning: 1})
					st, err = l.Set(uri, 1, 1)
					wantState(t, "Set(1, 1) during the build", st, err, State{MaxJobs: 1, Want: 1, OwnRunning: 1})

					r := <-done
					if r.err != nil || r.out != b.Hostname+"\n" {
						t.Fatalf("build: out %q, err %v, want %q\n%s", r.out, r.err, b.Hostname, r.stderr)
					}
					upload := strings.ReplaceAll(store, "/", "_") + ".upload-lock"
					if !slices.Contains(lockFiles(t, l.Dir()), upload) {
						t.Errorf("no %q among %q", upload, lockFiles(t, l.Dir()))
					}
					st, err = l.Set(uri, 1, 1)
					wantState(t, "Set(1, 1) after the build", st, err, State{MaxJobs: 1, Want: 1, Held: 1})
					t.Logf("%s → lock %q, build %v", uri, want[0], r.took.Round(time.Millisecond))
				})
			}
		})
	}
}

// TestNixSkipsABuilderWhoseSlotsAreHeld: Nix prefers A (speed 2) to B
// (speed 1); with all of A's slots held, builds go to B and A's sshd
// sees no connection; released, the next build goes to A.
func TestNixSkipsABuilderWhoseSlotsAreHeld(t *testing.T) {
	nixtest.RequireTools(t)
	nixtest.EnsureTrixie(t)
	for _, v := range nixtest.Versions {
		t.Run(v.String(), func(t *testing.T) {
			t.Parallel()
			key := nixtest.NewClientKey(t)
			a := nixtest.StartBuilder(t, nixtest.BuilderOptions{Version: v, AuthorizedKeys: []string{key.Public}})
			b := nixtest.StartBuilder(t, nixtest.BuilderOptions{Version: v, AuthorizedKeys: []string{key.Public}})
			uriA, uriB := a.StoreURI("ssh-ng"), b.StoreURI("ssh-ng")
			machines := nixtest.WriteMachinesFile(t, machineLine(uriA, a, key.Path, 2, 2), machineLine(uriB, b, key.Path, 2, 1))
			nixDir, l := clientState(t, v)
			opts := nixtest.ClientOptions{MachinesFile: machines, NixDir: nixDir}

			st, err := l.Set(uriA, 2, 2)
			wantState(t, "A down: Set(2, 2)", st, err, State{MaxJobs: 2, Want: 2, Held: 2})
			before := len(sshdLog(a))
			for i := range 2 {
				opts.Expr = nixtest.TrivialDerivation(fmt.Sprintf("slots-skip-%d", i))
				out, stderr, err := build(t, v, opts, 2*time.Minute)
				if err != nil || out != b.Hostname+"\n" {
					t.Fatalf("build %d with A held: out %q, err %v, want B %q\n%s", i, out, err, b.Hostname, stderr)
				}
			}
			if extra := sshdLog(a)[before:]; strings.Contains(extra, "Connection from") || strings.Contains(extra, "Accepted") {
				t.Fatalf("A's sshd saw a connection while its slots were held:\n%s", extra)
			}

			if err := l.Release(uriA); err != nil {
				t.Fatal(err)
			}
			opts.Expr = nixtest.TrivialDerivation("slots-skip-released")
			out, stderr, err := build(t, v, opts, 2*time.Minute)
			if err != nil || out != a.Hostname+"\n" {
				t.Fatalf("build with A released: out %q, err %v, want A %q (the faster)\n%s", out, err, a.Hostname, stderr)
			}
			if !strings.Contains(sshdLog(a)[before:], "Accepted") {
				t.Fatalf("A built but its sshd log shows no login:\n%s", sshdLog(a)[before:])
			}
		})
	}
}

// sshdLog is the sshd part of b.Logs().
func sshdLog(b *nixtest.Builder) string {
	s, _, _ := strings.Cut(b.Logs(), "--- nix-daemon.log\n")
	return s
}

// TestNixPostponesWhileAllSlotsAreHeld: the only builder's slots are all
// held and --max-jobs 0: the build neither fails nor connects; it waits,
// and completes on the builder once the slots are released.
func TestNixPostponesWhileAllSlotsAreHeld(t *testing.T) {
	nixtest.RequireTools(t)
	nixtest.EnsureTrixie(t)
	for _, v := range nixtest.Versions {
		t.Run(v.String(), func(t *testing.T) {
			t.Parallel()
			key := nixtest.NewClientKey(t)
			b := nixtest.StartBuilder(t, nixtest.BuilderOptions{Version: v, AuthorizedKeys: []string{key.Public}})
			uri := b.StoreURI("ssh-ng")
			nixDir, l := clientState(t, v)
			st, err := l.Set(uri, 1, 1)
			wantState(t, "Set(1, 1)", st, err, State{MaxJobs: 1, Want: 1, Held: 1})
			before := len(sshdLog(b))

			done := buildAsync(t, v, nixtest.ClientOptions{
				MachinesFile: nixtest.WriteMachinesFile(t, machineLine(uri, b, key.Path, 1, 1)),
				NixDir:       nixDir,
				Expr:         nixtest.TrivialDerivation("slots-postpone"),
			}, 90*time.Second)
			select {
			case r := <-done:
				t.Fatalf("build ended while the only builder was held: out %q, err %v\n%s", r.out, r.err, r.stderr)
			case <-time.After(3 * time.Second):
			}
			if extra := sshdLog(b)[before:]; strings.Contains(extra, "Connection from") {
				t.Fatalf("the builder's sshd saw a connection while its slots were held:\n%s", extra)
			}
			released := time.Now()
			if err := l.Release(uri); err != nil {
				t.Fatal(err)
			}
			select {
			case r := <-done:
				if r.err != nil || r.out != b.Hostname+"\n" {
					t.Fatalf("build after release: out %q, err %v\n%s", r.out, r.err, r.stderr)
				}
				t.Logf("held 3s, then the build finished %v after the release (%v in all)",
					time.Since(released).Round(time.Millisecond), r.took.Round(time.Millisecond))
			case <-time.After(60 * time.Second):
				t.Fatal("build still waiting 60s after the slots were released")
			}
		})
	}
}
