package discover

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/nixrb-discover/nixrb-discover/internal/unixhttp"
)

// DefaultSocket is where the client serves its status on Linux.
const DefaultSocket = "/run/nixrb-discover/client.sock"

// DarwinSocket is where it serves it on macOS, which has no /run: its
// runtime directory is /var/run (cleared at boot, as /run is).
const DarwinSocket = "/var/run/nixrb-discover/client.sock"

// SocketFor returns the default status socket on goos (runtime.GOOS).
func SocketFor(goos string) string {
	if goos == "darwin" {
		return DarwinSocket
	}
	return DefaultSocket
}

// maxStatusSize bounds a status document read from the socket.
const maxStatusSize = 16 << 20

// ServeStatus serves the client's Status as JSON (GET /v1/status) on a
// unix socket at path, mode 0660, until ctx is done. A stale socket file
// left by a dead client is replaced; a live one is an error.
func ServeStatus(ctx context.Context, path string, get func(context.Context) (*Status, error), log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("status socket %s: %w", path, err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("status socket %s: another client is already running", path)
	}
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("status socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return fmt.Errorf("status socket %s: %w", path, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		s, err := get(ctx)
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(s)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	err = srv.Serve(ln)
	os.Remove(path)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("status socket %s: %w", path, err)
}

// FetchStatus reads a running client's Status from its socket.
func FetchStatus(ctx context.Context, path string) (*Status, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var s Status
	if err := unixhttp.GetJSON(ctx, path, "/v1/status", maxStatusSize, &s); err != nil {
		return nil, fmt.Errorf("read client status from %s: %w", path, err)
	}
	return &s, nil
}
