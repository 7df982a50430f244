//go:build !linux

package nixtest

import "testing"

// RequireTools skips t: the fixtures need Linux namespaces.
func RequireTools(t testing.TB) {
	t.Helper()
	t.Skip("nixtest: needs Linux (network, mount and UTS namespaces)")
}
