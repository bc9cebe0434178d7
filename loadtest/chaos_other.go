//go:build !unix

package loadtest

import "errors"

// sendSignal: chaos needs POSIX signals.
func sendSignal(pid int, kind string) error {
	return errors.New("loadtest: chaos actions need a unix system")
}
