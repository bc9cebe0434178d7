//go:build !linux

package linkem

import (
	"net"
	"net/netip"
	"time"
)

// arrivalReader reads datagrams with the time they were read: only Linux
// has the kernel receive timestamps of arrival_linux.go.
type arrivalReader struct {
	c *net.UDPConn
}

func newArrivalReader(c *net.UDPConn) *arrivalReader { return &arrivalReader{c: c} }

// read reads one datagram into b and returns when it arrived.
func (r *arrivalReader) read(b []byte) (int, netip.AddrPort, time.Time, error) {
	n, src, err := r.c.ReadFromUDPAddrPort(b)
	return n, src, time.Now(), err
}
