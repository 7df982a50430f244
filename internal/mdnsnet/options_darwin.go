package mdnsnet

import "golang.org/x/sys/unix"

// groupOptions on macOS: mDNSResponder holds port 5353 with SO_REUSEPORT,
// and BSD lets a second socket bind it only if that one sets
// SO_REUSEPORT too (SO_REUSEADDR as well, for older releases). There is
// no IP_MULTICAST_ALL: BSD delivers a group's packets only to sockets
// that joined that group on the arriving interface, which is what
// Linux's IP_MULTICAST_ALL off gives.
func groupOptions(family int) []sockOpt {
	o := []sockOpt{
		{"SO_REUSEADDR", unix.SOL_SOCKET, unix.SO_REUSEADDR, 1},
		{"SO_REUSEPORT", unix.SOL_SOCKET, unix.SO_REUSEPORT, 1},
	}
	if family == unix.AF_INET6 {
		o = append(o, sockOpt{"IPV6_V6ONLY", unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1})
	}
	return o
}
