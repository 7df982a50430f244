package tailnet

import (
	"encoding/json"
	"errors"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/nixrb-discover/nixrb-discover/wire"
	"tailscale.com/ipn"
	"tailscale.com/ipn/ipnstate"
)

// TestTailnetBusSteps replays constructed IPN bus notifications
// (testdata/ipnbus/patches.json, in the JSON form the LocalAPI streams)
// through the source's state: InitialStatus, whole-node PeersChanged,
// PeerChangedPatch online/offline (what production tailscaled sends and
// testcontrol never does), PeersRemoved, and a re-subscription. After each
// step the set of candidate peers must be exactly the one listed.
func TestTailnetBusSteps(t *testing.T) {
	raw, err := os.ReadFile("testdata/ipnbus/patches.json")
	if err != nil {
		t.Fatal(err)
	}
	var steps []struct {
		Comment string
		Notify  ipn.Notify
		Changed bool
		Want    []string
	}
	if err := json.Unmarshal(raw, &steps); err != nil {
		t.Fatal(err)
	}
	s := &Source{Builders: []string{"named1"}}
	l := s.newLoop(func(discover.Snapshot) {})
	for i, st := range steps {
		before := l.peers.clone()
		n := st.Notify
		if got := before.clone().apply(&n); got != st.Changed {
			t.Errorf("step %d (%s): apply changed = %v, want %v", i, st.Comment, got, st.Changed)
		}
		n = st.Notify
		l.onBus(busEvent{n: &n})
		var keys []string
		for _, e := range l.entries {
			keys = append(keys, "tailnet:"+string(e.peer.stableID))
		}
		slices.Sort(keys)
		if !slices.Equal(keys, st.Want) {
			t.Fatalf("step %d (%s): candidates %v, want %v", i, st.Comment, keys, st.Want)
		}
	}
}

// TestTailnetSnapshot checks what a candidate looks like in each address
// mode and after failures, and that an unchanged set is not re-emitted.
func TestTailnetSnapshot(t *testing.T) {
	raw, err := os.ReadFile("testdata/ipnbus/patches.json")
	if err != nil {
		t.Fatal(err)
	}
	var steps []struct{ Notify ipn.Notify }
	if err := json.Unmarshal(raw, &steps); err != nil {
		t.Fatal(err)
	}
	adv := &wire.Advert{Version: 1, Hostname: "evil.example.com", IssuedAt: time.Unix(1, 0)}
	for _, mode := range []string{"", AddressMagicDNS, AddressIP} {
		t.Run("mode-"+mode, func(t *testing.T) {
			var got []discover.Snapshot
			s := &Source{Builders: []string{"named1.tail-scale.ts.net."}, Address: mode}
			l := s.newLoop(func(snap discover.Snapshot) { got = append(got, snap) })
			l.onBus(busEvent{n: &steps[0].Notify})
			l.maybeEmit()
			if len(got) != 1 || len(got[0].Candidates) != 0 || got[0].Err != nil || !got[0].Partial {
				t.Fatalf("before any fetch: %+v, want one empty, partial snapshot", got)
			}
			now := time.Now()
			l.onResult(fetchResult{id: 1, seq: l.entries[1].seq, advert: adv}, now)
			l.onResult(fetchResult{id: 4, seq: l.entries[4].seq, err: errors.New("advert fetch failed: boom")}, now)
			l.maybeEmit()
			l.maybeEmit() // unchanged: not emitted again
			if len(got) != 2 || got[1].Partial {
				t.Fatalf("emitted %+v, want 2 snapshots, the second not partial (every first fetch done)", got)
			}
			c := got[1].Candidates
			wantAddr := "b1.tail-scale.ts.net"
			if mode == AddressIP {
				wantAddr = "100.64.0.1"
			}
			if c[0].Key != "tailnet:STABLE1" || c[0].Name != "b1.tail-scale.ts.net" || c[0].Address != wantAddr ||
				c[0].Advert != adv || !c[0].Trusted || c[0].TrustReason != "tailnet peer with tag:nix-builder" || c[0].Problem != "" {
				t.Errorf("builder candidate = %+v (address must come from the netmap, not the advert)", c[0])
			}
			if c[1].Key != "tailnet:STABLE4" || c[1].TrustReason != "named by --builder" || c[1].Problem != "advert fetch failed: boom" {
				t.Errorf("named candidate = %+v", c[1])
			}

			// A newer IssuedAt alone is not a change.
			adv2 := *adv
			adv2.IssuedAt = time.Unix(2, 0)
			l.onResult(fetchResult{id: 1, seq: l.entries[1].seq, advert: &adv2}, now)
			l.maybeEmit()
			if len(got) != 2 {
				t.Fatalf("IssuedAt-only change emitted a snapshot")
			}
			// Refresh failures keep the last good advert, then flag it
			// (tnStaleAfter in a row, over tnStaleFor).
			for i := range tnStaleAfter {
				at := now.Add(time.Duration(i) * tnStaleFor / time.Duration(tnStaleAfter-1))
				l.onResult(fetchResult{id: 1, seq: l.entries[1].seq, err: errors.New("advert fetch failed: gone")}, at)
			}
			l.maybeEmit()
			last := got[len(got)-1].Candidates[0]
			if last.Advert == nil || last.Problem == "" {
				t.Errorf("after %d failures: %+v, want last advert and a problem", tnStaleAfter, last)
			}
			// The bus going down is an Err snapshot, once.
			l.onBus(busEvent{err: errors.New("tailscaled gone")})
			l.maybeEmit()
			l.onBus(busEvent{err: errors.New("tailscaled gone")})
			l.maybeEmit()
			if n := len(got); got[n-1].Err == nil || got[n-2].Err != nil {
				t.Errorf("down: snapshots %+v", got[n-2:])
			}
		})
	}
}

