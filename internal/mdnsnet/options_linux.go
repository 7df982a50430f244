package mdnsnet

import "golang.org/x/sys/unix"

// groupOptions on Linux: SO_REUSEADDR shares port 5353 with avahi (which
// sets it, not SO_REUSEPORT), and IP_MULTICAST_ALL off keeps out the
// groups other sockets joined (Linux delivers them to every socket bound
// to the port unless it is off).
func groupOptions(family int) []sockOpt {
	o := []sockOpt{{"SO_REUSEADDR", unix.SOL_SOCKET, unix.SO_REUSEADDR, 1}}
	if family == unix.AF_INET6 {
		return append(o,
			sockOpt{"IPV6_V6ONLY", unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1},
			sockOpt{"IPV6_MULTICAST_ALL", unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_ALL, 0})
	}
	return append(o, sockOpt{"IP_MULTICAST_ALL", unix.IPPROTO_IP, unix.IP_MULTICAST_ALL, 0})
}
