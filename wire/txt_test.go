package wire

import (
	"bytes"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
)

func TestTXTRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		edit func(a *Advert)
	}{
		{"full", func(a *Advert) {}},
		{"minimal", func(a *Advert) {
			a.SupportedFeatures, a.MandatoryFeatures = nil, nil
			a.Capacity, a.NixVersion, a.AgentVersion, a.Enroll = Capacity{}, "", "", false
		}},
		{"draining-ssh-odd-port", func(a *Advert) { a.Draining, a.Protocol, a.SSHPort = true, ProtocolSSH, 2222 }},
		{"signed", func(a *Advert) {
			if err := Sign(a, testSigningKey(t, 1), a.IssuedAt); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := testAdvert(t)
			tt.edit(a)
			txt, err := EncodeTXT(a)
			if err != nil {
				t.Fatal(err)
			}
			got, err := DecodeTXT(txt)
			if err != nil {
				t.Fatalf("DecodeTXT(%q): %v", txt, err)
			}
			if !reflect.DeepEqual(got, a) {
				t.Errorf("round trip changed the advert:\n got %+v\nwant %+v", got, a)
			}
		})
	}
}

// TestTXTSize keeps a realistic signed advert inside the mDNS budget: every
// string at most 255 bytes and the whole set well under 1300 bytes.
func TestTXTSize(t *testing.T) {
	a := testAdvert(t)
	if err := Sign(a, testSigningKey(t, 1), a.IssuedAt); err != nil {
		t.Fatal(err)
	}
	txt, err := EncodeTXT(a)
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, s := range txt {
		if len(s) > 255 {
			t.Errorf("TXT string %q is %d bytes", s, len(s))
		}
		total += 1 + len(s) // each string has a length byte on the wire
	}
	j, err := EncodeJSON(a)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("signed advert: TXT rdata %d bytes in %d strings, JSON %d bytes", total, len(txt), len(j))
	if total > 700 {
		t.Errorf("TXT rdata is %d bytes, budget 700 (of the ~1300 a packet holds)", total)
	}
}

// TestTXTGolden pins the documented TXT mapping (docs/PROTOCOL.md).
func TestTXTGolden(t *testing.T) {
	txt, err := EncodeTXT(testAdvert(t))
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(txt, "\n") + "\n"
	if os.Getenv("UPDATE_GOLDEN") != "" {
		if err := os.WriteFile("testdata/advert-v1.txt", []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile("testdata/advert-v1.txt")
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("EncodeTXT =\n%s\nwant\n%s", got, want)
	}
}

func TestDecodeTXTTolerates(t *testing.T) {
	base, err := EncodeTXT(testAdvert(t))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		txt  []string
	}{
		{"unknown-keys-of-a-later-version", append([]string{"gpu=a100", "zz=1", "flag"}, base...)},
		{"empty-strings", append([]string{""}, base...)},
		{"upper-case-keys", append([]string{"H=" + strings.TrimPrefix(base[1], "h=")}, base[2:]...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			txt := tt.txt
			if tt.name == "upper-case-keys" {
				txt = append([]string{base[0]}, txt...)
			}
			got, err := DecodeTXT(txt)
			if err != nil {
				t.Fatal(err)
			}
			if want := testAdvert(t); !reflect.DeepEqual(got, want) {
				t.Errorf("got %+v, want %+v", got, want)
			}
		})
	}
}

