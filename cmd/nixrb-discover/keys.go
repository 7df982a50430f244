package main

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strings"

	"github.com/nixrb-discover/nixrb-discover/discover/tailnet"
	"github.com/nixrb-discover/nixrb-discover/wire"
)

// loadSigningKey reads --sign-key; given the fleet's public key instead,
// it says which file to use.
func loadSigningKey(path string) (*wire.SigningKey, error) {
	k, err := wire.LoadSigningKey(path)
	if err == nil {
		return k, nil
	}
	if _, perr := wire.LoadTrustKey(path); perr == nil {
		return nil, usageError("--sign-key %s: this is the fleet's public key; use the private key %s (builders sign with it, clients trust the .pub)", path, strings.TrimSuffix(path, ".pub"))
	}
	return nil, &exitError{code: 1, err: err, hint: "create one with: nixrb-discover keygen --out FILE"}
}

// loadTrustKey reads --trust-key; given the fleet's private key instead,
// it says which file to use (and that the private key stays on builders).
func loadTrustKey(path string) (wire.TrustKey, error) {
	k, err := wire.LoadTrustKey(path)
	if err == nil {
		return k, nil
	}
	if b, rerr := os.ReadFile(path); rerr == nil && bytes.Contains(b, []byte("PRIVATE KEY")) {
		pub := path + ".pub"
		if strings.HasSuffix(path, ".pub") {
			pub = "the .pub written with it"
		}
		return k, usageError("--trust-key %s: this is the fleet's private key; clients need the public key %s (keep the private key on builders only)", path, pub)
	}
	return k, usageError("--trust-key %s: %v", path, err)
}

// warnNoTailscaled says at once, not after a silent retry, that the
// tailnet waits for a tailscaled that is not there (on macOS: one of the
// two Tailscales a root daemon can reach, see tailnet.FindLocalAPI).
func warnNoTailscaled(log *slog.Logger, socket, otherwise string) {
	if socket == "" {
		if where, found := tailnet.FindLocalAPI(runtime.GOOS, os.DirFS("/")); !found {
			log.Warn(fmt.Sprintf("waiting for %s (or use %s)", where, otherwise))
		}
		return
	}
	if _, err := os.Stat(socket); err != nil {
		log.Warn(fmt.Sprintf("waiting for tailscaled at %s (or use %s)", socket, otherwise), "err", err)
	}
}
