package linkem

import (
	"encoding/binary"
	"net"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// arrivalReader reads datagrams with the time the kernel received them
// (SO_TIMESTAMPNS), so that a reader goroutine scheduled late does not
// make the packet look late: a stall of the link's reader then neither
// adds to a packet's delay nor empties the bottleneck queue. If the option
// cannot be set it falls back to the time of the read, and so does the
// kernel for the first datagrams after the first socket on the machine asks
// for timestamps (it switches them on in deferred work).
type arrivalReader struct {
	c   *net.UDPConn
	oob []byte
}

func newArrivalReader(c *net.UDPConn) *arrivalReader {
	r := &arrivalReader{c: c}
	if rc, err := c.SyscallConn(); err == nil {
		var serr error
		err = rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
		})
		if err == nil && serr == nil {
			r.oob = make([]byte, unix.CmsgSpace(16)+unix.CmsgSpace(16)) // room for one spare message
		}
	}
	return r
}

// read reads one datagram into b and returns when it arrived.
func (r *arrivalReader) read(b []byte) (int, netip.AddrPort, time.Time, error) {
	if r.oob == nil {
		n, src, err := r.c.ReadFromUDPAddrPort(b)
		return n, src, time.Now(), err
	}
	n, oobn, _, src, err := r.c.ReadMsgUDPAddrPort(b, r.oob)
	now := time.Now()
	if err != nil {
		return n, src, now, err
	}
	if stamp, ok := kernelStamp(r.oob[:oobn]); ok {
		now = fromStamp(now, stamp)
	}
	return n, src, now, nil
}

// kernelStamp finds the SCM_TIMESTAMPNS message in oob, without
// allocating.
func kernelStamp(oob []byte) (time.Time, bool) {
	for len(oob) > 0 {
		h, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			return time.Time{}, false
		}
		if h.Level == unix.SOL_SOCKET && h.Type == unix.SCM_TIMESTAMPNS {
			switch len(data) { // struct timespec of this platform
			case 16:
				sec, nsec := binary.NativeEndian.Uint64(data), binary.NativeEndian.Uint64(data[8:])
				return time.Unix(int64(sec), int64(nsec)), true
			case 8:
				sec, nsec := binary.NativeEndian.Uint32(data), binary.NativeEndian.Uint32(data[4:])
				return time.Unix(int64(int32(sec)), int64(int32(nsec))), true
			}
		}
		oob = rest
	}
	return time.Time{}, false
}
