package mdns

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/nixrb-discover/nixrb-discover/wire"
)

// maxMDNSTTL caps the TTL of what an mDNS packet says, as RFC 6762
// section 10 recommends for records other than host names (75 minutes):
// one packet with TTL 2^32-1 s (~136 years) must not pin an entry, or the
// cache slot it holds, for good.
const maxMDNSTTL = 75 * time.Minute

// mdnsEntry is one candidate the mDNS source holds, with the evidence it
// came from.
type mdnsEntry struct {
	cand     discover.Candidate
	instance string // instance label as received
	src      netip.Addr
	iface    string
	port     uint16
	txt      []string
	addrs    []netip.Addr
	signed   bool
	issued   time.Time
	ttl      time.Duration
	expires  time.Time
}

// mdnsState is the mDNS source's cache: pure (no I/O, no clock, no
// goroutines), driven by Run's loop and by tests and fuzzing.
//
// Trusted candidates are keyed "mdns:<host key fingerprint>", so a packet
// from anyone else (a rogue reusing a builder's instance name) lands under
// another key and can neither replace nor remove a trusted entry; within
// one trusted key a signed advert is replaced only by one at least as new,
// and a pin-trusted (unsigned) one only by its own source, or by a host
// announcing itself when the held one came from an address it does not
// advertise. TTLs are capped at maxMDNSTTL. Untrusted
// candidates are keyed "mdns-untrusted:<instance>@<source>". Goodbyes only
// mark keys for Snapshot.Recheck; entries leave when their TTL (or, for
// signed adverts, their signature's max age) runs out.
type mdnsState struct {
	keys        []wire.TrustKey
	pins        *Pins
	maxAge      time.Duration
	defaultTTL  time.Duration // for query answers, which carry no TTL
	maxEntries  int
	maxPerIface int

	entries map[string]*mdnsEntry
	// retired maps "hostname fingerprint" (hostname in lower case) to
	// when that host key was replaced (the issue time of the advert that
	// named the new one): an advert issued before then naming it is a
	// replay from before a re-key and is refused.
	retired map[string]time.Time
	recheck map[string]bool
	last    []discover.Candidate
	// settled: the first query round is over; settledSent: a snapshot
	// saying so (not Partial) has gone out.
	settled, settledSent bool
}

func newMDNSState(keys []wire.TrustKey, pins *Pins, maxAge, defaultTTL time.Duration, maxEntries, maxPerIface int) *mdnsState {
	return &mdnsState{
		keys: keys, pins: pins, maxAge: maxAge, defaultTTL: defaultTTL,
		maxEntries: maxEntries, maxPerIface: maxPerIface,
		entries: map[string]*mdnsEntry{},
		retired: map[string]time.Time{},
		recheck: map[string]bool{},
	}
}

