package render

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/crypto/ssh"
)

// MaxFileSize bounds a machines file (and each @include) that Parse reads.
const MaxFileSize = 4 << 20

// Bounds on one whole expansion of @includes: a file that includes
// another N times, which includes a third N times, would otherwise make
// N*N lines (N=2000: 4 million, minutes and gigabytes). Past any of them
// the parse stops with ErrIncludeBudget.
const (
	// MaxIncludeDepth bounds how deep @includes nest (the top file is 1).
	MaxIncludeDepth = 8
	// MaxIncludes bounds how many @include lines are followed in all.
	MaxIncludes = 256
	// MaxTotalBytes bounds the bytes read over all files, the top one
	// included.
	MaxTotalBytes = 16 << 20
	// MaxTotalSpecs bounds the builder specifications (and @include
	// lines) read over all files.
	MaxTotalSpecs = 100_000
	// maxErrors bounds the problems kept; the rest are counted.
	maxErrors = 1000
)

// ErrIncludeBudget is the problem reported (once) when a parse reaches
// one of MaxIncludeDepth, MaxIncludes, MaxTotalBytes or MaxTotalSpecs;
// what comes after it is not read.
var ErrIncludeBudget = errors.New("@include expansion too large")

// ParseOptions say which Nix the text is read as.
type ParseOptions struct {
	// NixVersion selects the implementation's rules (fractional speed
	// factors, where a '#' comment ends, how a port is written; see the
	// methods of [NixVersion]). Unknown means the oldest rules, so a file
	// that passes works on every Nix since 2.8.
	NixVersion NixVersion
	// LocalSystem fills Systems when the field is "-", as Nix does with
	// its own system. Empty leaves Systems nil.
	LocalSystem string
	// Warn, if set, is told about what Nix accepts silently but is likely
	// a mistake (a missing @include file).
	Warn func(path string, line int, msg string)
}

// Entry is a parsed machine and where it was written.
type Entry struct {
	Machine Machine
	Path    string // file it came from; empty for text given to Parse
	Line    int    // 1-based line number
}

// LineError is a problem at a line of a machines file.
type LineError struct {
	Path string
	Line int
	Err  error // usually a *FieldError
}

func (e *LineError) Error() string {
	msg := e.Err.Error()
	var fe *FieldError
	if errors.As(e.Err, &fe) {
		msg = fe.short()
	}
	if e.Path == "" {
		return fmt.Sprintf("line %d: %s", e.Line, msg)
	}
	return fmt.Sprintf("%s:%d: %s", e.Path, e.Line, msg)
}

func (e *LineError) Unwrap() error { return e.Err }

// ParseErrors is every problem Parse found, in file order.
type ParseErrors []*LineError

// Unwrap lets errors.Is and errors.As look into each problem.
func (es ParseErrors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

func (es ParseErrors) Error() string {
	msgs := make([]string, len(es))
	for i, e := range es {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "\n")
}

// ParseFile reads a machines file as Nix reads `builders = @path`,
// following @includes. It returns every machine it could read and, if any
// line is invalid, a ParseErrors listing each problem. Reading the file
// itself failing is returned as a plain error.
//
// Only regular files are read (a FIFO or device is an error, never waited
// on), and the whole expansion is bounded (see MaxIncludeDepth and the
// limits next to it).
func ParseFile(path string, opts ParseOptions) ([]Entry, error) {
	return ParseFileContext(context.Background(), path, opts)
}

// ParseFileContext is ParseFile that stops, returning ctx's error, once
// ctx is done.
func ParseFileContext(ctx context.Context, path string, opts ParseOptions) ([]Entry, error) {
	data, err := readBounded(path)
	if err != nil {
		return nil, err
	}
	p := parser{ctx: ctx, opts: opts, stack: []string{abs(path)}, bytes: len(data)}
	p.text(path, data)
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("read machines file %s: %w", path, err)
	}
	return p.entries, p.result()
}

// Parse reads machines-file text (the value of Nix's `builders` setting
// or a file's content) as Nix does. Errors are as for ParseFile.
func Parse(text []byte, opts ParseOptions) ([]Entry, error) {
	return ParseContext(context.Background(), text, opts)
}

// ParseContext is Parse that stops, returning ctx's error, once ctx is
// done.
func ParseContext(ctx context.Context, text []byte, opts ParseOptions) ([]Entry, error) {
	p := parser{ctx: ctx, opts: opts, bytes: len(text)}
	p.text("", text)
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("parse machines: %w", err)
	}
	return p.entries, p.result()
}

