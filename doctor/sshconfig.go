package doctor

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// alias is one literal Host block of our ssh_config file.
type alias struct {
	HostName     string
	Port         int
	HostKeyAlias string
}

// readAliases reads the literal (pattern-free) Host blocks of an
// ssh_config file. ssh keeps the first value of each keyword.
func readAliases(path string) (map[string]*alias, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]*alias{}
	var cur []*alias
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, args := sshLine(sc.Text())
		switch key {
		case "":
			continue
		case "host":
			cur = nil
			for _, h := range args {
				if strings.ContainsAny(h, "*?!") {
					continue
				}
				a := out[h]
				if a == nil {
					a = &alias{}
					out[h] = a
				}
				cur = append(cur, a)
			}
		case "match":
			cur = nil
		case "hostname", "port", "hostkeyalias":
			if len(args) == 0 {
				continue
			}
			for _, a := range cur {
				switch {
				case key == "hostname" && a.HostName == "":
					a.HostName = args[0]
				case key == "port" && a.Port == 0:
					a.Port, _ = strconv.Atoi(args[0])
				case key == "hostkeyalias" && a.HostKeyAlias == "":
					a.HostKeyAlias = args[0]
				}
			}
		}
	}
	return out, sc.Err()
}

// sshLine splits an ssh_config line into its lower-case keyword and
// arguments ("Key value", "Key=value"); "" for blanks and comments.
func sshLine(line string) (string, []string) {
	line = strings.TrimSpace(line)
	if line == "" || line[0] == '#' {
		return "", nil
	}
	key, rest := line, ""
	if i := strings.IndexAny(line, " \t="); i >= 0 {
		key, rest = line[:i], strings.TrimLeft(line[i:], " \t")
		rest = strings.TrimPrefix(rest, "=")
	}
	var args []string
	for _, a := range strings.Fields(rest) {
		args = append(args, strings.Trim(a, `"`))
	}
	return strings.ToLower(key), args
}

// includes reports whether ssh reading config (a root ssh_config) reads
// target through Include directives, following nested includes. Relative
// Include paths are taken from the directory of the top file, as ssh does
// for ~/.ssh/config and /etc/ssh/ssh_config.
func includes(config, target string) bool {
	want := cleanAbs(target)
	base := filepath.Dir(config)
	seen := map[string]bool{}
	var walk func(path string, depth int) bool
	walk = func(path string, depth int) bool {
		if depth > 16 || seen[path] {
			return false
		}
		seen[path] = true
		f, err := os.Open(path)
		if err != nil {
			return false
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			key, args := sshLine(sc.Text())
			if key != "include" {
				continue
			}
			for _, pat := range args {
				if strings.HasPrefix(pat, "~/") {
					pat = filepath.Join("/root", pat[2:])
				}
				if !filepath.IsAbs(pat) {
					pat = filepath.Join(base, pat)
				}
				matches, _ := filepath.Glob(pat)
				for _, m := range matches {
					if cleanAbs(m) == want || walk(m, depth+1) {
						return true
					}
				}
			}
		}
		return false
	}
	return walk(config, 0)
}