// observe applies what one packet or query answer says about one instance.
func (s *mdnsState) observe(now time.Time, o mdnsObs) {
	prev := s.bySource(o.instance, o.src)
	if o.goodbye {
		// Anyone can send a goodbye for any name: a hint to re-check every
		// candidate of that instance name, never a removal.
		for k, e := range s.entries {
			if strings.EqualFold(e.instance, o.instance) {
				s.recheck[k] = true
			}
		}
		return
	}
	if prev != nil { // fill in what a partial update (e.g. TXT only) lacks
		if !o.hasSRV {
			o.hasSRV, o.port, o.addrs = true, prev.port, prev.addrs
		}
		if !o.hasTXT {
			o.hasTXT, o.txt = true, prev.txt
		}
	}
	if !o.hasSRV || !o.hasTXT {
		return
	}
	ttl := min(time.Duration(o.ttl)*time.Second, maxMDNSTTL)
	switch {
	case !o.ttlKnown && prev != nil:
		ttl = prev.ttl
	case !o.ttlKnown:
		ttl = s.defaultTTL
	}
	if prev != nil && prev.port == o.port && slices.Equal(prev.txt, o.txt) && slices.Equal(prev.addrs, o.addrs) {
		prev.expires = s.expiry(now, ttl, prev.signed, prev.issued)
		prev.ttl = ttl
		return // nothing new: refresh only
	}

	e := &mdnsEntry{
		instance: o.instance, src: o.src, iface: o.iface, port: o.port,
		txt: slices.Clone(o.txt), addrs: slices.Clone(o.addrs), ttl: ttl,
	}
	e.cand = discover.Candidate{Name: o.instance, Address: pickAddress(o.addrs, o.src)}
	adv, err := wire.DecodeTXT(o.txt)
	if err != nil {
		e.cand.TrustReason = "invalid advert"
		e.cand.Problem = "advert invalid: " + err.Error()
	} else {
		t := decideTrust(adv, o.instance, s.keys, s.pins, now, s.maxAge)
		e.cand.Advert = adv
		e.cand.Trusted, e.cand.TrustReason, e.cand.TrustHint, e.cand.Problem = t.trusted, t.reason, t.hint, t.problem
		if t.trusted && t.signed {
			s.rekey(e, adv, t.fp)
		}
		if e.cand.Trusted {
			e.cand.Key = "mdns:" + t.fp
			e.signed, e.issued = t.signed, adv.IssuedAt
			if t.signed {
				e.cand.Name = adv.Hostname // authenticated, unlike the instance name
			}
		}
	}
	if e.cand.Key == "" {
		e.cand.Key = "mdns-untrusted:" + o.instance + "@" + o.src.String()
	}
	e.expires = s.expiry(now, ttl, e.signed, e.issued)
	if !e.expires.After(now) {
		return
	}
	if old := s.entries[e.cand.Key]; old != nil && old.expires.After(now) && e.cand.Trusted {
		switch {
		case e.signed && old.signed && e.issued.Before(old.issued):
			return // an older signed advert (a replay) never wins
		case e.signed && old.signed && e.issued.Equal(old.issued) && e.src != old.src:
			if e.expires.After(old.expires) { // same advert replayed elsewhere
				old.expires = e.expires
			}
			return
		case !e.signed && old.signed:
			return // a pin alone never displaces a signature
		case !e.signed && !old.signed && e.src != old.src && (announcesItself(old) || !announcesItself(e)):
			// Pin-trusted: the first source keeps it until it expires,
			// unless it spoke for another host (its packet came from an
			// address it does not advertise) and the newcomer speaks
			// for itself: the first sender cannot lock out the address
			// that serves the pinned key.
			return
		}
	}
	if s.entries[e.cand.Key] == nil && !s.makeRoom(now, e) {
		return
	}
	s.entries[e.cand.Key] = e
}

// rekey applies a signed advert's claim to its hostname's host key. When
// a builder's newer signed advert, from the address its previous one came
// from, names a new host key, the old key is retired for that hostname:
// its entry goes at once, and any advert issued before the re-key that
// names it is refused. Whoever holds the old key (an old disk, a backup)
// could otherwise replay the last advert from before the re-key, within
// its max age, from an address of their choosing (address records are not
// signed), and be admitted. Two builders that merely share a hostname (at
// different addresses) never retire each other's keys. A fresh advert
// issued after the re-key may name the old key again (a roll-back).
func (s *mdnsState) rekey(e *mdnsEntry, adv *wire.Advert, fp string) {
	host := strings.ToLower(adv.Hostname)
	if at, ok := s.retired[host+" "+fp]; ok {
		if adv.IssuedAt.Before(at) {
			e.cand.Trusted = false
			e.cand.Name = adv.Hostname
			e.cand.TrustReason = "superseded host key"
			e.cand.Problem = fmt.Sprintf("refused: %s's signed advert issued %s names host key %s, which %s replaced at %s: a replay from before the re-key",
				adv.Hostname, adv.IssuedAt.Format(time.RFC3339), fp, adv.Hostname, at.Format(time.RFC3339))
			e.cand.TrustHint = "if " + adv.Hostname + " really went back to that key, restart its agent: a fresh signed advert wins"
			return
		}
		delete(s.retired, host+" "+fp) // rolled back by a fresh advert
	}
	for k, x := range s.entries {
		if x.signed && x.cand.Trusted && sameHost(x, e) && strings.EqualFold(x.cand.Name, adv.Hostname) &&
			k != "mdns:"+fp && x.issued.Before(adv.IssuedAt) {
			old := strings.TrimPrefix(k, "mdns:")
			if len(s.retired) >= 4*s.maxEntries {
				s.forgetOldestRetired() // bounded even against a leaked fleet key
			}
			s.retired[host+" "+old] = adv.IssuedAt
			delete(s.entries, k)
		}
	}
}

// announcesItself reports whether e's packet came from one of the
// addresses it advertises: a host announcing itself, not another.
func announcesItself(e *mdnsEntry) bool {
	return slices.ContainsFunc(e.addrs, func(a netip.Addr) bool { return a.WithZone("") == e.src.WithZone("") })
}

// sameHost reports whether two entries came from one machine: an address
// (packet source or address record) in common. IPv4 and IPv6
// announcements of one builder share their address records.
func sameHost(a, b *mdnsEntry) bool {
	in := func(x netip.Addr, e *mdnsEntry) bool {
		return x == e.src || slices.Contains(e.addrs, x)
	}
	if in(b.src, a) {
		return true
	}
	for _, x := range b.addrs {
		if in(x, a) {
			return true
		}
	}
	return false
}

