package tailnettest

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httputil"
	"os"
	"testing"
	"time"
)

// ServeLocalAPI serves the node's LocalAPI on a unix socket at path, the
// way tailscaled serves its own, so that a separate process (the real
// client binary with `--tailscale-socket path`) can use this in-process
// node as its tailscaled.
//
// tsnet exposes a node's LocalAPI only on a loopback TCP address
// ([tsnet.Server.Loopback]) that wants HTTP basic auth with a per-node
// credential and the header `Sec-Tailscale: localapi` on every request.
// The socket forwards each request there and adds both, so a plain
// [tailscale.com/client/local.Client] with Socket set (and
// UseSocketOnly) works unchanged. Streaming answers such as WatchIPNBus
// are flushed as they come. The socket is removed in tb.Cleanup.
func (n *Node) ServeLocalAPI(tb testing.TB, path string) {
	tb.Helper()
	addr, _, cred, err := n.Server.Loopback()
	if err != nil {
		tb.Fatalf("tailnettest: node %s: loopback LocalAPI: %v", n.Name, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		tb.Fatalf("tailnettest: node %s: LocalAPI socket: %v", n.Name, err)
	}
	tr := &http.Transport{
		Proxy:       nil, // always straight to the node's loopback listener
		DialContext: (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = addr
			// Out.Host stays the client's (local-tailscaled.sock), a
			// Host the LocalAPI accepts.
			pr.Out.SetBasicAuth("", cred)
			pr.Out.Header.Set("Sec-Tailscale", "localapi")
		},
		Transport:     tr,
		FlushInterval: -1, // the IPN bus is a stream
		ErrorLog:      nil,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if !errors.Is(err, context.Canceled) {
				http.Error(w, "tailnettest: LocalAPI proxy: "+err.Error(), http.StatusBadGateway)
			}
		},
	}
	srv := &http.Server{Handler: rp, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	tb.Cleanup(func() {
		// Close, not Shutdown: open IPN bus streams never end by themselves.
		srv.Close()
		<-done
		tr.CloseIdleConnections()
		os.Remove(path)
	})
}
