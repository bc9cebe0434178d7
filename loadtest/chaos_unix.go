//go:build unix

package loadtest

import (
	"fmt"
	"syscall"
)

// sendSignal sends the chaos kind's signal to pid (> 1, checked by
// Validate).
func sendSignal(pid int, kind string) error {
	if pid <= 1 {
		return fmt.Errorf("loadtest: refusing to signal pid %d", pid)
	}
	sig := map[string]syscall.Signal{ChaosKill: syscall.SIGKILL, ChaosTerm: syscall.SIGTERM,
		ChaosStop: syscall.SIGSTOP, ChaosCont: syscall.SIGCONT}[kind]
	if sig == 0 {
		return fmt.Errorf("loadtest: unknown chaos kind %q", kind)
	}
	if err := syscall.Kill(pid, sig); err != nil {
		return fmt.Errorf("%s pid %d: %w", sig, pid, err)
	}
	return nil
}
