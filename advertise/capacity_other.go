//go:build !unix

package advertise

import "errors"

// freeMiB is not implemented off Unix: store space stays unknown (0).
func freeMiB(dir string) (int64, error) {
	return 0, errors.New("not supported on this system")
}
