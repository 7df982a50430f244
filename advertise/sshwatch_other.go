//go:build !linux

package advertise

import "errors"

// sshWatchState is empty off Linux: there is nothing to remember.
type sshWatchState struct{}

// Check is implemented on Linux only (it reads /proc); elsewhere it
// reports SSHUnknown, which counts as healthy.
func (w *SSHWatch) Check() SSHState {
	return SSHState{Status: SSHUnknown, Port: w.port(), Err: errors.New("watching sshd is only implemented on linux")}
}
