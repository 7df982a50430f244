// Package discover is the client side of nixrb-discover: sources that find
// builders (tailnet, mDNS, static file), SSH + Nix-protocol health checks,
// membership with hysteresis, and the client loop that renders the machines
// file when the healthy set changes.
package discover