func TestDecodeTXTRejects(t *testing.T) {
	base, err := EncodeTXT(testAdvert(t))
	if err != nil {
		t.Fatal(err)
	}
	with := func(key, value string) []string {
		out := []string{}
		for _, s := range base {
			if !strings.HasPrefix(s, key+"=") {
				out = append(out, s)
			}
		}
		if value != "\x00" {
			out = append(out, key+"="+value)
		}
		return out
	}
	tests := []struct {
		name  string
		txt   []string
		field string // "" when the error is not about one field
	}{
		{"duplicate-key", append(append([]string{}, base...), "u=root"), ""},
		{"duplicate-key-other-case", append(append([]string{}, base...), "U=root"), ""},
		{"known-key-without-value", append(with("dr", "\x00"), "dr"), ""},
		{"too-many-strings", append(append([]string{}, base...), make([]string, MaxTXTStrings)...), ""},
		{"string-over-255-bytes", append(append([]string{}, base...), "x="+strings.Repeat("a", 254)), ""},
		{"no-key", append(append([]string{}, base...), "=v"), ""},
		{"host-key-not-base64", with("hk", "!!"), "host_key"},
		{"host-key-not-a-key", with("hk", "AAAA"), "host_key"},
		{"port-not-a-number", with("p", "ssh"), "ssh_port"},
		{"port-out-of-range", with("p", "99999999999"), "ssh_port"},
		{"speed-not-a-number", with("sp", "fast"), "speed_factor"},
		{"speed-inf", with("sp", "+Inf"), "speed_factor"},
		{"draining-not-bool", with("dr", "yes"), "draining"},
		{"systems-empty-item", with("sy", "x86_64-linux,"), "systems"},
		{"hostname-injects-field", with("h", "b1 evil"), "hostname"},
		{"sig-without-key-id", with("sig", strings.Repeat("A", 86)), "signature.key_id"},
		{"load-negative", with("ld", "-1"), "capacity.load1"},
	}
	for _, r := range txtRequired {
		tests = append(tests, struct {
			name  string
			txt   []string
			field string
		}{"missing-" + r.field, with(r.key, "\x00"), r.field})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := DecodeTXT(tt.txt)
			if err == nil {
				t.Fatalf("DecodeTXT accepted it: %+v", a)
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

func TestEncodeTXTRefusesLongStrings(t *testing.T) {
	a := testAdvert(t)
	// A valid hostname of 253 bytes makes "h=..." 255 bytes: still fits.
	a.Hostname = strings.Repeat(strings.Repeat("a", 62)+".", 4) + "b"
	if _, err := EncodeTXT(a); err != nil {
		t.Errorf("255-byte string refused: %v", err)
	}
	// Thirteen 20-byte features make a 275-byte "sf=" string.
	a.SupportedFeatures = nil
	for i := range 13 {
		a.SupportedFeatures = append(a.SupportedFeatures, strings.Repeat("f", 18)+string(rune('a'+i))+"x")
	}
	if _, err := EncodeTXT(a); err == nil || !strings.Contains(err.Error(), "TXT key sf") {
		t.Errorf("EncodeTXT of a 275-byte sf string: err = %v, want a TXT key sf error", err)
	}
}

// txtRData is txt as DNS TXT record data: each string after its length byte.
func txtRData(txt []string) []byte {
	var b []byte
	for _, s := range txt {
		b = append(b, byte(len(s)))
		b = append(b, s...)
	}
	return b
}

// parseRData splits DNS TXT record data into its strings.
func parseRData(b []byte) ([]string, bool) {
	var txt []string
	for len(b) > 0 {
		n := int(b[0])
		if len(b) < 1+n {
			return nil, false
		}
		txt = append(txt, string(b[1:1+n]))
		b = b[1+n:]
	}
	return txt, true
}

// FuzzDecodeTXT: no TXT record data panics, and anything accepted
// re-encodes to TXT strings that decode to the same advert.
func FuzzDecodeTXT(f *testing.F) {
	a := testAdvert(f)
	txt, _ := EncodeTXT(a)
	f.Add(txtRData(txt))
	if err := Sign(a, testSigningKey(f, 1), a.IssuedAt); err != nil {
		f.Fatal(err)
	}
	txt, _ = EncodeTXT(a)
	f.Add(txtRData(txt))
	f.Add(txtRData(append([]string{"V=3", "future=x", "flag", ""}, txt[1:]...)))
	f.Fuzz(func(t *testing.T, rdata []byte) {
		txt, ok := parseRData(rdata)
		if !ok {
			return
		}
		a, err := DecodeTXT(txt)
		if err != nil {
			return
		}
		enc, err := EncodeTXT(a)
		if err != nil {
			t.Fatalf("accepted advert does not re-encode: %v", err)
		}
		a2, err := DecodeTXT(enc)
		if err != nil {
			t.Fatalf("re-encoded advert does not decode: %v\n%q", err, enc)
		}
		if !reflect.DeepEqual(a, a2) {
			t.Fatalf("round trip changed the advert:\n%+v\n%+v", a, a2)
		}
		j, err := EncodeJSON(a)
		if err != nil {
			t.Fatalf("accepted TXT advert has no JSON form: %v", err)
		}
		a3, err := DecodeJSON(j)
		if err != nil || !bytes.Equal(canonical(a), canonical(a3)) {
			t.Fatalf("JSON form differs (%v):\n%+v\n%+v", err, a, a3)
		}
	})
}