type parser struct {
	ctx     context.Context
	opts    ParseOptions
	stack   []string // absolute paths of the files being read, for cycles
	entries []Entry
	errs    ParseErrors
	dropped int // problems past maxErrors

	// The budget spent so far, and whether it ran out (then nothing more
	// is read).
	bytes, specs, includes int
	over                   bool
}

func (p *parser) result() error {
	if len(p.errs) == 0 {
		return nil
	}
	if p.dropped > 0 {
		errs := append(p.errs[:len(p.errs):len(p.errs)], &LineError{Err: fmt.Errorf("and %d more problems", p.dropped)})
		return errs
	}
	return p.errs
}

func (p *parser) fail(path string, line int, err error) {
	if len(p.errs) >= maxErrors {
		p.dropped++
		return
	}
	p.errs = append(p.errs, &LineError{Path: path, Line: line, Err: err})
}

// overBudget marks the budget spent, reporting what ran out once.
func (p *parser) overBudget(path string, line int, what string) {
	if !p.over {
		p.over = true
		p.fail(path, line, fmt.Errorf("%w: %s; the rest is not read (flatten the @includes)", ErrIncludeBudget, what))
	}
}

// text splits text into builder specifications the way Nix does: on
// newlines and ';', trimmed, with '#' starting a comment, which ends at
// the next ';' unless [NixVersion.CommentEndsAtNewline].
func (p *parser) text(path string, data []byte) {
	for i, physical := range strings.Split(string(data), "\n") {
		lineNo := i + 1
		if p.over || p.ctx.Err() != nil {
			return
		}
		if p.opts.NixVersion.CommentEndsAtNewline() {
			physical, _, _ = strings.Cut(physical, "#")
		}
		for _, spec := range strings.Split(physical, ";") {
			spec, _, _ = strings.Cut(spec, "#")
			spec = strings.Trim(spec, " \t\r\n")
			if spec == "" {
				continue
			}
			if p.specs++; p.specs > MaxTotalSpecs {
				p.overBudget(path, lineNo, fmt.Sprintf("more than %d lines in all", MaxTotalSpecs))
				return
			}
			if spec[0] == '@' {
				p.include(path, lineNo, strings.Trim(spec[1:], " \t\r\n"))
				continue
			}
			m, err := ParseLine(spec, p.opts)
			if err != nil {
				p.fail(path, lineNo, err)
				continue
			}
			p.entries = append(p.entries, Entry{Machine: m, Path: path, Line: lineNo})
		}
	}
}

func (p *parser) include(from string, line int, target string) {
	if p.includes++; p.includes > MaxIncludes {
		p.overBudget(from, line, fmt.Sprintf("more than %d @includes in all", MaxIncludes))
		return
	}
	if len(p.stack) >= MaxIncludeDepth {
		p.overBudget(from, line, fmt.Sprintf("@includes nested deeper than %d", MaxIncludeDepth))
		return
	}
	a := abs(target)
	for _, s := range p.stack {
		if s == a {
			p.fail(from, line, &FieldError{Builder: "@" + target, Field: "include", Value: target,
				Reason: "includes itself (cycle: " + strings.Join(append(p.stack, a), " -> ") + "); Nix would recurse forever"})
			return
		}
	}
	data, err := readBounded(target)
	if errors.Is(err, fs.ErrNotExist) {
		if p.opts.Warn != nil {
			p.opts.Warn(from, line, fmt.Sprintf("@%s: file does not exist (Nix ignores it)", target))
		}
		return
	}
	if err != nil {
		p.fail(from, line, &FieldError{Builder: "@" + target, Field: "include", Value: target, Reason: err.Error()})
		return
	}
	if p.bytes += len(data); p.bytes > MaxTotalBytes {
		p.overBudget(from, line, fmt.Sprintf("more than %d bytes in all", MaxTotalBytes))
		return
	}
	p.stack = append(p.stack, a)
	p.text(target, data)
	p.stack = p.stack[:len(p.stack)-1]
}

func readBounded(path string) ([]byte, error) {
	f, err := openRegular(path)
	if err != nil {
		return nil, fmt.Errorf("read machines file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read machines file %s: %w", path, err)
	}
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("read machines file %s: larger than %d bytes", path, MaxFileSize)
	}
	return data, nil
}

