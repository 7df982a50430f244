package launchd

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"slices"
	"testing"

	"howett.net/plist"
)

// job is what launchd reads from the plist (launchd.plist(5)); a key of
// the wrong type fails the decode.
type job struct {
	Label                string            `plist:"Label"`
	ProgramArguments     []string          `plist:"ProgramArguments"`
	UserName             string            `plist:"UserName"`
	GroupName            string            `plist:"GroupName"`
	RunAtLoad            bool              `plist:"RunAtLoad"`
	KeepAlive            bool              `plist:"KeepAlive"`
	ThrottleInterval     int               `plist:"ThrottleInterval"`
	ExitTimeOut          int               `plist:"ExitTimeOut"`
	Umask                int               `plist:"Umask"`
	StandardOutPath      string            `plist:"StandardOutPath"`
	StandardErrorPath    string            `plist:"StandardErrorPath"`
	EnvironmentVariables map[string]string `plist:"EnvironmentVariables"`
}

// decode parses b as launchd does: an XML property list whose top level
// is a dictionary; it also checks the XML is well formed throughout
// (encoding/xml refuses "--" inside a comment, as plutil -lint does).
func decode(t *testing.T, b []byte) (job, map[string]any) {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(b))
	for {
		if _, err := d.Token(); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("not well-formed XML: %v", err)
		}
	}
	var raw map[string]any
	format, err := plist.Unmarshal(b, &raw)
	if err != nil {
		t.Fatalf("not a property list: %v", err)
	}
	if format != plist.XMLFormat {
		t.Errorf("format %s, want XML (what launchctl and plutil print and read)", plist.FormatNames[format])
	}
	var j job
	if _, err := plist.Unmarshal(b, &j); err != nil {
		t.Fatalf("plist keys of the wrong type: %v", err)
	}
	return j, raw
}

func TestClientPlistIsADaemonLaunchdKeepsRunning(t *testing.T) {
	b, err := Client(DefaultBinary)
	if err != nil {
		t.Fatal(err)
	}
	j, raw := decode(t, b)
	if j.Label != ClientLabel {
		t.Errorf("Label %q, want %q (launchctl names the job by it)", j.Label, ClientLabel)
	}
	want := []string{DefaultBinary, "client", "--machines", StateDir + "/machines"}
	if !slices.Equal(j.ProgramArguments, want) {
		t.Errorf("ProgramArguments %q, want %q", j.ProgramArguments, want)
	}
	if j.UserName != "root" {
		t.Errorf("UserName %q: the client must run as root (nix-daemon reads its key; it holds Nix's slot locks)", j.UserName)
	}
	if !j.RunAtLoad || !j.KeepAlive {
		t.Errorf("RunAtLoad %v, KeepAlive %v: want both, so it starts at boot and comes back after a crash", j.RunAtLoad, j.KeepAlive)
	}
	if j.ThrottleInterval < 1 || j.ExitTimeOut < 1 {
		t.Errorf("ThrottleInterval %d, ExitTimeOut %d: want the systemd unit's RestartSec=5s, TimeoutStopSec=15s", j.ThrottleInterval, j.ExitTimeOut)
	}
	if j.Umask != 0o022 {
		t.Errorf("Umask %#o, want 022 (the machines file must be readable by nix-daemon's users)", j.Umask)
	}
	if j.StandardOutPath != LogFile || j.StandardErrorPath != LogFile {
		t.Errorf("logs go to %q and %q, want both in %s", j.StandardOutPath, j.StandardErrorPath, LogFile)
	}
	if p := j.EnvironmentVariables["PATH"]; !bytes.Contains([]byte(p), []byte("/nix/var/nix/profiles/default/bin")) {
		t.Errorf("PATH %q lacks the Nix installer's profile: the client runs nix to learn its version", p)
	}
	if j.EnvironmentVariables["HOME"] != "/var/root" {
		t.Errorf("HOME %q: launchd sets none for daemons, and nix wants one (root's is /var/root)", j.EnvironmentVariables["HOME"])
	}
	// Every key is one launchd knows, spelled as it spells it: a typo
	// is silently ignored by launchd.
	known := []string{"Label", "ProgramArguments", "UserName", "GroupName", "RunAtLoad", "KeepAlive",
		"ThrottleInterval", "ExitTimeOut", "Umask", "StandardOutPath", "StandardErrorPath", "EnvironmentVariables"}
	for k := range raw {
		if !slices.Contains(known, k) {
			t.Errorf("key %q is not one this test knows launchd reads", k)
		}
	}
}

func TestClientPlistRunsTheGivenBinary(t *testing.T) {
	b, err := Client("/nix/var/nix/profiles/default/bin/nixrb-discover")
	if err != nil {
		t.Fatal(err)
	}
	j, _ := decode(t, b)
	if j.ProgramArguments[0] != "/nix/var/nix/profiles/default/bin/nixrb-discover" {
		t.Errorf("ProgramArguments[0] %q", j.ProgramArguments[0])
	}
	again, _ := Client(DefaultBinary)
	if bytes.Contains(again, []byte("profiles/default/bin/nixrb-discover<")) {
		t.Error("Client changed the embedded plist for later calls")
	}
}

func TestClientPlistRefusesABinaryItCannotWriteSafely(t *testing.T) {
	for _, bin := range []string{
		"nixrb-discover", "bin/nixrb-discover", "/usr/local/../bin/nixrb-discover",
		"/Applications/My Tools/nixrb-discover", "/opt/a&b/nixrb-discover", "/opt/</string><string>x",
		"/opt/x\n/nixrb-discover",
	} {
		if b, err := Client(bin); err == nil {
			t.Errorf("Client(%q) accepted:\n%s", bin, b)
		}
	}
}