// TestTailnetBackoff pins the retry schedules.
func TestTailnetBackoff(t *testing.T) {
	for n, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 6: 32 * time.Second, 7: time.Minute, 50: time.Minute} {
		if got := tnRetryBackoff(n); got != want {
			t.Errorf("tnRetryBackoff(%d) = %v, want %v", n, got, want)
		}
	}
	for n, want := range map[int]time.Duration{0: 0, 1: 100 * time.Millisecond, 3: 400 * time.Millisecond, 4: 800 * time.Millisecond, 5: time.Second, 99: time.Second} {
		if got := tnBusBackoff(n); got != want {
			t.Errorf("tnBusBackoff(%d) = %v, want %v", n, got, want)
		}
	}
	for _, c := range []struct {
		want, fqdn string
		ok         bool
	}{
		{"b1", "b1.tail-scale.ts.net", true},
		{"B1.tail-scale.ts.net.", "b1.tail-scale.ts.net", true},
		{"b1.other.ts.net", "b1.tail-scale.ts.net", false},
		{"b", "b1.tail-scale.ts.net", false},
		{"", "b1.tail-scale.ts.net", false},
		// A node shared in from another tailnet keeps that tailnet's
		// name: a short name never reaches it; its full name does.
		{"ward", "ward.attacker-tailnet.ts.net.", false},
		{"ward", "ward.tail-scale.ts.net.evil.ts.net", false},
		{"ward.attacker-tailnet.ts.net", "ward.attacker-tailnet.ts.net.", true},
		{"ward", "ward.tail-scale.ts.net.", true},
	} {
		if got := tnNameMatches(c.want, c.fqdn, "tail-scale.ts.net"); got != c.ok {
			t.Errorf("tnNameMatches(%q, %q) = %v", c.want, c.fqdn, got)
		}
	}
	if tnNameMatches("b1", "b1.tail-scale.ts.net", "") {
		t.Error("a short name matched with no MagicDNS suffix known")
	}
	st := &ipnstate.Status{Self: &ipnstate.PeerStatus{DNSName: "c1.tail-scale.ts.net."}}
	if got := tnMagicDNSSuffix(st); got != "tail-scale.ts.net" {
		t.Errorf("suffix from the self node's name = %q", got)
	}
	st.CurrentTailnet = &ipnstate.TailnetStatus{MagicDNSSuffix: "tail1234.ts.net"}
	if got := tnMagicDNSSuffix(st); got != "tail1234.ts.net" {
		t.Errorf("suffix from CurrentTailnet = %q", got)
	}
}

// TestTailnetSnapshotSettles: a first fetch that hangs (a dead builder)
// makes snapshots partial only within one fetch timeout of the start.
func TestTailnetSnapshotSettles(t *testing.T) {
	raw, err := os.ReadFile("testdata/ipnbus/patches.json")
	if err != nil {
		t.Fatal(err)
	}
	var steps []struct{ Notify ipn.Notify }
	if err := json.Unmarshal(raw, &steps); err != nil {
		t.Fatal(err)
	}
	var got []discover.Snapshot
	s := &Source{Builders: []string{"named1.tail-scale.ts.net."}}
	l := s.newLoop(func(snap discover.Snapshot) { got = append(got, snap) })
	l.onBus(busEvent{n: &steps[0].Notify})
	l.onResult(fetchResult{id: 1, seq: l.entries[1].seq, advert: &wire.Advert{Version: 1, Hostname: "b1"}}, time.Now())
	l.maybeEmit()
	if len(got) != 1 || !got[0].Partial {
		t.Fatalf("one fetch of two done: %+v, want a partial snapshot", got)
	}
	l.settleBy = time.Now().Add(-time.Millisecond) // the fetch timeout passed
	l.maybeEmit()
	if len(got) != 2 || got[1].Partial || len(got[1].Candidates) != 1 {
		t.Fatalf("after the settle time: %+v, want the same set again, not partial", got)
	}
}
