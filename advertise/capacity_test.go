package advertise

import (
	"strings"
	"testing"
	"time"

	"github.com/nixrb-discover/nixrb-discover/wire"
)

func TestMeasureCapacityFromFakeProc(t *testing.T) {
	opts := FactsOptions{
		ProcRoot:   "testdata/proc",
		StoreDir:   t.TempDir(),
		GroupFile:  "testdata/group",
		PasswdFile: "testdata/passwd",
	}
	tests := []struct {
		name   string
		users  BuildUsers
		builds int
	}{
		// nixbld1 (2 processes) and nixbld2 are busy; nixbld3 is idle.
		{"build-users-group", BuildUsers{Group: "nixbld"}, 2},
		// Only the auto-allocated slot 0 (2 processes) is busy.
		{"auto-allocated-uids", BuildUsers{AutoAllocate: true, StartID: 872415232, IDCount: 128 << 16}, 1},
		{"both", BuildUsers{Group: "nixbld", AutoAllocate: true, StartID: 872415232, IDCount: 128 << 16}, 3},
		// Builds run as the daemon's own user: they cannot be told apart.
		{"no-build-users", BuildUsers{}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := measureCapacity(opts, tt.users)
			if err != nil {
				t.Fatal(err)
			}
			if c.Cores != 4 || c.Load1 != 2.73 || c.MemTotalMiB != 15932 || c.MemAvailMiB != 11568 {
				t.Errorf("capacity = %+v, want 4 cores, load 2.73, 15932 MiB total, 11568 MiB available", c)
			}
			if c.StoreFreeMiB <= 0 {
				t.Errorf("store free = %d MiB, want the temp dir's free space", c.StoreFreeMiB)
			}
			if c.RunningBuilds != tt.builds {
				t.Errorf("running builds = %d, want %d", c.RunningBuilds, tt.builds)
			}
		})
	}
	t.Run("unknown-build-group-is-reported", func(t *testing.T) {
		c, err := measureCapacity(opts, BuildUsers{Group: "nosuchgroup"})
		if err == nil || !strings.Contains(err.Error(), "nosuchgroup") {
			t.Errorf("err = %v, want one naming the group", err)
		}
		if c.Cores != 4 {
			t.Errorf("the other fields must still be measured: %+v", c)
		}
	})
	t.Run("missing-store-is-partial-not-fatal", func(t *testing.T) {
		o := opts
		o.StoreDir = "/nonexistent/nix/store"
		c, err := measureCapacity(o, BuildUsers{})
		if err == nil || !strings.Contains(err.Error(), "store free space") {
			t.Errorf("err = %v, want a store free space error", err)
		}
		if c.Cores != 4 || c.StoreFreeMiB != 0 {
			t.Errorf("capacity = %+v, want cores measured and store space unknown (0)", c)
		}
	})
	t.Run("real-proc", func(t *testing.T) {
		c, err := measureCapacity(FactsOptions{StoreDir: t.TempDir()}, BuildUsers{})
		if err != nil {
			t.Fatal(err)
		}
		if c.Cores < 1 || c.MemTotalMiB < 1 || c.MemAvailMiB > c.MemTotalMiB {
			t.Errorf("implausible capacity of this machine: %+v", c)
		}
	})
}

func TestQuantise(t *testing.T) {
	tests := []struct {
		name string
		in   wire.Capacity
		want wire.Capacity
	}{
		{"load-rounds-to-half", wire.Capacity{Load1: 2.73}, wire.Capacity{Load1: 2.5}},
		{"load-rounds-up", wire.Capacity{Load1: 2.76}, wire.Capacity{Load1: 3}},
		{"memory-and-store-down-to-gib", wire.Capacity{MemTotalMiB: 15932, MemAvailMiB: 11567, StoreFreeMiB: 2047},
			wire.Capacity{MemTotalMiB: 15932, MemAvailMiB: 11264, StoreFreeMiB: 1024}},
		{"counts-kept", wire.Capacity{Cores: 7, RunningBuilds: 3}, wire.Capacity{Cores: 7, RunningBuilds: 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := quantise(tt.in); got != tt.want {
				t.Errorf("quantise(%+v) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestMeaningfullyDifferent(t *testing.T) {
	pub := wire.Capacity{Cores: 4, Load1: 2, MemTotalMiB: 16384, MemAvailMiB: 8192, StoreFreeMiB: 100 * 1024, RunningBuilds: 1}
	tests := []struct {
		name string
		edit func(c *wire.Capacity)
		want bool
	}{
		{"same", func(c *wire.Capacity) {}, false},
		// A load wobbling around the 2.25 rounding boundary stays put.
		{"load-wobbles-across-step-boundary", func(c *wire.Capacity) { c.Load1 = 2.3 }, false},
		{"load-rises-by-a-core", func(c *wire.Capacity) { c.Load1 = 3 }, true},
		{"load-drops", func(c *wire.Capacity) { c.Load1 = 1.2 }, true},
		{"build-starts", func(c *wire.Capacity) { c.RunningBuilds = 2 }, true},
		{"cpu-hotplugged", func(c *wire.Capacity) { c.Cores = 8 }, true},
		{"memory-noise", func(c *wire.Capacity) { c.MemAvailMiB += 700 }, false},
		{"memory-drops-a-tenth", func(c *wire.Capacity) { c.MemAvailMiB -= 1700 }, true},
		{"store-noise-under-5-percent", func(c *wire.Capacity) { c.StoreFreeMiB -= 4 * 1024 }, false},
		{"store-fills-5-percent", func(c *wire.Capacity) { c.StoreFreeMiB -= 5 * 1024 }, true},
		{"nearly-full-store-still-reports-a-gib", func(c *wire.Capacity) { c.StoreFreeMiB = 1024 }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := pub
			tt.edit(&c)
			if got := meaningfullyDifferent(c, pub); got != tt.want {
				t.Errorf("%+v vs published %+v: meaningfullyDifferent = %v, want %v", c, pub, got, tt.want)
			}
		})
	}
	t.Run("big-machine-load-threshold-scales-with-cores", func(t *testing.T) {
		big := wire.Capacity{Cores: 64, Load1: 40}
		if c := (wire.Capacity{Cores: 64, Load1: 45}); meaningfullyDifferent(c, big) {
			t.Error("a 5.0 load change on 64 cores must not churn the advert")
		}
		if c := (wire.Capacity{Cores: 64, Load1: 47}); !meaningfullyDifferent(c, big) {
			t.Error("a 7.0 load change on 64 cores must be published")
		}
	})
}

// TestBuildsIntervalWhileBuildsRun: capacity is measured every second
// while builds run (clients hold the slots other clients' builds fill),
// and at the configured interval otherwise.
func TestBuildsIntervalWhileBuildsRun(t *testing.T) {
	for _, tc := range []struct {
		interval time.Duration
		running  int
		want     time.Duration
	}{
		{10 * time.Second, 0, 10 * time.Second},
		{10 * time.Second, 1, time.Second},
		{200 * time.Millisecond, 3, 200 * time.Millisecond},
	} {
		if got := buildsInterval(tc.interval, tc.running); got != tc.want {
			t.Errorf("buildsInterval(%v, %d) = %v, want %v", tc.interval, tc.running, got, tc.want)
		}
	}
}
