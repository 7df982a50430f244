package doctor_test

import (
	"context"
	"fmt"

	"github.com/nixrb-discover/nixrb-discover/doctor"
)

// Run as root with the defaults of a client installed the usual way, then
// print each check as the CLI does.
func ExampleRun() {
	rep := doctor.Run(context.Background(), doctor.Options{Builder: "b1.tail1234.ts.net"})
	for _, c := range rep.Checks {
		if c.OK {
			fmt.Println("✔", c.Name)
		} else {
			fmt.Println("✘", c.Name, "— fix:", c.Fix)
		}
	}
	if !rep.OK() {
		fmt.Println("Nix will not use this builder")
	}
}