func abs(path string) string {
	a, err := filepath.Abs(path)
	if err != nil {
		return path
	}
	if r, err := filepath.EvalSymlinks(a); err == nil {
		return r
	}
	return a
}

// fieldNames are the names errors use for the 8 fields.
var fieldNames = [8]string{"uri", "systems", "ssh-key", "max-jobs", "speed-factor", "supported-features", "mandatory-features", "host-key"}

// ParseLine reads one builder specification (no newlines, no comments) as
// Nix does.
func ParseLine(spec string, opts ParseOptions) (Machine, error) {
	tokens := strings.FieldsFunc(spec, func(r rune) bool { return r == ' ' || r == '\t' || r == '\r' || r == '\n' })
	isSet := func(i int) bool { return len(tokens) > i && tokens[i] != "" && tokens[i] != "-" }
	var m Machine
	if !isSet(0) {
		return m, &FieldError{Field: "uri", Value: spec, Reason: "store URI missing in the first field"}
	}
	uri, err := parseStoreURI(tokens[0], opts.NixVersion)
	if err != nil {
		return m, err
	}
	m.URI = uri
	name := m.Name()
	bad := func(i int, reason string) error {
		return &FieldError{Builder: name, Field: fieldNames[i], Value: tokens[i], Reason: reason}
	}
	if len(tokens) > 8 {
		return m, &FieldError{Builder: name, Field: "line", Value: tokens[8],
			Reason: fmt.Sprintf("%d fields, at most 8 (URI, systems, key, jobs, speed, features, mandatory, host key)", len(tokens))}
	}
	if isSet(1) {
		m.Systems = splitList(tokens[1])
		if len(m.Systems) == 0 {
			return m, bad(1, "no system named (use - for Nix's own system)")
		}
	} else if opts.LocalSystem != "" {
		m.Systems = []string{opts.LocalSystem}
	}
	if isSet(2) {
		m.SSHKey = tokens[2]
	}
	m.MaxJobs = 1
	if isSet(3) {
		n, ok := parseUnsigned(tokens[3])
		if !ok {
			return m, bad(3, "not an unsigned integer")
		}
		m.MaxJobs = n
	}
	m.SpeedFactor = 1
	if isSet(4) {
		f, err := parseSpeed(tokens[4], opts.NixVersion)
		if err != nil {
			return m, bad(4, err.Error())
		}
		m.SpeedFactor = f
	}
	if isSet(5) {
		m.SupportedFeatures = featureSet(splitList(tokens[5]))
	}
	if isSet(6) {
		m.MandatoryFeatures = featureSet(splitList(tokens[6]))
	}
	if isSet(7) {
		key, err := decodeHostKey(tokens[7])
		if err != nil {
			return m, bad(7, err.Error())
		}
		m.HostKey = key
	}
	return m, nil
}

// splitList splits a comma list as Nix's tokenizeString: empty items vanish.
func splitList(s string) []string {
	var out []string
	for _, it := range strings.Split(s, ",") {
		if it != "" {
			out = append(out, it)
		}
	}
	return out
}

func parseUnsigned(s string) (uint32, bool) {
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseUint(s, 10, 32)
	return uint32(n), err == nil
}

func parseSpeed(s string, v NixVersion) (float64, error) {
	if !v.FractionalSpeed() {
		n, ok := parseUnsigned(s)
		switch {
		case !ok && v.Impl == Lix:
			return 0, fmt.Errorf("not an unsigned integer (%s: the first Lix release that reads fractions is not known here; write a whole number)", v)
		case !ok:
			return 0, fmt.Errorf("not an unsigned integer (%s; fractions need CppNix 2.20)", v)
		}
		return float64(n), nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, errors.New("not a number")
	}
	if f < 0 {
		return 0, errors.New("negative (must be >= 0)")
	}
	return f, nil
}

// decodeHostKey reads field 8: base64 of one SSH public key line. Nix
// itself checks only the base64; a key that does not parse would make
// every connection fail host-key verification, so it is an error here.
func decodeHostKey(s string) (string, error) {
	raw, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		raw, err = base64.RawStdEncoding.DecodeString(s)
	}
	if err != nil {
		return "", errors.New("not valid base64")
	}
	line := strings.TrimSuffix(string(raw), "\n")
	if err := checkKeyLine(line); err != nil {
		return "", err
	}
	return line, nil
}

