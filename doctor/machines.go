package doctor

import (
	"errors"
	"fmt"
	"strings"

	"github.com/nixrb-discover/nixrb-discover/internal/localnix"
	"github.com/nixrb-discover/nixrb-discover/render"
)

// checkMachinesFile parses the machines file as the local Nix reads it and
// validates each line. It returns the machines to check one by one: read
// leniently (ports allowed), so that a builder on a line the local Nix
// rejects is still diagnosed.
func checkMachinesFile(r *Report, opts Options, v render.NixVersion) []render.Entry {
	name := fmt.Sprintf("machines file %s parses for %s", opts.MachinesPath, v)
	parse := render.ParseOptions{NixVersion: v, LocalSystem: localnix.System()}
	entries, err := render.ParseFile(opts.MachinesPath, parse)
	var problems render.ParseErrors
	if err != nil && !errors.As(err, &problems) {
		r.fail(name, err.Error(), fmt.Sprintf("run the nixrb-discover client (it writes %s), or pass --machines FILE", opts.MachinesPath))
		return nil
	}
	for _, en := range entries {
		if err := en.Machine.Validate(); err != nil {
			problems = append(problems, &render.LineError{Path: en.Path, Line: en.Line, Err: err})
		}
	}
	if len(problems) > 0 {
		lines := make([]string, len(problems))
		for i, p := range problems {
			lines[i] = p.Error()
		}
		r.fail(name, strings.Join(lines, "\n"),
			"correct or remove these lines: Nix stops at the first bad line and then uses no remote builder at all")
	} else {
		r.pass(name, fmt.Sprintf("%d machines", len(entries)))
	}
	lenient := entries
	if v.PortStyle() == render.PortAlias {
		// Read host:port (CppNix 2.31's rule) to find the builder anyway.
		parse.NixVersion = render.CppNixVersion(2, 31, 0)
		lenient, _ = render.ParseFile(opts.MachinesPath, parse)
	}
	ssh := 0
	for _, en := range lenient {
		if en.Machine.URI.IsSSH() {
			ssh++
		}
	}
	if ssh == 0 && len(problems) == 0 {
		r.fail(fmt.Sprintf("machines file %s lists a remote builder", opts.MachinesPath), "no SSH machine in it: Nix builds everything locally",
			"check that the client runs and sees builders (nixrb-discover list says why each one is left out)")
	}
	return lenient
}
