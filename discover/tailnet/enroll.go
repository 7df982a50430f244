package tailnet

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/nixrb-discover/nixrb-discover/health"
	"github.com/nixrb-discover/nixrb-discover/wire"
)

// Enroller enrols the client's SSH key with builders whose advert
// says enrolment is open: POST /v1/enroll over the tailnet, where the
// builder identifies the caller with WhoIs and decides by its tags.
type Enroller struct {
	// Dial connects to a tailnet address (as for Source).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// AdvertPort is the builders' advert port; 0 means wire.DefaultAdvertPort.
	AdvertPort int
	// PublicKey is the client's authorized_keys line.
	PublicKey string
	// Timeout bounds one request; 0 means 5 s.
	Timeout time.Duration
}

// maxEnrollReply bounds the builder's answer.
const maxEnrollReply = 16 << 10

// Enroll sends the client's key to the builder at c.Address. A refusal is
// returned as an error carrying the builder's reason.
func (e *Enroller) Enroll(ctx context.Context, c discover.Candidate) error {
	timeout := e.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	port := e.AdvertPort
	if port == 0 {
		port = wire.DefaultAdvertPort
	}
	hc := &http.Client{Timeout: timeout, Transport: &http.Transport{DialContext: e.Dial, DisableKeepAlives: true}}
	body, _ := json.Marshal(map[string]string{"public_key": e.PublicKey})
	url := "http://" + net.JoinHostPort(c.Address, strconv.Itoa(port)) + "/v1/enroll"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("enrol with %s: %w", c.Name, err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("enrol with %s: %w", c.Name, err)
	}
	defer resp.Body.Close()
	reply, _ := io.ReadAll(io.LimitReader(resp.Body, maxEnrollReply))
	if resp.StatusCode == http.StatusOK {
		return nil
	}
	var e2 struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(reply, &e2) == nil && e2.Error != "" {
		// The builder's words; the reason already says "enrolment refused".
		return errors.New(strings.TrimPrefix(e2.Error, string(health.ReasonEnrollRefused)+": "))
	}
	return fmt.Errorf("enrol with %s: %s", c.Name, resp.Status)
}