// checkKeyLine accepts exactly one SSH public key line ("type base64
// [comment]") without options, newlines or control characters.
func checkKeyLine(line string) error {
	if line == "" {
		return errors.New("empty host key")
	}
	if i := strings.IndexFunc(line, isControl); i >= 0 {
		return fmt.Errorf("host key contains control character %q", line[i])
	}
	_, comment, options, rest, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		return errors.New(`not an SSH public key line (want "ssh-ed25519 AAAA… [comment]")`)
	}
	if len(options) > 0 {
		return errors.New("host key line has options before the key")
	}
	if len(rest) > 0 {
		return errors.New("more than one key line")
	}
	_ = comment
	return nil
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// parseStoreURI reads field 1. As in Nix, a URI without "://" that is not
// a path or a special store word is an SSH host ("ssh://" is prepended).
func parseStoreURI(s string, v NixVersion) (StoreURI, error) {
	if !strings.Contains(s, "://") {
		if isStoreWord(s) {
			return StoreURI{Opaque: s}, nil
		}
		s = "ssh://" + s
	}
	scheme, rest, _ := strings.Cut(s, "://")
	if scheme != "ssh" && scheme != "ssh-ng" {
		return StoreURI{Opaque: s}, nil
	}
	u := StoreURI{Scheme: scheme}
	authority, query, hasQuery := strings.Cut(rest, "?")
	bad := func(reason string) error {
		return &FieldError{Builder: authority, Field: "uri", Value: s, Reason: reason}
	}
	if hasQuery {
		params, err := url.ParseQuery(query)
		if err != nil {
			return u, bad("bad store parameters: " + err.Error())
		}
		if p, ok := params["port"]; ok && v.PortStyle() == PortParam {
			if len(p) != 1 {
				return u, bad("more than one port parameter")
			}
			if u.Port, err = parsePort(p[0]); err != nil {
				return u, bad(err.Error())
			}
			delete(params, "port")
		}
		if len(params) > 0 {
			u.Params = params
		}
	}
	if at := strings.LastIndex(authority, "@"); at >= 0 {
		u.User, authority = authority[:at], authority[at+1:]
	}
	host, port, err := splitHostPort(authority)
	if err != nil {
		return u, bad(err.Error())
	}
	u.Host = host
	if u.Host == "" {
		return u, bad("no host")
	}
	if port != 0 {
		switch {
		case v.PortStyle() == PortParam:
			return u, bad(fmt.Sprintf("%s reads %q as a host name: write the port as ?port=%d", v, authority, port))
		case v.PortStyle() != PortInHost:
			return u, bad(fmt.Sprintf("%s reads %q as a host name (host:port needs CppNix 2.31): use an ssh_config Host alias", v, authority))
		}
		u.Port = port
	}
	return u, nil
}

// isStoreWord reports whether a scheme-less URI is a store Nix does not
// treat as an SSH host: a path or one of the special store words.
func isStoreWord(s string) bool {
	return strings.Contains(s, "/") || s == "auto" || s == "daemon" || s == "local" ||
		strings.HasPrefix(s, "auto?") || strings.HasPrefix(s, "daemon?") ||
		strings.HasPrefix(s, "local?") || strings.HasPrefix(s, "?")
}

// splitHostPort splits "host", "host:port", "[v6]", "[v6]:port" or a bare
// IPv6 address.
func splitHostPort(a string) (string, int, error) {
	if strings.HasPrefix(a, "[") {
		end := strings.Index(a, "]")
		if end < 0 {
			return "", 0, errors.New("unclosed '[' in host")
		}
		host, rest := a[1:end], a[end+1:]
		if rest == "" {
			return host, 0, nil
		}
		if !strings.HasPrefix(rest, ":") {
			return "", 0, fmt.Errorf("unexpected %q after ']'", rest)
		}
		port, err := parsePort(rest[1:])
		return host, port, err
	}
	if strings.Count(a, ":") == 1 {
		host, p, _ := strings.Cut(a, ":")
		port, err := parsePort(p)
		return host, port, err
	}
	return a, 0, nil
}

func parsePort(s string) (int, error) {
	n, ok := parseUnsigned(s)
	if !ok || n == 0 || n > 65535 {
		return 0, fmt.Errorf("bad port %q", s)
	}
	return int(n), nil
}
