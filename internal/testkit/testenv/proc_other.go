//go:build !linux

package testenv

import (
	"os"
	"syscall"
)

const termSignal = syscall.SIGTERM

// sysProcAttr has no parent-death signal outside Linux: a test binary killed
// mid-test may leave its redis-server behind.
func sysProcAttr() *syscall.SysProcAttr { return nil }

// resume is a no-op here; a stopped server is SIGKILLed after the grace period.
func resume(*os.Process) {}
