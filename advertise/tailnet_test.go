package advertise_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	neturl "net/url"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"tailscale.com/client/local"
	"tailscale.com/client/tailscale/apitype"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/tailcfg"

	"github.com/nixrb-discover/nixrb-discover/advertise"
	"github.com/nixrb-discover/nixrb-discover/internal/tailnettest"
	"github.com/nixrb-discover/nixrb-discover/wire"
)

// tnAdvert returns the golden advert and its JSON encoding.
func tnAdvert(t *testing.T) (*wire.Advert, []byte) {
	t.Helper()
	raw, err := os.ReadFile("../wire/testdata/advert-v1.json")
	if err != nil {
		t.Fatal(err)
	}
	a, err := wire.DecodeJSON(raw)
	if err != nil {
		t.Fatal(err)
	}
	b, err := wire.EncodeJSON(a)
	if err != nil {
		t.Fatal(err)
	}
	return a, b
}

// tnServe runs s until the test ends (or the returned stop is called)
// and checks that Run stops fast. stop cancels Run's context, waits for
// Run to return and says how long that took.
func tnServe(t *testing.T, s *advertise.TailnetServer) (stop func() time.Duration) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	var took time.Duration
	stop = func() time.Duration {
		once.Do(func() {
			start := time.Now()
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
				took = time.Since(start)
				if took > 100*time.Millisecond {
					t.Errorf("Run took %v to stop, want < 100ms", took)
				}
			case <-time.After(5 * time.Second):
				t.Error("Run did not stop")
			}
		})
		return took
	}
	t.Cleanup(func() { stop() })
	return stop
}

