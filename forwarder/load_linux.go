//go:build linux

package forwarder

import (
	"os"
	"syscall"
)

// processCPUSeconds is the user and system CPU time this process has used.
func processCPUSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// udpQueueDrops is the kernel's count of UDP datagrams dropped because a
// socket's receive buffer was full: RcvbufErrors of /proc/net/snmp (IPv4)
// plus Udp6RcvbufErrors of /proc/net/snmp6 (IPv6). The counters cover the
// whole network namespace, not only this process's sockets. ok is false
// (and the count 0) if neither can be read.
func udpQueueDrops() (uint64, bool) {
	var n uint64
	var ok bool
	if b, err := os.ReadFile("/proc/net/snmp"); err == nil {
		if v, vok := parseSNMPColumn(b, "Udp", "RcvbufErrors"); vok {
			n, ok = n+v, true
		}
	}
	if b, err := os.ReadFile("/proc/net/snmp6"); err == nil {
		if v, vok := parseSNMP6Counter(b, "Udp6RcvbufErrors"); vok {
			n, ok = n+v, true
		}
	}
	return n, ok
}
