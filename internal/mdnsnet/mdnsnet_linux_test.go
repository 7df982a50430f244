package mdnsnet

import (
	"testing"

	"golang.org/x/sys/unix"
)

// TestBindGroupSharesPort5353: two of our sockets (or ours and the
// system's mDNS daemon's) bind the same group and port; nothing is sent.
func TestBindGroupSharesPort5353(t *testing.T) {
	sa := &unix.SockaddrInet4{Port: 5353, Addr: [4]byte{224, 0, 0, 251}}
	a, err := BindGroup(unix.AF_INET, sa)
	if err != nil {
		t.Fatalf("first socket: %v", err)
	}
	defer a.Close()
	b, err := BindGroup(unix.AF_INET, sa)
	if err != nil {
		t.Fatalf("second socket on the same group and port: %v", err)
	}
	defer b.Close()
	if a.LocalAddr().String() != "224.0.0.251:5353" {
		t.Errorf("bound to %s, want the group address (never the wildcard)", a.LocalAddr())
	}
}
