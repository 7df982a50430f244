package slots

import (
	"strings"
	"testing"
)

// nameCase is one machines-file URI and the store URI each Nix names its
// slot locks after. Every row was observed on a real nix-build (2.8.0 and
// 2.26.3); TestNixNamesSlotLocksLikeLockName re-checks them all against
// both.
type nameCase struct {
	uri    string
	legacy string // Nix 2.8; "" = StoreURI refuses it in both dialects
	// rendered is Nix 2.26's store URI; "" = StoreURI refuses it.
	rendered string
	// nix226 is the lock name stem Nix 2.26 really uses when StoreURI
	// refuses the URI: "" = Nix 2.26 refuses the machines file too.
	nix226 string
}

var nameCases = []nameCase{
	// The URIs the client writes, and bare hosts: the same everywhere.
	{uri: "ssh-ng://root@10.0.0.2", legacy: "ssh-ng://root@10.0.0.2", rendered: "ssh-ng://root@10.0.0.2"},
	{uri: "ssh://nix-ssh@b1.tail1234.ts.net", legacy: "ssh://nix-ssh@b1.tail1234.ts.net", rendered: "ssh://nix-ssh@b1.tail1234.ts.net"},
	{uri: "b1", legacy: "ssh://b1", rendered: "ssh://b1"},                // schemeless: ssh:// prepended
	{uri: "root@b3", legacy: "ssh://root@b3", rendered: "ssh://root@b3"}, // an ssh_config alias is just a host here
	{uri: "b2?compress=true", legacy: "ssh://b2?compress=true", rendered: "ssh://b2?compress=true"},
	{uri: "ssh://Root@B1.Example.COM", legacy: "ssh://Root@B1.Example.COM", rendered: "ssh://Root@B1.Example.COM"}, // case kept
	{uri: "ssh://h:2222", legacy: "ssh://h:2222", rendered: "ssh://h:2222"},
	{uri: "ssh://h/", legacy: "ssh://h/", rendered: "ssh://h/"},
	{uri: "ssh-ng://root@fd00::1", legacy: "ssh-ng://root@fd00::1", rendered: "ssh-ng://root@fd00::1"},
	{uri: "ssh-ng://root@[fd00::2]", legacy: "ssh-ng://root@[fd00::2]", rendered: "ssh-ng://root@[fd00::2]"},
	{uri: "ssh://r%40oot@h", legacy: "ssh://r%40oot@h", rendered: "ssh://r%40oot@h"},                // authority never decoded
	{uri: `ssh://h"x!$&'()*+,=~`, legacy: `ssh://h"x!$&'()*+,=~`, rendered: `ssh://h"x!$&'()*+,=~`}, // sub-delims in the host kept

	// One parameter whose value needs no escape: the same.
	{uri: "ssh-ng://root@h?remote-store=daemon", legacy: "ssh-ng://root@h?remote-store=daemon", rendered: "ssh-ng://root@h?remote-store=daemon"},
	{uri: "ssh://root@h?remote-program=/usr/bin/nix-store", legacy: "ssh://root@h?remote-program=/usr/bin/nix-store", rendered: "ssh://root@h?remote-program=/usr/bin/nix-store"},
	{uri: "ssh://h?ssh-key=/root/k", legacy: "ssh://h?ssh-key=/root/k", rendered: "ssh://h?ssh-key=/root/k"},
	{uri: "ssh://h?x=", legacy: "ssh://h?x=", rendered: "ssh://h?x="},
	{uri: "ssh://h?x=%2B", legacy: "ssh://h?x=%2B", rendered: "ssh://h?x=%2B"},          // decoded to '+', encoded back
	{uri: "ssh://h?x=a%26b", legacy: "ssh://h?x=a%26b", rendered: "ssh://h?x=a%26b"},    // '&' encoded back
	{uri: "ssh://h?x=%C3%A9", legacy: "ssh://h?x=%C3%A9", rendered: "ssh://h?x=%C3%A9"}, // bytes round-trip
	{uri: "ssh://H?x=1", legacy: "ssh://H?x=1", rendered: "ssh://H?x=1"},

	// Where 2.26 normalises: sorted keys, decoded then re-encoded values.
	{uri: "ssh-ng://root@h?remote-store=daemon&compress=true", legacy: "ssh-ng://root@h?remote-store=daemon&compress=true", rendered: "ssh-ng://root@h?compress=true&remote-store=daemon"},
	{uri: "ssh://h?b=1&a=2", legacy: "ssh://h?b=1&a=2", rendered: "ssh://h?a=2&b=1"},
	{uri: "ssh-ng://root@h?remote-program=%2Fusr%2Fbin%2Fx", legacy: "ssh-ng://root@h?remote-program=%2Fusr%2Fbin%2Fx", rendered: "ssh-ng://root@h?remote-program=/usr/bin/x"},
	{uri: "ssh://h?x=%41%2f", legacy: "ssh://h?x=%41%2f", rendered: "ssh://h?x=A/"},                                                 // lower-case hex accepted
	{uri: "ssh-ng://root@h?a=b%20c&a2=x+y", legacy: "ssh-ng://root@h?a=b%20c&a2=x+y", rendered: "ssh-ng://root@h?a=b%20c&a2=x%2By"}, // '+' is not a space
	{uri: "ssh://h?k=a,b=c:d@e?f~g_h.i-j", legacy: "ssh://h?k=a,b=c:d@e?f~g_h.i-j", rendered: "ssh://h?k=a%2Cb%3Dc:d@e?f~g_h.i-j"},
	{uri: "ssh://h?x=a'b!$*()", legacy: "ssh://h?x=a'b!$*()", rendered: "ssh://h?x=a%27b%21%24%2A%28%29"},
	{uri: `ssh://h?"k=1`, legacy: `ssh://h?"k=1`, rendered: "ssh://h?%22k=1"},       // keys are encoded
	{uri: "ssh://h?a%41=1", legacy: "ssh://h?a%41=1", rendered: "ssh://h?a%2541=1"}, // ... but never decoded
	{uri: "ssh://h?=k=1", legacy: "ssh://h?=k=1", rendered: "ssh://h?=k%3D1"},       // empty key
	{uri: "ssh://h?x=1&=2", legacy: "ssh://h?x=1&=2", rendered: "ssh://h?=2&x=1"},
	{uri: "ssh://h?noeq&x=1", legacy: "ssh://h?noeq&x=1", rendered: "ssh://h?x=1"}, // no '=': dropped
	{uri: "ssh://h?x", legacy: "ssh://h?x", rendered: "ssh://h"},
	{uri: "ssh://h?", legacy: "ssh://h?", rendered: "ssh://h"},
	{uri: "ssh://h?x=1&&y=2", legacy: "ssh://h?x=1&&y=2", rendered: "ssh://h?x=1&y=2"},
	{uri: "ssh://h?x=1&x=2", legacy: "ssh://h?x=1&x=2", rendered: "ssh://h?x=1"}, // first value wins
	{uri: "ssh://h/%41", legacy: "ssh://h/%41", rendered: "ssh://h/A"},           // the path is decoded
	{uri: "ssh://h/a%2Fb", legacy: "ssh://h/a%2Fb", rendered: "ssh://h/a/b"},
	{uri: "ssh://h/a%20b", legacy: "ssh://h/a%20b", rendered: "ssh://h/a b"},

	// Nix 2.26 refuses these ("Cannot parse Nix store", "invalid URI
	// parameter"): the whole machines file fails, so StoreURI refuses.
	{uri: "ssh://h?x=%zz", legacy: "ssh://h?x=%zz"},
	{uri: "ssh://h?k=a%b", legacy: "ssh://h?k=a%b"},
	{uri: "ssh://h?%k=1", legacy: "ssh://h?%k=1"},
	{uri: "ssh://h%x", legacy: "ssh://h%x"},
	{uri: "ssh://h\xc3\xa9", legacy: "ssh://h\xc3\xa9"},
	{uri: "ssh://h?y=\xc3\xa9", legacy: "ssh://h?y=\xc3\xa9"},
	{uri: "SSH://h", legacy: "SSH://h"},
	{uri: "ssh://h<x", legacy: "ssh://h<x"},
	{uri: "ssh://h?k=a>b", legacy: "ssh://h?k=a>b"},
	{uri: "ssh://h[x", legacy: "ssh://h[x"},
	{uri: "ssh://h?k=a]b", legacy: "ssh://h?k=a]b"},
	{uri: `ssh://h\x`, legacy: `ssh://h\x`},
	{uri: "ssh://h^x", legacy: "ssh://h^x"},
	{uri: "ssh://h`x", legacy: "ssh://h`x"},
	{uri: "ssh://h{x", legacy: "ssh://h{x"},
	{uri: "ssh://h?k=a|b", legacy: "ssh://h?k=a|b"},
	{uri: "ssh://h?}k=1", legacy: "ssh://h?}k=1"},
	// Nix 2.26 takes a non-numeric port for a path ("ssh:////h:x"):
	// nothing can connect there, so StoreURI refuses it.
	{uri: "ssh://h:x", legacy: "ssh://h:x", nix226: "ssh:____h:x"},

	// Not one machines entry at all, in any Nix.
	{uri: ""},
	{uri: "h;x"},
	{uri: "h#x"},
	{uri: "h\tx"},
}

