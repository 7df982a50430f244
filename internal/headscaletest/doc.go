// Package headscaletest runs a real headscale (the self-hosted control
// server, built once from its released module and cached, see [Prepare])
// on loopback and joins tsnet nodes to it with pre-auth keys, so that
// tests can check against headscale what they check against testcontrol
// in package tailnettest. It works offline once the binary is cached:
// SQLite in a temp dir, DERP and STUN of tailscale's test servers on
// 127.0.0.1, no update check, no logtail.
//
// # Usage
//
//	hs := headscaletest.Start(t, headscaletest.Options{})
//	b := hs.AddNode(t, "b1", "tag:nix-builder") // a tagged pre-auth key
//	c := hs.AddNode(t, "laptop")                // a user's pre-auth key
//	hs.WaitPeer(t, c, b)
//	hs.SetTags(t, b, "tag:retired")             // `headscale nodes tag`
//	hs.SetPolicy(t, policy)                     // rewrite the file, SIGHUP
//	hs.Delete(t, b)                             // `headscale nodes delete`
//
// Nodes are [tailnettest.Node]s, so helpers written for testcontrol
// tailnets take them unchanged. Everything is torn down in t.Cleanup and
// every wait is bounded.
package headscaletest
