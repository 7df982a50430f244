package mdns

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"strings"
	"testing"
)

// hashedName is a HashKnownHosts entry for name with a fixed salt.
func hashedName(name string) string {
	salt := []byte("0123456789abcdefghij")
	m := hmac.New(sha1.New, salt)
	m.Write([]byte(name))
	return "|1|" + base64.StdEncoding.EncodeToString(salt) + "|" + base64.StdEncoding.EncodeToString(m.Sum(nil))
}

func TestParseKnownHosts(t *testing.T) {
	k1, k2, k3 := mdnsHostKey(t), mdnsHostKey(t), mdnsHostKey(t)
	file := strings.Join([]string{
		"# pins for the lab",
		"",
		"b1,b1.local " + k1 + " root@b1",
		"[b2]:2222 " + k2,
		hashedName("b3") + " " + k3,
		"lab-*,!lab-evil " + k1,
		"@revoked * " + k2,
		"@cert-authority *.example.org " + k3,
	}, "\n")
	var p Pins
	if err := p.ParseKnownHosts(strings.NewReader(file)); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, key string
		want      PinMatch
	}{
		{"b1", k1, PinOK},       // plain name, comment ignored
		{"B1.LOCAL", k1, PinOK}, // names are case-insensitive
		{"b1", k3, PinMismatch}, // pinned to another key
		{"b2", k2, PinMismatch}, // pinned, but this key is @revoked
		{"b3", k3, PinOK},       // hashed entry
		{"b3", k1, PinMismatch}, // hashed entry, other key
		{"lab-7", k1, PinOK},    // wildcard
		{"lab-evil", k1, PinNone},
		{"ca.example.org", k3, PinNone}, // a CA line pins nothing
		{"nobody", k1, PinNone},
		{"b1", "not a key", PinMismatch},
	} {
		if got := p.Check(c.key, c.name); got != c.want {
			t.Errorf("Check(%s) = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestParseKnownHostsErrors(t *testing.T) {
	k := mdnsHostKey(t)
	typ, b64, _ := strings.Cut(k, " ")
	for name, in := range map[string]string{
		"bad-base64":    "b1 " + typ + " !!!!",
		"type-mismatch": "b1 ssh-rsa " + b64,
		"too-few":       "b1 " + typ,
		"bad-marker":    "@trusted b1 " + k,
		"bad-hash":      "|1|xx b1 " + k,
		"long-line":     "b1 " + typ + " " + strings.Repeat("A", maxKnownHostsLine),
	} {
		t.Run(name, func(t *testing.T) {
			var p Pins
			err := p.ParseKnownHosts(strings.NewReader("# ok\n" + in + "\n"))
			if err == nil || !strings.HasPrefix(err.Error(), "line 2: ") {
				t.Fatalf("err = %v, want a line 2 error", err)
			}
		})
	}
	t.Run("too-big", func(t *testing.T) {
		var p Pins
		big := strings.Repeat("# filler line of a known_hosts file\n", MaxPinFileBytes/36+10)
		if err := p.ParseKnownHosts(strings.NewReader(big)); err == nil {
			t.Fatal("accepted more than MaxPinFileBytes")
		}
	})
}

func TestPinsAddFlag(t *testing.T) {
	k := mdnsHostKey(t)
	var p Pins
	if err := p.AddFlag("b1=" + k + " comment"); err != nil {
		t.Fatal(err)
	}
	if p.Check(k, "b1") != PinOK || p.Check(k, "b2") != PinNone {
		t.Error("flag pin not applied to b1 only")
	}
	for _, bad := range []string{"b1", "=" + k, "b*=" + k, "b1=ssh-ed25519", "b1=ssh-ed25519 AAAA"} {
		if err := p.AddFlag(bad); err == nil {
			t.Errorf("AddFlag(%q) accepted", bad)
		}
	}
}

func FuzzParseKnownHosts(f *testing.F) {
	f.Add("b1,b1.local ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKuQNWRb4HT2KmI1rmjbWoNeP/sfmom8RX9eHRIRYTVg c\n", "b1")
	f.Add("@revoked * ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKuQNWRb4HT2KmI1rmjbWoNeP/sfmom8RX9eHRIRYTVg\n", "x")
	f.Add(hashedName("b3")+" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKuQNWRb4HT2KmI1rmjbWoNeP/sfmom8RX9eHRIRYTVg\n", "b3")
	f.Add("lab-*?,!lab-e*,[b2]:22 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKuQNWRb4HT2KmI1rmjbWoNeP/sfmom8RX9eHRIRYTVg\n", "lab-xy")
	f.Fuzz(func(t *testing.T, in, name string) {
		var p Pins
		err := p.ParseKnownHosts(strings.NewReader(in))
		if p.Len() > MaxPins {
			t.Fatalf("%d pins, more than MaxPins", p.Len())
		}
		if err != nil {
			return
		}
		p.Check("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKuQNWRb4HT2KmI1rmjbWoNeP/sfmom8RX9eHRIRYTVg", name, name+".local")
		p.Check(name, name)
	})
}
