package wire

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// testSigningKey is a fixed fleet key; n picks one of several.
func testSigningKey(t testing.TB, n byte) *SigningKey {
	t.Helper()
	seed := make([]byte, ed25519.SeedSize)
	copy(seed, "nixrb-discover test fleet key...")
	seed[0] = n
	return newSigningKey(ed25519.NewKeyFromSeed(seed))
}

var signNow = time.Date(2026, 11, 26, 4, 0, 0, 0, time.UTC)

func signedAdvert(t testing.TB) (*Advert, []TrustKey) {
	t.Helper()
	a := testAdvert(t)
	k := testSigningKey(t, 1)
	if err := Sign(a, k, signNow.Add(123*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	return a, []TrustKey{testSigningKey(t, 2).TrustKey(), k.TrustKey()}
}

func TestSignVerify(t *testing.T) {
	t.Run("sets-issued-at-to-the-second", func(t *testing.T) {
		a, _ := signedAdvert(t)
		if !a.IssuedAt.Equal(signNow) || a.IssuedAt.Location() != time.UTC {
			t.Errorf("IssuedAt = %v, want %v", a.IssuedAt, signNow)
		}
	})
	t.Run("fresh-advert-verifies", func(t *testing.T) {
		a, trusted := signedAdvert(t)
		if err := Verify(a, trusted, signNow.Add(DefaultMaxAge), 0); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("verifies-after-json", func(t *testing.T) {
		a, trusted := signedAdvert(t)
		b, err := EncodeJSON(a)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeJSON(b)
		if err != nil {
			t.Fatal(err)
		}
		if err := Verify(got, trusted, signNow, DefaultMaxAge); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("verifies-after-txt", func(t *testing.T) {
		a, trusted := signedAdvert(t)
		txt, err := EncodeTXT(a)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeTXT(txt)
		if err != nil {
			t.Fatal(err)
		}
		if err := Verify(got, trusted, signNow, DefaultMaxAge); err != nil {
			t.Fatal(err)
		}
	})
	tests := []struct {
		name    string
		edit    func(a *Advert) []TrustKey // nil: keep the trusted keys
		now     time.Time
		wantErr error
	}{
		{"unsigned", func(a *Advert) []TrustKey { a.Signature = nil; return nil }, signNow, ErrUnsigned},
		{"stale-replay", func(a *Advert) []TrustKey { return nil }, signNow.Add(DefaultMaxAge + time.Second), ErrStale},
		{"from-the-future", func(a *Advert) []TrustKey { return nil }, signNow.Add(-MaxClockSkew - time.Second), ErrFuture},
		{"signer-not-trusted", func(a *Advert) []TrustKey {
			return []TrustKey{testSigningKey(t, 2).TrustKey()}
		}, signNow, ErrUntrusted},
		{"no-trusted-keys", func(a *Advert) []TrustKey { return []TrustKey{} }, signNow, ErrUntrusted},
		{"other-key-claims-trusted-id", func(a *Advert) []TrustKey {
			k := testSigningKey(t, 3)
			k.KeyID = a.Signature.KeyID
			if err := Sign(a, k, signNow); err != nil {
				t.Fatal(err)
			}
			return nil
		}, signNow, ErrBadSignature},
		{"signature-bit-flipped", func(a *Advert) []TrustKey { a.Signature.Sig[10] ^= 1; return nil }, signNow, ErrBadSignature},
		{"issued-at-moved", func(a *Advert) []TrustKey { a.IssuedAt = a.IssuedAt.Add(time.Second); return nil }, signNow, ErrBadSignature},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, trusted := signedAdvert(t)
			if tr := tt.edit(a); tr != nil {
				trusted = tr
			}
			err := Verify(a, trusted, tt.now, DefaultMaxAge)
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("Verify() = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

// TestVerifyRejectsEachChangedField changes one field at a time to another
// valid value; every change must break the signature.
func TestVerifyRejectsEachChangedField(t *testing.T) {
	edits := map[string]func(a *Advert){
		"Version":                func(a *Advert) { a.Version = 2 },
		"Hostname":               func(a *Advert) { a.Hostname = "evil.tail1234.ts.net" },
		"SSHUser":                func(a *Advert) { a.SSHUser = "root" },
		"SSHPort":                func(a *Advert) { a.SSHPort = 2222 },
		"Protocol":               func(a *Advert) { a.Protocol = ProtocolSSH },
		"HostKey":                func(a *Advert) { a.HostKey = testSigningKey(t, 9).TrustKey().String()[:80] },
		"Systems":                func(a *Advert) { a.Systems = []string{"i686-linux", "x86_64-linux"} },
		"SupportedFeatures":      func(a *Advert) { a.SupportedFeatures = a.SupportedFeatures[1:] },
		"MandatoryFeatures":      func(a *Advert) { a.MandatoryFeatures = nil },
		"MaxJobs":                func(a *Advert) { a.MaxJobs = 1000 },
		"SpeedFactor":            func(a *Advert) { a.SpeedFactor = 100 },
		"Capacity.Cores":         func(a *Advert) { a.Capacity.Cores = 1 },
		"Capacity.Load1":         func(a *Advert) { a.Capacity.Load1 = 0 },
		"Capacity.MemTotalMiB":   func(a *Advert) { a.Capacity.MemTotalMiB++ },
		"Capacity.MemAvailMiB":   func(a *Advert) { a.Capacity.MemAvailMiB++ },
		"Capacity.StoreFreeMiB":  func(a *Advert) { a.Capacity.StoreFreeMiB++ },
		"Capacity.RunningBuilds": func(a *Advert) { a.Capacity.RunningBuilds = 0 },
		"Draining":               func(a *Advert) { a.Draining = true },
		"Enroll":                 func(a *Advert) { a.Enroll = false },
		"NixVersion":             func(a *Advert) { a.NixVersion = "2.8.0" },
		"AgentVersion":           func(a *Advert) { a.AgentVersion = "v9" },
		"IssuedAt":               func(a *Advert) { a.IssuedAt = a.IssuedAt.Add(-time.Minute) },
	}
	for _, name := range signedFields(reflect.TypeOf(Advert{}), "") {
		t.Run(name, func(t *testing.T) {
			edit, ok := edits[name]
			if !ok {
				t.Fatalf("no edit for field %s: add one here (and check canonical covers it)", name)
			}
			a, trusted := signedAdvert(t)
			edit(a)
			if err := a.Validate(); err != nil {
				t.Fatalf("the edit must keep the advert valid: %v", err)
			}
			if err := Verify(a, trusted, signNow, DefaultMaxAge); !errors.Is(err, ErrBadSignature) {
				t.Errorf("Verify after changing %s = %v, want ErrBadSignature", name, err)
			}
		})
	}
}

// signedFields lists the leaf fields of Advert that the signature covers
// (all but Signature), e.g. "Hostname", "Capacity.Load1".
func signedFields(typ reflect.Type, prefix string) []string {
	var out []string
	for i := range typ.NumField() {
		f := typ.Field(i)
		if f.Name == "Signature" {
			continue
		}
		if f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeOf(time.Time{}) {
			out = append(out, signedFields(f.Type, prefix+f.Name+".")...)
			continue
		}
		out = append(out, prefix+f.Name)
	}
	return out
}

// TestCanonicalCoversEveryField changes each field of Advert by reflection,
// valid or not, and checks that the signed bytes change: a field added to
// Advert but forgotten in canonical fails here.
func TestCanonicalCoversEveryField(t *testing.T) {
	base := canonical(testAdvert(t))
	for _, name := range signedFields(reflect.TypeOf(Advert{}), "") {
		t.Run(name, func(t *testing.T) {
			a := testAdvert(t)
			v := reflect.ValueOf(a).Elem().FieldByIndex(fieldIndex(t, name))
			switch v.Kind() {
			case reflect.String:
				v.SetString(v.String() + "x")
			case reflect.Int, reflect.Int64:
				v.SetInt(v.Int() + 1)
			case reflect.Float64:
				v.SetFloat(v.Float() + 1)
			case reflect.Bool:
				v.SetBool(!v.Bool())
			case reflect.Slice:
				v.Set(reflect.Append(v, reflect.ValueOf("extra")))
			case reflect.Struct: // time.Time
				v.Set(reflect.ValueOf(a.IssuedAt.Add(time.Second)))
			default:
				t.Fatalf("field %s of kind %s: teach this test to change it", name, v.Kind())
			}
			if string(canonical(a)) == string(base) {
				t.Errorf("changing %s does not change the signed bytes", name)
			}
		})
	}
}

func fieldIndex(t *testing.T, name string) []int {
	typ := reflect.TypeOf(Advert{})
	var idx []int
	for part := range strings.SplitSeq(name, ".") {
		f, ok := typ.FieldByName(part)
		if !ok {
			t.Fatalf("no field %s", name)
		}
		idx = append(idx, f.Index...)
		typ = f.Type
	}
	return idx
}

func TestSignRefusesInvalidAdvert(t *testing.T) {
	a := testAdvert(t)
	a.Hostname = "bad host"
	if err := Sign(a, testSigningKey(t, 1), signNow); err == nil || a.Signature != nil {
		t.Errorf("Sign of an invalid advert: err = %v, signature = %v", err, a.Signature)
	}
}

// FuzzVerify: a tampered, truncated or extended signed advert (JSON, or
// TXT record data when txt is set) never verifies unless it decodes to
// exactly the advert that was signed.
func FuzzVerify(f *testing.F) {
	signed, trusted := signedAdvert(f)
	j, err := EncodeJSON(signed)
	if err != nil {
		f.Fatal(err)
	}
	txt, err := EncodeTXT(signed)
	if err != nil {
		f.Fatal(err)
	}
	rdata := txtRData(txt)
	f.Add(j, false)
	f.Add(rdata, true)
	f.Add(j[:len(j)/2], false)
	f.Add(rdata[:len(rdata)-10], true)
	f.Add(bytes.Replace(j, []byte(`"max_jobs":16`), []byte(`"max_jobs":17`), 1), false)
	f.Add(bytes.Replace(j, []byte(`"version":1,`), []byte(`"version":1,"extra":"`+strings.Repeat("x", 1000)+`",`), 1), false)
	f.Fuzz(func(t *testing.T, data []byte, isTXT bool) {
		var a *Advert
		var err error
		if isTXT {
			txt, ok := parseRData(data)
			if !ok {
				return
			}
			a, err = DecodeTXT(txt)
		} else {
			a, err = DecodeJSON(data)
		}
		if err != nil {
			return
		}
		if Verify(a, trusted, signNow, DefaultMaxAge) != nil {
			return
		}
		if !reflect.DeepEqual(a, signed) {
			t.Fatalf("a different advert verifies:\n%+v\nsigned:\n%+v", a, signed)
		}
	})
}
