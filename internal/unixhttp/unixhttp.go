// Package unixhttp reads a JSON document over HTTP from a unix socket: how
// `list` asks the client daemon for its status and how `authorized-keys`
// asks the builder agent for enrolled keys.
package unixhttp

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
)

// GetJSON sends GET path to the HTTP server on the unix socket at socket,
// and decodes its 200 answer of at most maxBytes into v. ctx bounds it.
func GetJSON(ctx context.Context, socket, path string, maxBytes int64, v any) error {
	hc := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives: true,
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://unix"+path, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBytes+1))
	if err != nil {
		return err
	}
	if int64(len(body)) > maxBytes {
		return fmt.Errorf("answer larger than %d bytes", maxBytes)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", resp.Status, body)
	}
	return json.Unmarshal(body, v)
}
