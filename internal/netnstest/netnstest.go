// Package netnstest builds throw-away network topologies out of Linux
// network namespaces for tests that need real multicast (mDNS) or real
// sockets between hosts, without touching the root namespace's interfaces.
//
// A [Topology] is a hub namespace holding a bridge; every [Host] is a
// namespace of its own joined to that bridge by a veth pair, with an IPv4
// address in a per-topology /24 of 10.231.0.0/16, loopback up, multicast on
// and a route for 224.0.0.0/4 on its veth (without it the IPv4 multicast
// join fails with "no such device"). IPv6 duplicate address detection is
// turned off before the veth exists, so the link-local address is usable at
// once instead of tentative for ~2 s.
//
// Everything is removed in t.Cleanup: processes started with [Host.Start]
// are killed by PID, then the namespaces are deleted.
//
// # Usage
//
//	netnstest.RequireRoot(t)
//	topo := netnstest.New(t)
//	a, b := topo.AddHost(t, "a"), topo.AddHost(t, "b")
//	err := a.Do(func() error { /* sockets made here live in a */ })
//
// Code running under [Host.Do] must create its sockets on the calling
// goroutine: goroutines it starts run on other threads, in the root
// namespace.
package netnstest
