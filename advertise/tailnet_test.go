package advertise_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"reflect"
	"strconv"
	"sync"
	"testing"
	"time"

	"tailscale.com/client/local"
	"tailscale.com/client/tailscale/apitype"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/tailcfg"

	"github.com/nixrb-discover/nixrb-discover/advertise"
	"github.com/nixrb-discover/nixrb-discover/internal/tailnettest"
)

// tnAdvert returns the golden advert and its JSON encoding.
func tnAdvert(t *testing.T) (*advertise.Advert, []byte) {
	t.Helper()
	raw, err := os.ReadFile("testdata/advert-v1.json")
	if err != nil {
		t.Fatal(err)
	}
	a, err := advertise.DecodeJSON(raw)
	if err != nil {
		t.Fatal(err)
	}
	b, err := advertise.EncodeJSON(a)
	if err != nil {
		t.Fatal(err)
	}
	return a, b
}

// tnServe runs s until the test ends and checks that Run stops fast.
func tnServe(t *testing.T, s *advertise.TailnetServer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		start := time.Now()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
			if d := time.Since(start); d > 100*time.Millisecond {
				t.Errorf("Run took %v to stop, want < 100ms", d)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not stop")
		}
	})
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
	port := strconv.Itoa(advertise.DefaultAdvertPort)

	// The advert is served on the tailnet by MagicDNS name (full and
	// short) and by each tailnet IP, as JSON that decodes to the advert.
	for _, host := range []string{b.FQDN, b.Name, b.IPv4.String(), b.IPv6.String()} {
		t.Run("fetch-by-"+host, func(t *testing.T) {
			code, ctype, got := tnGet(t, c.Server.HTTPClient(), "http://"+net.JoinHostPort(host, port)+advertise.AdvertPath)
			if code != 200 || ctype != "application/json" {
				t.Fatalf("status %d, content type %q, body %q", code, ctype, got)
			}
			a, err := advertise.DecodeJSON(got)
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
			Port:      advertise.DefaultAdvertPort + 1,
			AllowTags: []string{tailnettest.TagClient},
		}
		tnServe(t, s2)
		url := "http://" + net.JoinHostPort(b.FQDN, strconv.Itoa(s2.Port)) + advertise.AdvertPath
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
			Port:      advertise.DefaultAdvertPort + 2,
			AllowCaps: []tailcfg.PeerCapability{capName},
		}
		tnServe(t, s4)
		url := "http://" + net.JoinHostPort(b.FQDN, strconv.Itoa(s4.Port)) + advertise.AdvertPath
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
		code, _, got := tnGet(t, http.DefaultClient, "http://"+addr+advertise.AdvertPath)
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