// tnGet fetches url with client, retrying while the server is not bound
// yet (bounded), and returns the status, content type and body.
func tnGet(t *testing.T, client *http.Client, url string) (int, string, []byte) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		resp, err := client.Do(req)
		if err == nil {
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			cancel()
			if err != nil {
				t.Fatalf("GET %s: read body: %v", url, err)
			}
			return resp.StatusCode, resp.Header.Get("Content-Type"), body
		}
		cancel()
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %v", url, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestTailnetServer runs the advert server on a tagged builder node of an
// in-process tailnet and fetches it from other nodes.
func TestTailnetServer(t *testing.T) {
	tn := tailnettest.New(t)
	b := tn.AddNode(t, "b1", tailnettest.TagBuilder)
	c := tn.AddNode(t, "c1", tailnettest.TagClient)
	u := tn.AddNode(t, "u1")
	tn.WaitPeer(t, c, b)
	tn.WaitPeer(t, u, b)
	tn.WaitPeer(t, b, c)
	tn.WaitPeer(t, b, u)

	want, body := tnAdvert(t)
	s := &advertise.TailnetServer{
		LocalAPI: b.LocalClient,
		Listen:   b.Server.Listen,
		Advert:   func() ([]byte, error) { return body, nil },
	}
	s.Handle("GET /v1/whoami", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, ok := advertise.CallerFromContext(r.Context())
		if !ok {
			http.Error(w, "no caller", 500)
			return
		}
		json.NewEncoder(w).Encode(c)
	}))
	tnServe(t, s)
	port := strconv.Itoa(wire.DefaultAdvertPort)

	// The advert is served on the tailnet by MagicDNS name (full and
	// short) and by each tailnet IP, as JSON that decodes to the advert.
	for _, host := range []string{b.FQDN, b.Name, b.IPv4.String(), b.IPv6.String()} {
		t.Run("fetch-by-"+host, func(t *testing.T) {
			code, ctype, got := tnGet(t, c.Server.HTTPClient(), "http://"+net.JoinHostPort(host, port)+wire.AdvertPath)
			if code != 200 || ctype != "application/json" {
				t.Fatalf("status %d, content type %q, body %q", code, ctype, got)
			}
			a, err := wire.DecodeJSON(got)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(a, want) {
				t.Fatalf("advert = %+v, want %+v", a, want)
			}
		})
	}

	// Handlers see the caller that WhoIs named: the node that dialled,
	// with its tags, not anything the request claims.
	t.Run("caller-is-whois-identity", func(t *testing.T) {
		code, _, got := tnGet(t, c.Server.HTTPClient(), "http://"+net.JoinHostPort(b.FQDN, port)+"/v1/whoami")
		if code != 200 {
			t.Fatalf("status %d: %s", code, got)
		}
		var who advertise.Caller
		if err := json.Unmarshal(got, &who); err != nil {
			t.Fatal(err)
		}
		if who.Name != c.FQDN || who.NodeID != c.StableID || !reflect.DeepEqual(who.Tags, []string{tailnettest.TagClient}) {
			t.Fatalf("caller = %+v, want %s %s [%s]", who, c.FQDN, c.StableID, tailnettest.TagClient)
		}
	})

	// With AllowTags, a tagged client passes and an untagged peer is refused.
	t.Run("allow-tags-refuses-untagged", func(t *testing.T) {
		s2 := &advertise.TailnetServer{
			LocalAPI:  b.LocalClient,
			Listen:    b.Server.Listen,
			Advert:    func() ([]byte, error) { return body, nil },
			Port:      wire.DefaultAdvertPort + 1,
			AllowTags: []string{tailnettest.TagClient},
		}
		tnServe(t, s2)
		url := "http://" + net.JoinHostPort(b.FQDN, strconv.Itoa(s2.Port)) + wire.AdvertPath
		if code, _, got := tnGet(t, c.Server.HTTPClient(), url); code != 200 {
			t.Fatalf("tagged client: status %d: %s", code, got)
		}
		if code, _, got := tnGet(t, u.Server.HTTPClient(), url); code != http.StatusForbidden {
			t.Fatalf("untagged peer: status %d, want 403: %s", code, got)
		}
	})

	// With AllowCaps, a peer is refused until control grants it the
	// capability (a packet-filter cap grant), then admitted.
	t.Run("allow-caps", func(t *testing.T) {
		const capName = tailcfg.PeerCapability("nixrb-discover.example/cap/enroll")
		s4 := &advertise.TailnetServer{
			LocalAPI:  b.LocalClient,
			Listen:    b.Server.Listen,
			Advert:    func() ([]byte, error) { return body, nil },
			Port:      wire.DefaultAdvertPort + 2,
			AllowCaps: []tailcfg.PeerCapability{capName},
		}
		tnServe(t, s4)
		url := "http://" + net.JoinHostPort(b.FQDN, strconv.Itoa(s4.Port)) + wire.AdvertPath
		if code, _, got := tnGet(t, u.Server.HTTPClient(), url); code != http.StatusForbidden {
			t.Fatalf("before the grant: status %d, want 403: %s", code, got)
		}
		tn.Control.SetGlobalAppCaps(tailcfg.PeerCapMap{capName: nil})
		t.Cleanup(func() { tn.Control.SetGlobalAppCaps(nil) })
		deadline := time.Now().Add(10 * time.Second)
		for {
			code, _, _ := tnGet(t, u.Server.HTTPClient(), url)
			if code == 200 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after the grant: status %d, want 200", code)
			}
			time.Sleep(20 * time.Millisecond)
		}
	})

	// A caller that is not a tailnet peer (plain loopback HTTP from the
	// host, on a ListenAddr listener) is refused by WhoIs.
	t.Run("non-peer-refused", func(t *testing.T) {
		var mu sync.Mutex
		var addr string
		s3 := &advertise.TailnetServer{
			LocalAPI:   b.LocalClient,
			Advert:     func() ([]byte, error) { return body, nil },
			ListenAddr: "127.0.0.1:0",
			Listen: func(network, a string) (net.Listener, error) {
				ln, err := net.Listen(network, a)
				if err == nil {
					mu.Lock()
					addr = ln.Addr().String()
					mu.Unlock()
				}
				return ln, err
			},
		}
		tnServe(t, s3)
		deadline := time.Now().Add(5 * time.Second)
		for {
			mu.Lock()
			a := addr
			mu.Unlock()
			if a != "" {
				addr = a
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("ListenAddr listener not opened")
			}
			time.Sleep(5 * time.Millisecond)
		}
		code, _, got := tnGet(t, http.DefaultClient, "http://"+addr+wire.AdvertPath)
		if code != http.StatusForbidden {
			t.Fatalf("status %d, want 403: %s", code, got)
		}
	})
}

// fakeLocalAPI serves a changing list of addresses and knows no peers.
type fakeLocalAPI struct {
	mu  sync.Mutex
	ips []string
}

func (f *fakeLocalAPI) set(ips ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ips = ips
}

func (f *fakeLocalAPI) StatusWithoutPeers(context.Context) (*ipnstate.Status, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := &ipnstate.Status{}
	for _, s := range f.ips {
		st.TailscaleIPs = append(st.TailscaleIPs, netip.MustParseAddr(s))
	}
	return st, nil
}

func (f *fakeLocalAPI) WhoIs(context.Context, string) (*apitype.WhoIsResponse, error) {
	return nil, local.ErrPeerNotFound
}

