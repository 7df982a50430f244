package main

import (
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/peterbourgon/ff/v3"
)

// configOptions lets every daemon flag come from a JSON config file
// (--config FILE; keys are the flag names, lists are JSON arrays) or from
// NIXRB_DISCOVER_* environment variables. Flags given on the command line
// win. A bad config file is an error naming its file, line and key.
func configOptions(fs *flag.FlagSet) []ff.Option {
	return []ff.Option{
		ff.WithConfigFileFlag("config"),
		ff.WithConfigFileParser(jsonConfig(fs)),
		ff.WithEnvVarPrefix("NIXRB_DISCOVER"),
	}
}

// repeated is a flag that may be given several times (--tag a --tag b).
type repeated []string

func (r *repeated) String() string { return strings.Join(*r, ",") }

func (r *repeated) Set(v string) error {
	if strings.TrimSpace(v) == "" {
		return fmt.Errorf("empty value")
	}
	*r = append(*r, v)
	return nil
}

// commaList is a comma-separated list flag; unset stays nil so that a
// detected value is used, and "" sets the empty list.
type commaList struct {
	items []string
	set   bool
}

func (c *commaList) String() string { return strings.Join(c.items, ",") }

func (c *commaList) Set(v string) error {
	c.set = true
	c.items = []string{}
	for _, it := range strings.Split(v, ",") {
		if it = strings.TrimSpace(it); it != "" {
			c.items = append(c.items, it)
		}
	}
	return nil
}

// value returns nil when the flag was not given.
func (c *commaList) value() []string {
	if !c.set {
		return nil
	}
	return c.items
}

// waitRange is --wait MIN:MAX (a single value means MAX = 4×MIN, as
// consul-template's -wait).
type waitRange struct{ min, max time.Duration }

func (w *waitRange) String() string {
	if w.min == 0 && w.max == 0 {
		return ""
	}
	return w.min.String() + ":" + w.max.String()
}

func (w *waitRange) Set(v string) error {
	lo, hi, found := strings.Cut(v, ":")
	a, err := time.ParseDuration(lo)
	if err != nil || a < 0 {
		return fmt.Errorf("want MIN:MAX durations such as 20ms:250ms")
	}
	b := 4 * a
	if found {
		if b, err = time.ParseDuration(hi); err != nil || b < a {
			return fmt.Errorf("want MIN:MAX durations with MAX >= MIN, such as 20ms:250ms")
		}
	}
	w.min, w.max = a, b
	return nil
}

// parsePositiveDuration reads a duration flag that must be > 0.
func parsePositiveDuration(name, v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, usageError("%s %q: want a positive duration such as 10s", name, v)
	}
	return d, nil
}
