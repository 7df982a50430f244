package health_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/nixrb-discover/nixrb-discover/health"
	"golang.org/x/crypto/ssh"
)

// A client checks a builder with the key Nix uses (field 3 of the
// machines file) against the host key it was told (field 8).
func ExampleChecker() {
	keyPEM, err := os.ReadFile("/etc/nix/id_builder")
	if err != nil {
		log.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(keyPEM)
	if err != nil {
		log.Fatal(err)
	}
	hostKey, _, _, _, err := ssh.ParseAuthorizedKey([]byte("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHn9..."))
	if err != nil {
		log.Fatal(err)
	}
	c := &health.Checker{Signer: signer}
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r := c.Check(ctx, health.Target{
		Key:      "static:b1.tail1234.ts.net",
		Addr:     "b1.tail1234.ts.net:22",
		User:     "builder",
		Protocol: health.ProtocolSSHNG,
		HostKey:  hostKey,
	})
	if !r.OK {
		fmt.Printf("b1: %s: %s\n", r.Reason, r.Detail)
		return
	}
	fmt.Printf("b1: Nix %s, protocol %s, trusted %s, rtt %s\n", r.NixVersion, r.ProtocolVersion, r.Trusted, r.RTT)
}