// TestTailnetServerRebinds checks that the server follows the node's
// addresses: it binds each, and closes a listener whose address went away.
// Loopback addresses stand in for tailnet ones.
func TestTailnetServerRebinds(t *testing.T) {
	api := &fakeLocalAPI{}
	api.set("127.0.0.1")
	var mu sync.Mutex
	open := map[string]net.Listener{}
	s := &advertise.TailnetServer{
		LocalAPI:       api,
		Advert:         func() ([]byte, error) { return nil, errors.New("unused") },
		RebindInterval: 10 * time.Millisecond,
		Listen: func(network, addr string) (net.Listener, error) {
			host, _, _ := net.SplitHostPort(addr)
			ln, err := net.Listen(network, net.JoinHostPort(host, "0"))
			if err == nil {
				mu.Lock()
				open[host] = ln
				mu.Unlock()
			}
			return ln, err
		},
	}
	tnServe(t, s)
	waitOpen := func(host string, want bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			mu.Lock()
			ln := open[host]
			mu.Unlock()
			if ln != nil {
				c, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second)
				if err == nil {
					c.Close()
				}
				if (err == nil) == want {
					return
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("listener on %s open=%v not reached", host, want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitOpen("127.0.0.1", true)
	api.set("127.0.0.2")
	waitOpen("127.0.0.2", true)
	waitOpen("127.0.0.1", false)
}

// lpAnswer is the answer to one GET, and when it came.
type lpAnswer struct {
	code int
	etag string
	body []byte
	at   time.Time
	err  error
}

// lpStart sends GET url in the background (bounded by 10 s) and delivers
// the answer on the returned channel.
func lpStart(client *http.Client, url string) <-chan lpAnswer {
	ch := make(chan lpAnswer, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		resp, err := client.Do(req)
		if err != nil {
			ch <- lpAnswer{err: err, at: time.Now()}
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		ch <- lpAnswer{code: resp.StatusCode, etag: resp.Header.Get("ETag"), body: body, at: time.Now(), err: err}
	}()
	return ch
}

// lpWait returns the answer on ch within d, or fails the test.
func lpWait(t *testing.T, ch <-chan lpAnswer, d time.Duration, what string) lpAnswer {
	t.Helper()
	select {
	case a := <-ch:
		if a.err != nil {
			t.Fatalf("%s: %v", what, a.err)
		}
		return a
	case <-time.After(d):
		t.Fatalf("%s: no answer within %v", what, d)
		return lpAnswer{}
	}
}

// lpHeld fails the test if ch answers within d (the poll must be held).
func lpHeld(t *testing.T, ch <-chan lpAnswer, d time.Duration, what string) {
	t.Helper()
	select {
	case a := <-ch:
		t.Fatalf("%s: answered (status %d, err %v), want it held", what, a.code, a.err)
	case <-time.After(d):
	}
}

// lpSwitch is an Advert func whose JSON a test swaps.
type lpSwitch struct{ p atomic.Pointer[[]byte] }

func (a *lpSwitch) set(b []byte)         { a.p.Store(&b) }
func (a *lpSwitch) get() ([]byte, error) { return *a.p.Load(), nil }
func lpURL(n *tailnettest.Node, port int) string {
	return "http://" + net.JoinHostPort(n.FQDN, strconv.Itoa(port)) + wire.AdvertPath
}

// TestTailnetServerLongPoll checks GET /v1/advert?wait=<etag> on a builder
// node of an in-process tailnet: when it answers at once, when it is held,
// how fast Publish releases it, its bounds, and that stopping the server
// answers every held poll with the final advert before closing.
func TestTailnetServerLongPoll(t *testing.T) {
	tn := tailnettest.New(t)
	b := tn.AddNode(t, "b1", tailnettest.TagBuilder)
	c := tn.AddNode(t, "c1", tailnettest.TagClient)
	tn.WaitPeer(t, c, b)
	tn.WaitPeer(t, b, c)
	client := c.Server.HTTPClient()

	a, body := tnAdvert(t)
	a.Draining = true
	draining, err := wire.EncodeJSON(a)
	if err != nil {
		t.Fatal(err)
	}
	adv := &lpSwitch{}
	adv.set(body)
	const wait = 2 * time.Second
	s := &advertise.TailnetServer{
		LocalAPI: b.LocalClient, Listen: b.Server.Listen, Advert: adv.get,
		Port: wire.DefaultAdvertPort + 10, Wait: wait, MaxWaiters: 2,
	}
	tnServe(t, s)
	url := lpURL(b, s.Port)
	waitURL := func(etag string) string { return url + "?wait=" + neturl.QueryEscape(etag) }
	tnGet(t, client, url) // up
	for range 5 {         // and the path between the nodes settled
		tnGet(t, client, url)
	}

	// A plain GET answers at once, as before long polls, with a strong ETag.
	first := lpWait(t, lpStart(client, url), 5*time.Second, "plain GET")
	if first.code != 200 || string(first.body) != string(body) || !regexp.MustCompile(`^"[0-9a-f]{32}"$`).MatchString(first.etag) {
		t.Fatalf("plain GET: status %d, ETag %q, body %q", first.code, first.etag, first.body)
	}

	t.Run("stale-etag-answers-at-once", func(t *testing.T) {
		start := time.Now()
		got := lpWait(t, lpStart(client, waitURL(`"0123"`)), wait/2, "stale etag")
		if got.code != 200 || got.etag != first.etag || string(got.body) != string(body) {
			t.Fatalf("status %d, ETag %q, body %q", got.code, got.etag, got.body)
		}
		t.Logf("stale etag answered in %v", got.at.Sub(start))
	})

	t.Run("current-etag-held-until-publish", func(t *testing.T) {
		ch := lpStart(client, waitURL(first.etag))
		lpHeld(t, ch, 300*time.Millisecond, "current etag")
		adv.set(draining)
		start := time.Now()
		s.Publish()
		got := lpWait(t, ch, wait-100*time.Millisecond, "after Publish (before the bound)")
		took := got.at.Sub(start)
		if got.code != 200 || got.etag == first.etag || string(got.body) != string(draining) {
			t.Fatalf("status %d, ETag %q, body %q", got.code, got.etag, got.body)
		}
		if took > 500*time.Millisecond { // tens of ms, with room for a busy machine
			t.Errorf("answered %v after Publish, want tens of ms", took)
		}
		t.Logf("answered %v after Publish", took)
	})

	t.Run("publish-without-change-holds-to-the-bound", func(t *testing.T) {
		cur := lpWait(t, lpStart(client, url), 5*time.Second, "plain GET")
		start := time.Now()
		ch := lpStart(client, waitURL(cur.etag))
		time.Sleep(100 * time.Millisecond)
		s.Publish() // the advert did not change: keep holding
		lpHeld(t, ch, 300*time.Millisecond, "after a Publish without change")
		got := lpWait(t, ch, 2*wait, "at the bound")
		if took := got.at.Sub(start); got.code != 200 || got.etag != cur.etag || took < wait-100*time.Millisecond {
			t.Fatalf("status %d, ETag %q after %v; want the same advert after %v", got.code, got.etag, took, wait)
		}
	})

	t.Run("too-many-waiters-503", func(t *testing.T) {
		cur := lpWait(t, lpStart(client, url), 5*time.Second, "plain GET")
		held := []<-chan lpAnswer{lpStart(client, waitURL(cur.etag)), lpStart(client, waitURL(cur.etag))}
		time.Sleep(200 * time.Millisecond)
		got := lpWait(t, lpStart(client, waitURL(cur.etag)), wait/2, "third waiter")
		if got.code != http.StatusServiceUnavailable {
			t.Fatalf("third waiter: status %d, want 503", got.code)
		}
		adv.set(body)
		s.Publish()
		for _, ch := range held {
			if got := lpWait(t, ch, wait/2, "held waiter"); got.code != 200 || string(got.body) != string(body) {
				t.Fatalf("held waiter: status %d, body %q", got.code, got.body)
			}
		}
	})

	// Stopping answers every held poll with the advert as it is then
	// (here changed without a Publish, as an agent's last advert could
	// be), then closes: Run returns within 100 ms (tnServe checks).
	t.Run("stop-answers-waiters-with-final-advert", func(t *testing.T) {
		adv2 := &lpSwitch{}
		adv2.set(body)
		s2 := &advertise.TailnetServer{
			LocalAPI: b.LocalClient, Listen: b.Server.Listen, Advert: adv2.get,
			Port: wire.DefaultAdvertPort + 11,
		}
		stop := tnServe(t, s2)
		url2 := lpURL(b, s2.Port)
		tnGet(t, client, url2)
		var held []<-chan lpAnswer
		for range 3 {
			held = append(held, lpStart(client, url2+"?wait="+neturl.QueryEscape(first.etag)))
		}
		lpHeld(t, held[0], 300*time.Millisecond, "before the stop")
		adv2.set(draining)
		start := time.Now()
		took := stop()
		for i, ch := range held {
			got := lpWait(t, ch, time.Second, "waiter at stop")
			if got.code != 200 || string(got.body) != string(draining) {
				t.Fatalf("waiter %d: status %d, body %q, want the draining advert", i, got.code, got.body)
			}
			t.Logf("waiter %d answered %v after the stop began", i, got.at.Sub(start))
		}
		t.Logf("Run stopped in %v", took)
		if got := <-lpStart(client, url2); got.err == nil {
			t.Fatalf("GET after the stop: status %d, want a connection error", got.code)
		}
	})
}
