//go:build linux

package forwarder

import (
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mmsgConn reads and writes batches with recvmmsg/sendmmsg directly.
//
// We call the syscalls ourselves rather than through golang.org/x/net/ipv4's
// ReadBatch: that path allocates a *net.UDPAddr (and its IP) for every
// datagram received, and the per-packet path must allocate nothing. Here the
// headers, buffers and address slots are allocated once per reader, and the
// syscall callbacks are method values built once.
type mmsgConn struct {
	conn *net.UDPConn
	rc   syscall.RawConn

	rhdrs  [readBatch]unix.Mmsghdr
	riov   [readBatch]unix.Iovec
	rnames [readBatch][28]byte
	bufs   [readBatch][bufSize]byte
	srcs   [readBatch]netip.AddrPort

	shdrs  [writeBatch]unix.Mmsghdr
	siov   [writeBatch]unix.Iovec
	queued int

	// Results of the syscall callbacks.
	rn, soff, sfailed int
	rerr              error
	readFn, writeFn   func(fd uintptr) bool
}

func newPacketConn(c *net.UDPConn) (packetConn, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	m := &mmsgConn{conn: c, rc: rc}
	for i := range m.rhdrs {
		m.riov[i].Base = &m.bufs[i][0]
		m.riov[i].SetLen(bufSize)
		m.rhdrs[i].Hdr.Iov = &m.riov[i]
		m.rhdrs[i].Hdr.SetIovlen(1)
		m.rhdrs[i].Hdr.Name = &m.rnames[i][0]
	}
	for i := range m.shdrs {
		m.shdrs[i].Hdr.Iov = &m.siov[i]
		m.shdrs[i].Hdr.SetIovlen(1)
	}
	m.readFn = m.doRead
	m.writeFn = m.doWrite
	return m, nil
}

func (m *mmsgConn) doRead(fd uintptr) bool {
	for i := range m.rhdrs {
		m.rhdrs[i].Hdr.Namelen = uint32(len(m.rnames[i]))
		m.rhdrs[i].Hdr.Flags = 0
	}
	n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&m.rhdrs[0])),
		readBatch, unix.MSG_DONTWAIT, 0, 0)
	for errno == unix.EINTR {
		n, _, errno = unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&m.rhdrs[0])),
			readBatch, unix.MSG_DONTWAIT, 0, 0)
	}
	if errno == unix.EAGAIN || errno == unix.EWOULDBLOCK {
		return false // not ready: let the runtime poller wait
	}
	m.rn, m.rerr = int(n), nil
	if errno != 0 {
		m.rn, m.rerr = 0, errno
	}
	return true
}

// ReadBatch blocks until at least one datagram arrives, then returns how
// many it took.
func (m *mmsgConn) ReadBatch() (int, error) {
	if err := m.rc.Read(m.readFn); err != nil {
		return 0, err
	}
	if m.rerr != nil {
		return 0, m.rerr
	}
	for i := 0; i < m.rn; i++ {
		ap, ok := decodeSockaddr(m.rnames[i][:m.rhdrs[i].Hdr.Namelen])
		if !ok {
			ap = netip.AddrPort{}
		}
		m.srcs[i] = ap
	}
	return m.rn, nil
}

func (m *mmsgConn) Buf(i int) []byte {
	n := int(m.rhdrs[i].Len)
	if n > bufSize {
		n = bufSize
	}
	return m.bufs[i][:n]
}

func (m *mmsgConn) Src(i int) netip.AddrPort { return m.srcs[i] }

func (m *mmsgConn) Truncated(i int) bool { return m.rhdrs[i].Hdr.Flags&unix.MSG_TRUNC != 0 }

func (m *mmsgConn) Queue(b []byte, dst *sockaddr) bool {
	if m.queued == writeBatch {
		return false
	}
	h := &m.shdrs[m.queued]
	m.siov[m.queued].Base = &b[0]
	m.siov[m.queued].SetLen(len(b))
	h.Hdr.Name = &dst.raw[0]
	h.Hdr.Namelen = dst.len
	m.queued++
	return true
}

func (m *mmsgConn) doWrite(fd uintptr) bool {
	for m.soff < m.queued {
		n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&m.shdrs[m.soff])),
			uintptr(m.queued-m.soff), unix.MSG_DONTWAIT, 0, 0)
		switch {
		case errno == unix.EAGAIN || errno == unix.EWOULDBLOCK:
			return false // socket buffer full: wait until writable
		case errno == unix.EINTR:
			continue
		case errno != 0:
			// The first message of the rest failed (unreachable peer, bad
			// address): skip it, keep the others.
			m.sfailed++
			m.soff++
		default:
			m.soff += int(n)
		}
	}
	return true
}

// Flush sends everything queued. Failed sends are skipped and counted; on a
// closed socket the rest count as failed.
func (m *mmsgConn) Flush() (sent, failed int) {
	if m.queued == 0 {
		return 0, 0
	}
	m.soff, m.sfailed = 0, 0
	unsent := 0
	if err := m.rc.Write(m.writeFn); err != nil {
		unsent = m.queued - m.soff
	}
	sent, failed = m.soff-m.sfailed, m.sfailed+unsent
	for i := 0; i < m.queued; i++ {
		m.siov[i].Base = nil // do not keep buffers reachable
		m.shdrs[i].Hdr.Name = nil
	}
	m.queued = 0
	return sent, failed
}

func (m *mmsgConn) Close() error { return m.conn.Close() }
