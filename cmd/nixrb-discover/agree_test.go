package main

import (
	"context"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/discover"
	"github.com/nixrb-discover/nixrb-discover/doctor"
	"github.com/nixrb-discover/nixrb-discover/launchd"
)

// TestHelpAgreesWithREADME: what the README tells a new user, --help and
// doctor say the same (check schedule, machines path, install line).
func TestHelpAgreesWithREADME(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := strings.Join(strings.Fields(string(b)), " ")
	flags := func(c interface{ register(*flag.FlagSet) }) *flag.FlagSet {
		fs := flag.NewFlagSet("x", flag.ContinueOnError)
		c.register(fs)
		return fs
	}
	client := flags(&clientFlags{})

	if discover.DefaultProbeEvery != 30*time.Second || discover.DefaultFullEvery != 60*time.Second ||
		!strings.Contains(readme, "every 30 s") || !strings.Contains(readme, "every 60 s") {
		t.Errorf("README's check schedule (probe every 30 s, full every 60 s) is not the code's: probe %v, full %v",
			discover.DefaultProbeEvery, discover.DefaultFullEvery)
	}
	if u := client.Lookup("interval").Usage; !strings.Contains(u, discover.DefaultProbeEvery.String()) {
		t.Errorf("--interval help %q does not say the probe runs every %v", u, discover.DefaultProbeEvery)
	}
	if d := client.Lookup("full-check-every").DefValue; d != discover.DefaultFullEvery.String() {
		t.Errorf("--full-check-every default %s, README says 60 s", d)
	}
	const ours = "/var/lib/nixrb-discover/machines"
	if u := client.Lookup("machines").Usage; !strings.Contains(u, "builders = @"+ours) || !strings.Contains(readme, "builders = @"+ours) {
		t.Errorf("--machines help and README disagree on the advice: %q", u)
	}
	if !strings.Contains(readme, "--adopt") || !strings.Contains(client.Lookup("machines").Usage, "--adopt") {
		t.Error("README or --machines help does not mention --adopt for a file we did not write")
	}

	install := `systemd-units --dir /etc/systemd/system --bin "$(command -v nixrb-discover)"`
	units := newSystemdUnitsCmd(&env{stdout: io.Discard, stderr: io.Discard})
	if !strings.Contains(readme, install) || !strings.Contains(units.LongHelp, install) {
		t.Errorf("README's install line and systemd-units --help should both say %s", install)
	}

	mac := `/usr/local/bin/nixrb-discover launchd-plist --dir /Library/LaunchDaemons`
	plist := newLaunchdPlistCmd(&env{stdout: io.Discard, stderr: io.Discard})
	if !strings.Contains(readme, mac) || !strings.Contains(plist.LongHelp, mac) {
		t.Errorf("README's macOS install line and launchd-plist --help should both say %s", mac)
	}
	if !strings.Contains(readme, "launchctl bootstrap system /Library/LaunchDaemons/"+launchd.ClientPlist) {
		t.Errorf("README does not say how to load %s", launchd.ClientPlist)
	}

	doc := newDoctorCmd(&env{stdout: io.Discard, stderr: io.Discard})
	f := doc.FlagSet.Lookup("ssh-config")
	if f.DefValue != "" || !strings.Contains(f.Usage, "running client's --ssh-config") || !strings.Contains(f.Usage, doctor.DefaultSSHConfigPath) {
		t.Errorf("doctor --ssh-config (default %q, %q) should follow the running client's, else name %s", f.DefValue, f.Usage, doctor.DefaultSSHConfigPath)
	}
}

// TestDoctorLearnsClientFiles: doctor reads the machines file and
// ssh_config the running client writes, from its status socket.
func TestDoctorLearnsClientFiles(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	want := &discover.Status{Version: discover.StatusVersion, MachinesFile: "/srv/m", SSHConfig: "/srv/ssh_config"}
	go discover.ServeStatus(ctx, sock, func(context.Context) (*discover.Status, error) { return want, nil }, nil)
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := runningClient(ctx, sock)
		if st != nil {
			if st.MachinesFile != want.MachinesFile || st.SSHConfig != want.SSHConfig {
				t.Errorf("doctor learns %q, %q; want %q, %q", st.MachinesFile, st.SSHConfig, want.MachinesFile, want.SSHConfig)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no status from the socket")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
