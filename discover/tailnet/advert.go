package tailnet

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"

	"github.com/nixrb-discover/nixrb-discover/wire"
)

// advertURL is where e's advert is fetched: its tailnet IP, never a name.
func (l *tnLoop) advertURL(e *tnEntry) string {
	ip, _ := e.peer.fetchAddr()
	return "http://" + net.JoinHostPort(ip.String(), l.port) + wire.AdvertPath
}

// fetch gets and decodes one advert with client, and returns it with its
// ETag ("" when the server sent none or an unusable one).
func (l *tnLoop) fetch(ctx context.Context, client *http.Client, url string) (*wire.Advert, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, "", fmt.Errorf("advert fetch failed: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, "", fmt.Errorf("advert fetch failed: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, wire.MaxJSONSize+1))
	if err != nil {
		return nil, "", fmt.Errorf("advert fetch failed: %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, "", fmt.Errorf("advert fetch failed: %s: %s", url, resp.Status)
	}
	a, err := wire.DecodeJSON(body)
	if err != nil {
		return nil, "", fmt.Errorf("advert invalid: %w", err)
	}
	return a, tnETag(resp.Header.Get("ETag")), nil
}
