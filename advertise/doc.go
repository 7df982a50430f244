// Package advertise is the builder side of nixrb-discover: it finds out what
// this builder can do (from the local Nix configuration, /proc and the SSH
// host key), encodes it as an [Advert] in wire format v1 (JSON for the
// tailnet, DNS-SD TXT for mDNS), signs it with a fleet key, and serves it on
// the tailnet and by mDNS.
package advertise