func TestStoreURI(t *testing.T) {
	for _, c := range nameCases {
		for _, d := range []Dialect{Legacy, Rendered} {
			want := c.legacy
			if d == Rendered {
				want = c.rendered
			}
			got, err := StoreURI(c.uri, d)
			switch {
			case want == "" && err == nil:
				t.Errorf("StoreURI(%q, %v) = %q, want an error", c.uri, d, got)
			case want != "" && err != nil:
				t.Errorf("StoreURI(%q, %v): %v, want %q", c.uri, d, err, want)
			case got != want:
				t.Errorf("StoreURI(%q, %v) = %q, want %q", c.uri, d, got, want)
			}
			if err != nil && !strings.Contains(err.Error(), "store uri") {
				t.Errorf("StoreURI(%q, %v): error %q does not say what it is about", c.uri, d, err)
			}
		}
	}
}

func TestStoreURILocalStores(t *testing.T) {
	// Nix 2.8 keeps store words and paths as written (no ssh://); 2.26
	// renders them as non-remote stores, which a Locker never gates.
	for _, uri := range []string{"auto", "daemon", "local", "local?root=/x", "daemon?x=1", "?x=1", "/var/store"} {
		if got, err := StoreURI(uri, Legacy); err != nil || got != uri {
			t.Errorf("StoreURI(%q, Legacy) = %q, %v; want it unchanged", uri, got, err)
		}
		if got, err := StoreURI(uri, Rendered); err == nil {
			t.Errorf("StoreURI(%q, Rendered) = %q, want an error", uri, got)
		}
	}
	if _, err := StoreURI("ssh://h", Dialect(0)); err == nil {
		t.Error("StoreURI with the zero Dialect: no error")
	}
}

