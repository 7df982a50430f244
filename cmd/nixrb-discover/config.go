package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/peterbourgon/ff/v3"
)

// maxConfigSize bounds a --config file.
const maxConfigSize = 1 << 20

// jsonConfig is the --config parser: a JSON object whose keys are the flag
// names of fs (a list is an array of values). Unlike ff.JSONParser, every
// error names the file, the line, the key and what the key wants:
//
//	client.json:3: key "statc": no such setting (did you mean "static"?)
//	client.json:4: key "rise": "two": want an integer
func jsonConfig(fs *flag.FlagSet) ff.ConfigFileParser {
	return func(r io.Reader, set func(name, value string) error) error {
		path := "config file"
		if f := fs.Lookup("config"); f != nil && f.Value.String() != "" {
			path = f.Value.String()
		}
		data, err := io.ReadAll(io.LimitReader(r, maxConfigSize+1))
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if len(data) > maxConfigSize {
			return fmt.Errorf("%s: larger than %d bytes", path, maxConfigSize)
		}
		p := configParser{path: path, data: data, fs: fs, set: set}
		return p.parse()
	}
}

type configParser struct {
	path string
	data []byte
	fs   *flag.FlagSet
	set  func(name, value string) error
	d    *json.Decoder
}

// lineAt is the 1-based line of byte offset off.
func (p *configParser) lineAt(off int64) int {
	if off > int64(len(p.data)) {
		off = int64(len(p.data))
	}
	return 1 + bytes.Count(p.data[:off], []byte("\n"))
}

func (p *configParser) errorf(off int64, format string, args ...any) error {
	return fmt.Errorf("%s:%d: %s", p.path, p.lineAt(off), fmt.Sprintf(format, args...))
}

// syntax turns a decoder error into FILE:LINE: reason.
func (p *configParser) syntax(err error) error {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return p.errorf(se.Offset, "not valid JSON: %v", err)
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return p.errorf(int64(len(p.data)), "not valid JSON: unexpected end of file")
	}
	return p.errorf(p.d.InputOffset(), "not valid JSON: %v", err)
}

func (p *configParser) parse() error {
	p.d = json.NewDecoder(bytes.NewReader(p.data))
	p.d.UseNumber()
	tok, err := p.d.Token()
	if err != nil {
		return p.syntax(err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return p.errorf(0, "want a JSON object whose keys are flag names, such as {\"static\": \"/etc/nix/static-machines\"}")
	}
	for p.d.More() {
		tok, err := p.d.Token()
		if err != nil {
			return p.syntax(err)
		}
		key, _ := tok.(string)
		off := p.d.InputOffset()
		if err := p.value(key, off); err != nil {
			return err
		}
	}
	if _, err := p.d.Token(); err != nil {
		return p.syntax(err)
	}
	if _, err := p.d.Token(); err != io.EOF {
		return p.errorf(p.d.InputOffset(), "not valid JSON: text after the object")
	}
	return nil
}

// value reads key's value (a scalar or an array of scalars) and sets it.
func (p *configParser) value(key string, off int64) error {
	f := p.fs.Lookup(key)
	if f == nil || key == "config" {
		msg := "no such setting"
		if s := p.suggest(key); s != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", s)
		}
		return p.errorf(off, "key %q: %s", key, msg)
	}
	tok, err := p.d.Token()
	if err != nil {
		return p.syntax(err)
	}
	if d, ok := tok.(json.Delim); ok {
		if d != '[' {
			return p.errorf(off, "key %q: want %s, not an object", key, want(f))
		}
		for p.d.More() {
			t, err := p.d.Token()
			if err != nil {
				return p.syntax(err)
			}
			if err := p.setOne(f, t, off); err != nil {
				return err
			}
		}
		_, err := p.d.Token() // ']'
		if err != nil {
			return p.syntax(err)
		}
		return nil
	}
	return p.setOne(f, tok, off)
}

func (p *configParser) setOne(f *flag.Flag, tok json.Token, off int64) error {
	var v string
	switch t := tok.(type) {
	case string:
		v = t
	case json.Number:
		v = t.String()
	case bool:
		v = fmt.Sprint(t)
	case nil:
		v = ""
	default:
		return p.errorf(off, "key %q: want %s", f.Name, want(f))
	}
	if err := p.set(f.Name, v); err != nil {
		// ff wraps flag.Set's error; the flag's own reason is the last part.
		reason := err.Error()
		if i := strings.LastIndex(reason, ": "); i >= 0 {
			reason = reason[i+2:]
		}
		return p.errorf(off, "key %q: %q: want %s (%s)", f.Name, v, want(f), reason)
	}
	return nil
}

// want says what kind of value a flag takes.
func want(f *flag.Flag) string {
	if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
		return "true or false"
	}
	switch fmt.Sprintf("%T", f.Value) {
	case "*flag.intValue", "*flag.int64Value", "*flag.uintValue", "*flag.uint64Value":
		return "an integer"
	case "*flag.durationValue":
		return "a duration such as 10s"
	case "*main.repeated":
		return "a string or an array of strings"
	}
	return "a string"
}

// suggest returns the flag name nearest to key, if it is close.
func (p *configParser) suggest(key string) string {
	best, bestD := "", 3
	var names []string
	p.fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
	sort.Strings(names)
	for _, n := range names {
		if d := editDistance(key, n); d < bestD {
			best, bestD = n, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}
