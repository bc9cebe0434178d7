//go:build !unix

package loadtest

import (
	"errors"
	"os/exec"
)

// sendSignal: chaos needs POSIX signals.
func sendSignal(pid int, kind string) error {
	return errors.New("loadtest: chaos actions need a unix system")
}

// ownProcessGroup: without process groups, cancelling a command kills
// the shell only.
func ownProcessGroup(*exec.Cmd) {}
