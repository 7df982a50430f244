package static

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/nixrb-discover/nixrb-discover/render"
)

// Source reads builders from a machines file the user maintains
// (machines-file syntax). Its entries are always trusted. The file is
// watched: an edit is picked up at once, and a file that stops parsing
// keeps the last good set (and says why) rather than dropping builders.
type Source struct {
	// Path is the static machines file.
	Path string
	// NixVersion is the local Nix, for the parser's version rules.
	NixVersion render.NixVersion
	// LocalSystem fills "-" systems.
	LocalSystem string
	// Poll, when set, re-reads the file this often even without a change
	// notification (for filesystems without inotify). Zero: notifications only.
	Poll time.Duration
	// Logger gets a line per reload; nil discards.
	Logger *slog.Logger
}

// Name returns "static".
func (s *Source) Name() string { return discover.SourceStatic }

// Run emits the file's builders, then again after every change.
func (s *Source) Run(ctx context.Context, emit func(discover.Snapshot)) error {
	log := s.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("source", "static", "path", s.Path)
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("static source %s: watch: %w", s.Path, err)
	}
	defer w.Close()
	// Watch the directory: editors and atomic writers replace the file.
	if err := w.Add(filepath.Dir(s.Path)); err != nil {
		return fmt.Errorf("static source %s: watch directory: %w", s.Path, err)
	}
	var last []discover.Candidate
	load := func() {
		cs, err := s.load()
		if err != nil {
			log.Error("static file unusable, keeping the last good set", "err", err)
			emit(discover.Snapshot{Source: "static", Err: err})
			return
		}
		if last != nil && sameCandidates(last, cs) {
			return
		}
		last = cs
		log.Info("static builders loaded", "builders", len(cs))
		emit(discover.Snapshot{Source: "static", Candidates: cs})
	}
	load()
	var poll <-chan time.Time
	if s.Poll > 0 {
		t := time.NewTicker(s.Poll)
		defer t.Stop()
		poll = t.C
	}
	base := filepath.Base(s.Path)
	// Editors write in steps (truncate, then write): read the file once it
	// has been quiet for staticSettle, not at the first event, or a
	// half-written file would briefly look like "no builders".
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	defer settle.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if filepath.Base(ev.Name) == base {
				settle.Reset(staticSettle)
			}
		case <-settle.C:
			load()
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			log.Warn("static file watch error", "err", err)
		case <-poll:
			load()
		}
	}
}

// Check reads the file once, as Run will, and returns nil or every
// problem in it: render.ParseErrors, each "FILE:LINE: field NAME: problem",
// or the error that kept it from being read. Call it before Run so that a
// broken file stops the start instead of leaving its builders out.
func (s *Source) Check() error {
	entries, err := render.ParseFile(s.Path, render.ParseOptions{NixVersion: s.NixVersion, LocalSystem: s.LocalSystem})
	var problems render.ParseErrors
	if err != nil && !errors.As(err, &problems) {
		return fmt.Errorf("static file: %w", err)
	}
	for _, e := range entries {
		if err := e.Machine.Validate(); err != nil {
			problems = append(problems, &render.LineError{Path: e.Path, Line: e.Line, Err: err})
		}
	}
	if len(problems) > 0 {
		return problems
	}
	return nil
}

func (s *Source) load() ([]discover.Candidate, error) {
	entries, err := render.ParseFile(s.Path, render.ParseOptions{NixVersion: s.NixVersion, LocalSystem: s.LocalSystem})
	if err != nil {
		return nil, fmt.Errorf("static source: %w", err)
	}
	cs := make([]discover.Candidate, 0, len(entries))
	for _, e := range entries {
		m := e.Machine
		if err := m.Validate(); err != nil {
			return nil, fmt.Errorf("static source: %w", &render.LineError{Path: e.Path, Line: e.Line, Err: err})
		}
		cs = append(cs, discover.Candidate{
			Key:         "static:" + strings.ToLower(m.Name()),
			Name:        m.Name(),
			Address:     m.URI.Host,
			Machine:     &m,
			Trusted:     true,
			TrustReason: "static file " + s.Path,
		})
	}
	return cs, nil
}

// sameCandidates compares two static candidate lists by their lines.
func sameCandidates(a, b []discover.Candidate) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Key != b[i].Key || (a[i].Machine == nil) != (b[i].Machine == nil) ||
			a[i].Machine != nil && a[i].Machine.String() != b[i].Machine.String() {
			return false
		}
	}
	return true
}

// staticSettle is how long the static file must be quiet before it is read.
const staticSettle = 100 * time.Millisecond
