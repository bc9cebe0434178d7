//go:build linux

package forwarder

import (
	"context"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// reusePortSupported: on Linux every reader gets its own socket on the same
// port, and the kernel spreads flows across them by their address hash, so
// one flow (one stream) always lands on the same reader and stays in order.
const reusePortSupported = true

func listenUDP(network, addr string, reuse bool) (*net.UDPConn, error) {
	lc := net.ListenConfig{}
	if reuse {
		lc.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			}); err != nil {
				return err
			}
			return serr
		}
	}
	pc, err := lc.ListenPacket(context.Background(), network, addr)
	if err != nil {
		return nil, err
	}
	return pc.(*net.UDPConn), nil
}

// sizeSocketBuffers asks for want bytes of receive and send buffer on c and
// returns what the kernel granted, read back (sockbuf.go).
func sizeSocketBuffers(c *net.UDPConn, want int) (rcv, snd int) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, -1
	}
	if rc.Control(func(fd uintptr) {
		rcv = sizeSocketBuffer(int(fd), unix.SO_RCVBUF, unix.SO_RCVBUFFORCE, want)
		snd = sizeSocketBuffer(int(fd), unix.SO_SNDBUF, unix.SO_SNDBUFFORCE, want)
	}) != nil {
		return -1, -1
	}
	return rcv, snd
}

// sizeSocketBuffer sets one buffer, and forces it past the system's cap
// when short and permitted. Linux reports twice what it grants (the other
// half is its bookkeeping): the result is in the units asked for.
func sizeSocketBuffer(fd, opt, force, want int) int {
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, opt, want)
	got, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, opt)
	if err != nil {
		return -1
	}
	if got/2 < want && unix.SetsockoptInt(fd, unix.SOL_SOCKET, force, want) == nil {
		if g, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, opt); err == nil {
			got = g
		}
	}
	return got / 2
}

// pauseNS sleeps ns in a plain nanosleep (pace.go): the thread sleeps on a
// kernel high-resolution timer, and the runtime treats it as a system call
// (its P goes to other goroutines if the sleep lasts).
func pauseNS(ns int64) {
	ts := unix.NsecToTimespec(ns)
	_ = unix.Nanosleep(&ts, nil)
}
