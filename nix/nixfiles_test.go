package nix

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/internal/hoststate"
	"github.com/nixrb-discover/nixrb-discover/systemd"
)

// nixCmd runs a Nix tool (Debian's nix-bin 2.8 here), bounded.
func nixCmd(t *testing.T, name string, args ...string) ([]byte, error) {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not installed (Debian package nix-bin; scripts/test.sh installs it)", name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, p, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Logf("%s %s: %s", name, strings.Join(args, " "), stderr.String())
	}
	return out, err
}

// evalJSON evaluates a Nix expression (builtins only) to JSON.
func evalJSON(t *testing.T, expr string, v any) {
	t.Helper()
	out, err := nixCmd(t, "nix-instantiate", "--eval", "--strict", "--json", "--expr", expr)
	if err != nil {
		t.Fatalf("nix-instantiate --eval %s: %v", expr, err)
	}
	if err := json.Unmarshal(out, v); err != nil {
		t.Fatalf("%s: %v", out, err)
	}
}

// nixFiles is every Nix file we ship: flake.nix and nix/** (but the
// vendored nixpkgs lib).
func nixFiles(t *testing.T) []string {
	t.Helper()
	files := []string{"../flake.nix"}
	err := filepath.WalkDir(".", func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() && p == filepath.Join("testdata", "nixpkgs-lib") {
			return filepath.SkipDir // vendored nixpkgs lib, not ours
		}
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".nix") {
			files = append(files, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// TestParse: every Nix file parses (nix-instantiate --parse).
func TestParse(t *testing.T) {
	files := nixFiles(t)
	if len(files) < 5 {
		t.Fatalf("only %d Nix files: %v", len(files), files)
	}
	for _, f := range files {
		if _, err := nixCmd(t, "nix-instantiate", "--parse", f); err != nil {
			t.Errorf("%s does not parse: %v", f, err)
		}
	}
}

// goParse reads a unit file the way units.nix does: single values as
// strings, repeated keys as lists.
func goParse(b []byte) map[string]map[string]any {
	u := map[string]map[string]any{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		if m := regexp.MustCompile(`^\[([A-Za-z]+)\]$`).FindStringSubmatch(line); m != nil {
			section = m[1]
			u[section] = map[string]any{}
			continue
		}
		m := regexp.MustCompile(`^([A-Za-z]+)=(.*)$`).FindStringSubmatch(line)
		if m == nil {
			continue
		}
		switch old := u[section][m[1]].(type) {
		case nil:
			u[section][m[1]] = m[2]
		case string:
			u[section][m[1]] = []any{old, m[2]}
		case []any:
			u[section][m[1]] = append(old, m[2])
		}
	}
	return u
}

// TestUnitsNix: the module's unit parser reads the embedded units exactly
// as Go does, so the NixOS services carry the same directives.
func TestUnitsNix(t *testing.T) {
	for name, b := range systemd.Units() {
		var got map[string]map[string]any
		evalJSON(t, `(import ./units.nix).parseFile ../systemd/`+name, &got)
		want := goParse(b)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: units.nix reads\n%v\nGo reads\n%v", name, got, want)
		}
		if len(want["Service"]) < 30 {
			t.Errorf("%s: only %d [Service] directives parsed", name, len(want["Service"]))
		}
	}
}

// TestVendorHash recomputes package.nix's vendorHash the way
// buildGoModule's vendor derivation makes it: `go mod vendor`, then the
// NAR hash of the tree. It fails, naming the new value, when a change of
// dependencies or imports makes the flake's hash stale. Offline: modules
// come from the local module cache (GOPROXY=off).
func TestVendorHash(t *testing.T) {
	if testing.Short() {
		t.Skip("copies the vendor tree (~60 MB)")
	}
	pkg, err := os.ReadFile("package.nix")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`vendorHash = "(sha256-[A-Za-z0-9+/=]+)";`).FindSubmatch(pkg)
	if m == nil {
		t.Fatal("package.nix: no vendorHash = \"sha256-...\"")
	}
	tmp := t.TempDir()
	// go.mod and go.sum are read from copies (-modfile), so nothing here
	// can touch the real ones.
	for _, f := range []string{"go.mod", "go.sum"} {
		b, err := os.ReadFile(filepath.Join("..", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(tmp, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	vendor := filepath.Join(tmp, "vendor")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "mod", "vendor", "-o", vendor)
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "GOFLAGS=-modfile="+filepath.Join(tmp, "go.mod"), "GOPROXY=off", "GOTOOLCHAIN=local")
	if out, err := cmd.CombinedOutput(); err != nil {
		if bytes.Contains(out, []byte("GOPROXY=off")) || bytes.Contains(out, []byte("module lookup disabled")) {
			t.Skipf("a module is missing from the local cache (go mod download fills it): %s", out)
		}
		t.Fatalf("go mod vendor: %v\n%s", err, out)
	}
	out, err := nixCmd(t, "nix", "--extra-experimental-features", "nix-command", "hash", "path", "--type", "sha256", "--sri", vendor)
	if err != nil {
		t.Fatalf("nix hash path: %v", err)
	}
	if got := strings.TrimSpace(string(out)); got != string(m[1]) {
		t.Errorf("nix/package.nix vendorHash is stale: set it to %q (was %q)", got, m[1])
	}
}

// TestAuthorizedKeysCommandPath shows why the module's
// AuthorizedKeysCommand is a copied script in /etc/ssh and not
// /run/current-system/sw/bin/nixrb-discover: a real sshd refuses a command
// whose resolved path crosses a group-writable directory such as a NixOS
// /nix/store (1775 root:nixbld), even through a root-owned symlink, and
// accepts a copied file in root-owned 0755 directories.
//
// The test builds its own store-like directory (1775, root and a group of
// its own with two members, as nixbld has nixbld1..N) rather than relying
// on the machine's /nix/store, which is 0755 root:root on a fresh Debian
// machine with nix-bin.
func TestAuthorizedKeysCommandPath(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: sshd checks the command path as root")
	}
	for _, tool := range []string{"/usr/sbin/sshd", "ssh", "ssh-keygen", "groupadd"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (openssh-server, openssh-client, passwd)", tool)
		}
	}
	hoststate.EnsureSSHDPrivsepDir(t)
	// Outside /tmp (world-writable): every directory up to / must be
	// root-owned and not group- or world-writable for the good case.
	root, err := os.MkdirTemp("/var/lib", "nixrb-akc-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Chmod(root, 0o755))
	clientKey := filepath.Join(root, "id_ed25519")
	hostKey := filepath.Join(root, "host_ed25519")
	for _, k := range []string{clientKey, hostKey} {
		if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", k).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen: %v\n%s", err, out)
		}
	}
	pub, err := os.ReadFile(clientKey + ".pub")
	must(err)
	script := "#!/bin/sh\necho '" + strings.TrimSpace(string(pub)) + "'\n"

	// A store like NixOS's (1775 root:nixbld, a group with members, so
	// Debian's patch that tolerates a single-member group does not apply)
	// holding the command, behind a root-owned symlink, as
	// /run/current-system/sw/bin is.
	store := filepath.Join(root, "store")
	hoststate.GroupWritableDir(t, store)
	storePath := filepath.Join(store, "0000000000000000000000000000000-nixrb-akc-test-keys")
	must(os.WriteFile(storePath, []byte(script), 0o555))
	must(os.Mkdir(filepath.Join(root, "sw"), 0o755))
	must(os.Symlink(storePath, filepath.Join(root, "sw", "keys")))
	// Like environment.etc."ssh/nixrb-discover-authorized-keys" with a mode: a copy.
	must(os.Mkdir(filepath.Join(root, "etc"), 0o755))
	must(os.WriteFile(filepath.Join(root, "etc", "keys"), []byte(script), 0o755))

	login := func(t *testing.T, command string) (bool, string) {
		t.Helper()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		must(err)
		port := fmt.Sprint(ln.Addr().(*net.TCPAddr).Port)
		ln.Close()
		cfg := filepath.Join(root, "sshd_config")
		must(os.WriteFile(cfg, []byte(strings.Join([]string{
			"ListenAddress 127.0.0.1:" + port,
			"HostKey " + hostKey,
			"PidFile none",
			"UsePAM no",
			"PermitRootLogin prohibit-password",
			"PasswordAuthentication no",
			"KbdInteractiveAuthentication no",
			"AuthorizedKeysFile none",
			"AuthorizedKeysCommand " + command + " %u",
			"AuthorizedKeysCommandUser root",
		}, "\n")+"\n"), 0o600))
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// -d: serve one connection, then exit; -e: log to stderr.
		sshd := exec.CommandContext(ctx, "/usr/sbin/sshd", "-d", "-e", "-f", cfg)
		stderr, err := sshd.StderrPipe()
		must(err)
		must(sshd.Start())
		defer sshd.Process.Kill()
		var log strings.Builder
		listening := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			sc := bufio.NewScanner(stderr)
			for sc.Scan() {
				log.WriteString(sc.Text() + "\n")
				if strings.Contains(sc.Text(), "Server listening on") {
					close(listening)
				}
			}
		}()
		select {
		case <-listening:
		case <-done:
			sshd.Wait()
			t.Fatalf("sshd exited:\n%s", log.String())
		case <-ctx.Done():
			t.Fatal("sshd did not start listening within 30s")
		}
		ssh := exec.CommandContext(ctx, "ssh", "-F", "/dev/null", "-i", clientKey, "-p", port,
			"-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
			"-o", "ConnectTimeout=5", "root@127.0.0.1", "true")
		out, err := ssh.CombinedOutput()
		<-done // sshd -d exits after the one connection
		sshd.Wait()
		return err == nil, string(out) + log.String()
	}

	t.Run("store-path-behind-a-symlink-is-refused", func(t *testing.T) {
		ok, log := login(t, filepath.Join(root, "sw", "keys"))
		if ok {
			t.Fatalf("sshd accepted a command under a group-writable directory:\n%s", log)
		}
		if !strings.Contains(log, "Unsafe AuthorizedKeysCommand") {
			t.Errorf("refused, but not for the path:\n%s", log)
		}
	})
	t.Run("copied-script-is-accepted", func(t *testing.T) {
		if ok, log := login(t, filepath.Join(root, "etc", "keys")); !ok {
			t.Fatalf("login with the key from the copied command failed:\n%s", log)
		}
	})
}

