//go:build unix

package loadtest

import (
	"fmt"
	"os/exec"
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

// ownProcessGroup starts cmd in a process group of its own, and makes
// its cancellation kill the whole group (a shell's children too).
func ownProcessGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
}
