package render

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
)

// This file is a TEST HELPER, not the code under test: a Go model of how
// each Nix implementation reads a machines file and which SSH destination
// it then connects to, written from that implementation's own sources so
// that a line our formatter writes can be checked against the reader that
// will really read it (the real CppNix 2.8 and 2.26 lanes in nix_test.go
// check the same against the binaries).
//
// Sources modelled:
//   - CppNix src/libstore/machines.cc: expandBuilderLines (before 2.29:
//     tokenizeString(builders, "\n;"), trim, erase from '#'; from 2.29,
//     NixOS/nix#12984: per line erase from '#', then split on ';'),
//     parseBuilderLine (tokenizeString on whitespace, '-' or "" unset;
//     speed factor parseUnsignedIntField before 2.20, a float after), the
//     ssh:// prefix for a scheme-less host.
//   - CppNix store URIs: before 2.31 the authority after '@' is handed to
//     ssh as the host name, "b1:2222" included; from 2.31 (rl-2.31.md,
//     #7044) it is an RFC 3986 authority, host:port and [v6]:port. The
//     SSH stores have no "port" setting: a ?port= is an unknown setting,
//     warned about and ignored.
//   - Lix lix/libstore/machines.cc: tokenizeString(builders, "\n;"),
//     trim, erase from '#' (every release, machines_legacy_parsing on
//     main); the speed factor through string2Float<float> (main);
//     lix/libstore/ssh-store.cc and legacy-ssh-store.cc: the host is the
//     authority after '@' as is; from 2.93 (cl/2432) the "port" store
//     setting of CommonSSHStoreConfig is the SSH port, before it is an
//     unknown setting.

// modelTarget is where a modelled Nix connects for one machine line.
type modelTarget struct {
	scheme, user, host string
	port               int // 22 when the URI gives none
	speed              float64
	params             url.Values // store settings the Nix does not read as the port
}

// modelRead reads machines-file text as Nix implementation v does and
// returns one target per machine, or the error Nix would report.
func modelRead(v NixVersion, text string) ([]modelTarget, error) {
	var out []modelTarget
	for _, spec := range modelSplit(v, text) {
		t, err := modelLine(v, spec)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, nil
}

// modelSplit is expandBuilderLines (without @includes).
func modelSplit(v NixVersion, text string) []string {
	var specs []string
	keep := func(s string) {
		if s = strings.TrimSpace(s); s != "" {
			specs = append(specs, s)
		}
	}
	if v.Impl != Lix && v.cppAtLeast(2, 29) {
		for _, line := range strings.Split(text, "\n") {
			line, _, _ = strings.Cut(line, "#")
			for _, e := range strings.Split(line, ";") {
				keep(e)
			}
		}
		return specs
	}
	for _, line := range strings.FieldsFunc(text, func(r rune) bool { return r == '\n' || r == ';' }) {
		line = strings.TrimSpace(line)
		line, _, _ = strings.Cut(line, "#")
		keep(line)
	}
	return specs
}

// modelLine is parseBuilderLine plus the store's reading of the URI.
func modelLine(v NixVersion, spec string) (modelTarget, error) {
	tok := strings.Fields(spec)
	set := func(i int) bool { return len(tok) > i && tok[i] != "" && tok[i] != "-" }
	if !set(0) {
		return modelTarget{}, fmt.Errorf("bad machine specification: store URL was not found at the first column of a row: '%s'", spec)
	}
	t := modelTarget{speed: 1, port: 22}
	if set(4) {
		if v.Impl == Lix || v.cppAtLeast(2, 20) {
			f, err := strconv.ParseFloat(tok[4], 32)
			if err != nil {
				return t, fmt.Errorf("bad machine specification: failed to convert column #4 in a row: '%s' to 'float'", spec)
			}
			t.speed = f
		} else {
			n, err := strconv.ParseUint(tok[4], 10, 32)
			if err != nil {
				return t, fmt.Errorf("bad machine specification: failed to convert column #4 in a row: '%s' to 'unsigned int'", spec)
			}
			t.speed = float64(n)
		}
	}
	uri := tok[0]
	if !strings.Contains(uri, "://") {
		uri = "ssh://" + uri
	}
	scheme, rest, _ := strings.Cut(uri, "://")
	t.scheme = scheme
	authority, query, _ := strings.Cut(rest, "?")
	params, err := url.ParseQuery(query)
	if err != nil {
		return t, fmt.Errorf("bad store parameters %q: %v", query, err)
	}
	if at := strings.LastIndex(authority, "@"); at >= 0 {
		t.user, authority = authority[:at], authority[at+1:]
	}
	t.host = authority
	if v.Impl != Lix && v.cppAtLeast(2, 31) {
		switch {
		case strings.HasPrefix(authority, "["):
			end := strings.Index(authority, "]")
			if end < 0 {
				return t, fmt.Errorf("bad authority %q", authority)
			}
			t.host = authority[1:end]
			if p, ok := strings.CutPrefix(authority[end+1:], ":"); ok {
				if t.port, err = strconv.Atoi(p); err != nil {
					return t, fmt.Errorf("bad port %q", p)
				}
			}
		case strings.Count(authority, ":") == 1:
			h, p, _ := strings.Cut(authority, ":")
			t.host = h
			if t.port, err = strconv.Atoi(p); err != nil {
				return t, fmt.Errorf("bad port %q", p)
			}
		}
	}
	if v.lixAtLeast(2, 93) {
		if p := params.Get("port"); p != "" {
			if t.port, err = strconv.Atoi(p); err != nil {
				return t, fmt.Errorf("bad port setting %q", p)
			}
			params.Del("port")
		}
	}
	t.params = params
	return t, nil
}