// TestFlakeOutputs evaluates flake.nix's outputs and nix/package.nix
// with a stub nixpkgs (buildGoModule returns its arguments): the shape
// nix flake check would look at, without fetching nixpkgs.
func TestFlakeOutputs(t *testing.T) {
	const expr = `
	let
	  stubPkgs = goVersion: rec {
	    go = { version = goVersion; };
	    lib = { cleanSource = p: p; platforms.linux = [ "x86_64-linux" ]; };
	    buildGoModule = args: args // { builtWith = "buildGoModule"; };
	    buildGo126Module = args: args // { builtWith = "buildGo126Module"; };
	    callPackage = f: extra: let fn = import f; in fn (builtins.intersectAttrs (builtins.functionArgs fn) (stubPkgs goVersion) // extra);
	    stdenv.hostPlatform.system = "x86_64-linux";
	  };
	  nixpkgs = {
	    lib.genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
	    legacyPackages = { x86_64-linux = stubPkgs "1.26.8"; aarch64-linux = stubPkgs "1.25.4"; };
	  };
	  flake = import ../flake.nix;
	  self = flake.outputs { inherit self nixpkgs; };
	  p = self.packages.x86_64-linux.default;
	in {
	  inherit (p) pname vendorHash subPackages builtWith;
	  src = toString p.src;
	  oldGo = self.packages.aarch64-linux.default.builtWith;
	  module = toString self.nixosModules.default;
	  check = self.checks.x86_64-linux.package.pname;
	}`
	var got struct {
		Pname, VendorHash, BuiltWith, Src, OldGo, Module, Check string
		SubPackages                                             []string
	}
	evalJSON(t, expr, &got)
	abs, _ := filepath.Abs("..")
	if got.Pname != "nixrb-discover" || got.Check != "nixrb-discover" || !reflect.DeepEqual(got.SubPackages, []string{"cmd/nixrb-discover"}) {
		t.Errorf("package: %+v", got)
	}
	if got.Src != abs || got.Module != filepath.Join(abs, "nix", "module.nix") {
		t.Errorf("src %s, module %s: want the repository and nix/module.nix", got.Src, got.Module)
	}
	if !strings.HasPrefix(got.VendorHash, "sha256-") {
		t.Errorf("vendorHash %q", got.VendorHash)
	}
	// go.mod wants Go 1.26.6: an older default Go switches to buildGo126Module.
	if got.BuiltWith != "buildGoModule" || got.OldGo != "buildGo126Module" {
		t.Errorf("built with %s (Go 1.26.8) and %s (Go 1.25.4)", got.BuiltWith, got.OldGo)
	}
}