func TestLockName(t *testing.T) {
	for _, c := range []struct {
		store string
		slot  int
		want  string
	}{
		{"ssh-ng://root@100.64.0.2", 0, "ssh-ng:__root@100.64.0.2-0"}, // as in TESTING.md
		{"ssh-ng://root@100.64.0.2", 1, "ssh-ng:__root@100.64.0.2-1"},
		{"ssh://nix-ssh@b1.tail1234.ts.net", 11, "ssh:__nix-ssh@b1.tail1234.ts.net-11"},
		{"ssh://root@h?remote-program=/usr/bin/nix-store", 0, "ssh:__root@h?remote-program=_usr_bin_nix-store-0"},
		{"ssh://h/", 1, "ssh:__h_-1"},
	} {
		if got := LockName(c.store, c.slot); got != c.want {
			t.Errorf("LockName(%q, %d) = %q, want %q", c.store, c.slot, got, c.want)
		}
	}
}

func TestDialectFor(t *testing.T) {
	for _, c := range []struct {
		major, minor int
		want         Dialect
	}{
		{2, 8, Legacy},    // checked: Debian bookworm's nix-bin
		{2, 26, Rendered}, // checked: Debian trixie's nix-bin
		{2, 20, Legacy},
		{2, 21, Rendered},
		{2, 35, Rendered},
		{3, 0, Rendered},
	} {
		if got := DialectFor(c.major, c.minor); got != c.want {
			t.Errorf("DialectFor(%d, %d) = %v, want %v", c.major, c.minor, got, c.want)
		}
	}
}