// forgetOldestRetired drops the oldest retirement.
func (s *mdnsState) forgetOldestRetired() {
	var oldest string
	for k, at := range s.retired {
		if oldest == "" || at.Before(s.retired[oldest]) {
			oldest = k
		}
	}
	delete(s.retired, oldest)
}

// expiry is when an entry stops counting: its TTL, and for a signed advert
// no later than its signature's max age.
func (s *mdnsState) expiry(now time.Time, ttl time.Duration, signed bool, issued time.Time) time.Time {
	exp := now.Add(ttl)
	if limit := issued.Add(s.maxAge); signed && limit.Before(exp) {
		exp = limit
	}
	return exp
}

// bySource finds the entry last seen for instance from src.
func (s *mdnsState) bySource(instance string, src netip.Addr) *mdnsEntry {
	var found *mdnsEntry
	for _, e := range s.entries {
		if e.src == src && strings.EqualFold(e.instance, instance) {
			if found == nil || e.expires.After(found.expires) {
				found = e
			}
		}
	}
	return found
}

// makeRoom keeps the cache within its bounds before e is added: expired
// entries go first; a trusted newcomer may evict the untrusted entry that
// expires first; an untrusted newcomer is dropped when full.
func (s *mdnsState) makeRoom(now time.Time, e *mdnsEntry) bool {
	s.expire(now)
	perIface := 0
	for _, x := range s.entries {
		if x.iface == e.iface {
			perIface++
		}
	}
	if len(s.entries) < s.maxEntries && perIface < s.maxPerIface {
		return true
	}
	if !e.cand.Trusted {
		return false
	}
	var victim string
	for k, x := range s.entries {
		if !x.cand.Trusted && (victim == "" || x.expires.Before(s.entries[victim].expires)) {
			victim = k
		}
	}
	if victim == "" {
		return false
	}
	delete(s.entries, victim)
	return true
}

// expire drops entries whose time is up.
func (s *mdnsState) expire(now time.Time) {
	for k, e := range s.entries {
		if !e.expires.After(now) {
			delete(s.entries, k)
		}
	}
	// Past the max age after a re-key, every advert from before it is
	// stale anyway: nothing left to refuse.
	for k, at := range s.retired {
		if !at.Add(s.maxAge).After(now) {
			delete(s.retired, k)
		}
	}
}

// nextExpiry is when the next entry expires (zero when none).
func (s *mdnsState) nextExpiry() time.Time {
	var next time.Time
	for _, e := range s.entries {
		if next.IsZero() || e.expires.Before(next) {
			next = e.expires
		}
	}
	return next
}

// snapshot returns the current set and whether it must be emitted: it
// changed, a re-check is pending, or the first query round just ended
// (force: the source's first query round is over, from then on). Until
// that round ends, snapshots are Partial.
func (s *mdnsState) snapshot(force bool) (discover.Snapshot, bool) {
	if force {
		s.settled = true
	}
	cands := make([]discover.Candidate, 0, len(s.entries))
	for _, e := range s.entries {
		cands = append(cands, e.cand)
	}
	slices.SortFunc(cands, func(a, b discover.Candidate) int { return strings.Compare(a.Key, b.Key) })
	var recheck []string
	for k := range s.recheck {
		if s.entries[k] != nil {
			recheck = append(recheck, k)
		}
	}
	clear(s.recheck)
	slices.Sort(recheck)
	same := len(cands) == 0 && len(s.last) == 0 || reflect.DeepEqual(cands, s.last)
	changed := !same || len(recheck) > 0 || (s.settled && !s.settledSent)
	if !changed {
		return discover.Snapshot{}, false
	}
	s.last = cands
	s.settledSent = s.settled
	return discover.Snapshot{Source: "mdns", Candidates: slices.Clone(cands), Recheck: recheck, Partial: !s.settled}, true
}

// pickAddress chooses the address a builder is dialled at: IPv4 before
// IPv6, the packet's source if it is one of the advertised addresses, a
// global address before a link-local one, the source as a last resort.
func pickAddress(addrs []netip.Addr, src netip.Addr) string {
	best, score := netip.Addr{}, -1
	for _, a := range addrs {
		sc := 0
		if a.Is4() || a.Is4In6() {
			sc += 4
		}
		if a.WithZone("") == src.WithZone("") {
			sc += 2
		}
		if !a.IsLinkLocalUnicast() {
			sc++
		}
		if sc > score {
			best, score = a, sc
		}
	}
	if !best.IsValid() {
		best = src
	}
	if !best.IsValid() {
		return ""
	}
	return best.Unmap().String()
}
