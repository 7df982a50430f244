package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/nixrb-discover/nixrb-discover/wire"
	"github.com/peterbourgon/ff/v3/ffcli"
)

func newKeygenCmd(e *env) *ffcli.Command {
	fs := flag.NewFlagSet("nixrb-discover keygen", flag.ContinueOnError)
	out := fs.String("out", "", "path of the new private key; the public key goes to the same path plus .pub")
	return &ffcli.Command{
		Name:       "keygen",
		ShortUsage: "nixrb-discover keygen --out FILE",
		ShortHelp:  "Create an ed25519 fleet key pair for signing mDNS adverts",
		LongHelp: strings.TrimSpace(`
Writes a new fleet key: the private key to FILE (OpenSSH format, mode 0600)
and the public key to FILE.pub (one authorized_keys line). Builders sign
their mDNS adverts with the private key; clients accept only mDNS adverts
signed by a public key they trust. Tailnet adverts need no fleet key.
Existing files are never overwritten.

Example:
  nixrb-discover keygen --out /etc/nixrb-discover/fleet-key`),
		FlagSet: fs,
		Exec: func(ctx context.Context, args []string) error {
			if len(args) > 0 {
				return usageError("keygen takes no arguments (got %q); name the key file with --out", args[0])
			}
			if *out == "" {
				return usageError("keygen needs --out FILE")
			}
			k, err := wire.GenerateFleetKey()
			if err != nil {
				return err
			}
			if err := k.WriteFleetKey(*out); err != nil {
				if errors.Is(err, os.ErrExist) {
					return &exitError{code: 1, err: err, hint: "keygen never replaces a key: remove the old files first, or choose another --out"}
				}
				return err
			}
			fmt.Fprintf(e.stdout, "wrote %s (private: give it to each builder, keep it secret)\n", *out)
			fmt.Fprintf(e.stdout, "wrote %s.pub (public: trust it on each client)\n", *out)
			fmt.Fprintf(e.stdout, "key id %s\n%s\n", k.KeyID, k.TrustKey())
			return nil
		},
	}
}
