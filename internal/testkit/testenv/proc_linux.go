package testenv

import (
	"os"
	"syscall"
)

const termSignal = syscall.SIGTERM

// sysProcAttr makes the kernel SIGKILL the server if the test binary dies
// (for example on a -timeout panic), so no redis-server outlives its test.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// resume continues a SIGSTOPped process so it can act on a pending SIGTERM.
func resume(p *os.Process) { _ = p.Signal(syscall.SIGCONT) }
