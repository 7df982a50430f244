package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
)

func TestJSONRoundTrip(t *testing.T) {
	for _, name := range []string{"full", "minimal"} {
		t.Run(name, func(t *testing.T) {
			a := testAdvert(t)
			if name == "minimal" {
				a.SupportedFeatures, a.MandatoryFeatures = nil, nil
				a.Capacity, a.NixVersion, a.AgentVersion = Capacity{}, "", ""
			}
			b, err := EncodeJSON(a)
			if err != nil {
				t.Fatal(err)
			}
			got, err := DecodeJSON(b)
			if err != nil {
				t.Fatalf("DecodeJSON(%s): %v", b, err)
			}
			if !reflect.DeepEqual(got, a) {
				t.Errorf("round trip changed the advert:\n got %+v\nwant %+v", got, a)
			}
		})
	}
}

// TestJSONGolden pins the documented JSON document: a change to the wire
// format shows up here and must be reflected in docs/PROTOCOL.md.
func TestJSONGolden(t *testing.T) {
	a := testAdvert(t)
	b, err := EncodeJSON(a)
	if err != nil {
		t.Fatal(err)
	}
	var indented bytes.Buffer
	if err := json.Indent(&indented, b, "", "  "); err != nil {
		t.Fatal(err)
	}
	indented.WriteByte('\n')
	if os.Getenv("UPDATE_GOLDEN") != "" {
		if err := os.WriteFile("testdata/advert-v1.json", indented.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile("testdata/advert-v1.json")
	if err != nil {
		t.Fatal(err)
	}
	if indented.String() != string(want) {
		t.Errorf("EncodeJSON (indented) =\n%s\nwant\n%s", indented.String(), want)
	}
	got, err := DecodeJSON(want)
	if err != nil {
		t.Fatalf("golden file does not decode: %v", err)
	}
	if !reflect.DeepEqual(got, a) {
		t.Errorf("golden file decodes to\n%+v\nwant\n%+v", got, a)
	}
}

func TestDecodeJSONIgnoresFutureFields(t *testing.T) {
	b, err := EncodeJSON(testAdvert(t))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	m["version"] = 2
	m["gpu"] = map[string]any{"model": "A100", "count": 4}
	m["regions"] = []string{"eu"}
	m["capacity"].(map[string]any)["io_wait"] = 0.3
	b2, _ := json.Marshal(m)
	got, err := DecodeJSON(b2)
	if err != nil {
		t.Fatalf("a v1 reader refused a v2 advert: %v", err)
	}
	want := testAdvert(t)
	want.Version = 2
	if !reflect.DeepEqual(got, want) {
		t.Errorf("v2 advert decoded to %+v, want %+v", got, want)
	}
}

func TestDecodeJSONRejects(t *testing.T) {
	good, err := EncodeJSON(testAdvert(t))
	if err != nil {
		t.Fatal(err)
	}
	edit := func(f func(m map[string]any)) []byte {
		var m map[string]any
		if err := json.Unmarshal(good, &m); err != nil {
			t.Fatal(err)
		}
		f(m)
		b, _ := json.Marshal(m)
		return b
	}
	tests := []struct {
		name  string
		in    []byte
		field string // "" when the error is not about one field
	}{
		{"empty-input", []byte(""), ""},
		{"not-an-object", []byte(`[1,2]`), ""},
		{"trailing-data", append(append([]byte{}, good...), []byte(`{}`)...), ""},
		{"oversized", []byte(`{"hostname":"` + strings.Repeat("a", MaxJSONSize) + `"}`), ""},
		{"host-key-not-ssh", edit(func(m map[string]any) { m["host_key"] = "ssh-ed25519 bm90IGEga2V5" }), "host_key"},
		{"port-as-string", edit(func(m map[string]any) { m["ssh_port"] = "22" }), "ssh_port"},
		{"load-as-string", edit(func(m map[string]any) { m["capacity"].(map[string]any)["load1"] = "high" }), "capacity.load1"},
		{"issued-at-not-a-time", edit(func(m map[string]any) { m["issued_at"] = "yesterday" }), "issued_at"},
		{"systems-null", edit(func(m map[string]any) { m["systems"] = nil }), "systems"},
		{"systems-empty", edit(func(m map[string]any) { m["systems"] = []string{} }), "systems"},
		{"signature-without-sig", edit(func(m map[string]any) { m["signature"] = map[string]any{"key_id": "abc"} }), "signature.sig"},
		{"signature-not-base64", edit(func(m map[string]any) { m["signature"] = map[string]any{"key_id": "abc", "sig": "!!"} }), ""},
	}
	for _, f := range []string{"version", "hostname", "ssh_user", "ssh_port", "protocol", "host_key", "systems", "max_jobs", "speed_factor", "issued_at"} {
		tests = append(tests, struct {
			name  string
			in    []byte
			field string
		}{"missing-" + f, edit(func(m map[string]any) { delete(m, f) }), f})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := DecodeJSON(tt.in)
			if err == nil {
				t.Fatalf("DecodeJSON accepted it: %+v", a)
			}
			if tt.field == "" {
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tt.field {
				t.Errorf("error %q does not name field %q", err, tt.field)
			}
		})
	}
}

// FuzzDecodeJSON: no input panics, and anything accepted re-encodes to a
// document that decodes to the same advert, byte-stable from then on, and
// (when it fits in TXT strings) survives the TXT mapping with the same
// signed bytes.
func FuzzDecodeJSON(f *testing.F) {
	a := testAdvert(f)
	b, _ := EncodeJSON(a)
	f.Add(b)
	if err := Sign(a, testSigningKey(f, 1), a.IssuedAt); err != nil {
		f.Fatal(err)
	}
	b, _ = EncodeJSON(a)
	f.Add(b)
	f.Add([]byte(`{"version":2,"hostname":"b","ssh_user":"u","ssh_port":1,"protocol":"ssh","host_key":"` + a.HostKey + `","systems":["a-b"],"max_jobs":1,"speed_factor":1e-300,"issued_at":"1970-01-01T00:00:00.5+01:00","capacity":{"load1":-0},"x":[]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := DecodeJSON(b)
		if err != nil {
			return
		}
		enc, err := EncodeJSON(a)
		if err != nil {
			t.Fatalf("accepted advert does not re-encode: %v", err)
		}
		a2, err := DecodeJSON(enc)
		if err != nil {
			t.Fatalf("re-encoded advert does not decode: %v\n%s", err, enc)
		}
		if !reflect.DeepEqual(a, a2) {
			t.Fatalf("round trip changed the advert:\n%+v\n%+v", a, a2)
		}
		if enc2, _ := EncodeJSON(a2); !bytes.Equal(enc, enc2) {
			t.Fatalf("encoding is not stable:\n%s\n%s", enc, enc2)
		}
		txt, err := EncodeTXT(a)
		if err != nil {
			return // a long list can exceed one TXT string
		}
		a3, err := DecodeTXT(txt)
		if err != nil {
			t.Fatalf("TXT form of an accepted advert does not decode: %v\n%q", err, txt)
		}
		if !bytes.Equal(canonical(a), canonical(a3)) {
			t.Fatalf("JSON and TXT forms sign differently:\n%+v\n%+v", a, a3)
		}
	})
}
