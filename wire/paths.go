package wire

import "time"

// Where adverts are served: over the tailnet as JSON, over mDNS as DNS-SD
// TXT records. docs/PROTOCOL.md describes both.

// DefaultAdvertPort is the TCP port a builder serves GET /v1/advert on, on
// its tailnet addresses only. It is in the registered range and unassigned
// by IANA; clients use the same default.
const DefaultAdvertPort = 7461

// AdvertPath is the URL path of the JSON advert.
const AdvertPath = "/v1/advert"

// MaxAdvertWait caps how long a builder holds a long poll
// (GET AdvertPath?wait=<etag>); a client's long poll times out a little
// after it.
const MaxAdvertWait = 30 * time.Second

// MDNSService is the DNS-SD service type builders are advertised under.
const MDNSService = "_nix-builder._tcp"

// MDNSDomain is the mDNS domain, as a fully qualified name.
const MDNSDomain = "local."

// DefaultMDNSTTL is the TTL of every record the responder serves. RFC 6762
// suggests 120 s for records tied to a host (SRV, A) and 75 min for others;
// we use 120 s for all, TXT included, so that a builder that vanished
// without a goodbye leaves clients' caches within two minutes (clients
// also re-query every 10-30 s and health-check, so this is a bound on
// staleness, not the main way a dead builder goes away).
const DefaultMDNSTTL = 120 * time.Second

// MaxTXTBytes bounds the whole TXT record set (sum of string lengths plus
// one length byte each): larger sets do not fit in one Ethernet frame with
// the other records, and hashicorp/mdns and Avahi's legacy-unicast replies
// silently lose them.
const MaxTXTBytes = 1300
