package slots_test

import (
	"fmt"
	"log"
	"os"

	"github.com/nixrb-discover/nixrb-discover/discover/slots"
)

// A builder fails its health check: hold all its slots so the local Nix
// skips it without connecting; once it is healthy again, hold only the
// builds other clients run there.
func Example() {
	state, err := os.MkdirTemp("", "nix-state") // normally "" (/nix/var/nix)
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(state)
	l, err := slots.New(state, slots.DialectFor(2, 26))
	if err != nil {
		log.Fatal(err)
	}
	defer l.Close()

	const b1 = "ssh-ng://nix-ssh@b1.tail1234.ts.net"
	st, err := l.Set(b1, 4, 4) // down: Nix sees it full
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("down: held %d of %d, free %d\n", st.Held, st.MaxJobs, st.Free())

	st, err = l.Scan(b1, 4) // back: how many builds does the local Nix run there?
	if err != nil {
		log.Fatal(err)
	}
	advertRunning := 1 // builds the builder says it runs, from its advert
	st, err = l.Set(b1, 4, max(0, advertRunning-st.OwnRunning))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("up: held %d of %d, free %d\n", st.Held, st.MaxJobs, st.Free())
	fmt.Println(slots.LockName(st.StoreURI, 0))
	// Output:
	// down: held 4 of 4, free 0
	// up: held 1 of 4, free 3
	// ssh-ng:__nix-ssh@b1.tail1234.ts.net-0
}
