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
//
// The socket's own receive-queue drops come with the datagrams: SO_RXQ_OVFL
// makes the kernel attach the socket's cumulative drop count (sk_drops) to
// every datagram queued after the first drop. We chose this over the drops
// column of /proc/net/udp{,6} for our socket inodes: it needs no file read,
// no scan of every UDP socket on the host and no inode lookup at each load
// sample, it works where /proc/net is hidden, and it fits the batched read
// (one control-message slot per datagram, allocated here once; one message
// looked at per batch). Its one lag: a drop is reported with the next
// datagram queued, which on a socket that overflows is at once.
type mmsgConn struct {
	conn *net.UDPConn
	rc   syscall.RawConn

	rhdrs  [readBatch]unix.Mmsghdr
	riov   [readBatch]unix.Iovec
	rnames [readBatch][28]byte
	bufs   [readBatch][bufSize]byte
	srcs   [readBatch]netip.AddrPort
	rctl   [readBatch][ctlWords]uint64 // control messages (SO_RXQ_OVFL), 8-byte aligned

	ovfl    uint32 // the socket's drop count as last reported (the kernel's 32-bit counter)
	dropped uint64 // drops reported since the last Dropped call

	shdrs  [writeBatch]unix.Mmsghdr
	siov   [writeBatch]unix.Iovec
	queued int

	// Results of the syscall callbacks.
	rn, soff, sfailed int
	rerr              error
	readFn, writeFn   func(fd uintptr) bool
}

// ctlWords is the room for one datagram's control messages: SO_RXQ_OVFL's
// header and 4-byte count, with room to spare.
const ctlWords = 8

func newPacketConn(c *net.UDPConn) (packetConn, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	// A kernel without SO_RXQ_OVFL (before 2.6.33) attaches no count: the
	// socket's drops then read as none.
	if err := rc.Control(func(fd uintptr) {
		_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RXQ_OVFL, 1)
	}); err != nil {
		return nil, err
	}
	m := &mmsgConn{conn: c, rc: rc}
	for i := range m.rhdrs {
		m.riov[i].Base = &m.bufs[i][0]
		m.riov[i].SetLen(bufSize)
		m.rhdrs[i].Hdr.Iov = &m.riov[i]
		m.rhdrs[i].Hdr.SetIovlen(1)
		m.rhdrs[i].Hdr.Name = &m.rnames[i][0]
		m.rhdrs[i].Hdr.Control = (*byte)(unsafe.Pointer(&m.rctl[i][0]))
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
		m.rhdrs[i].Hdr.SetControllen(len(m.rctl[i]) * 8)
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
	if m.rn > 0 {
		m.noteDrops(m.rn - 1)
	}
	return m.rn, nil
}

// noteDrops reads the socket's drop count from the control messages of the
// i-th datagram of the batch. The count is stamped when a datagram is
// queued, so the batch's last datagram has the latest; a datagram without
// one means the socket has dropped nothing yet. The kernel's counter is 32
// bits and wraps: the unsigned difference does not mind.
func (m *mmsgConn) noteDrops(i int) {
	n := min(int(m.rhdrs[i].Hdr.Controllen), len(m.rctl[i])*8)
	ctl := unsafe.Slice((*byte)(unsafe.Pointer(&m.rctl[i][0])), n)
	for len(ctl) >= unix.CmsgLen(0) {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&ctl[0]))
		l := int(h.Len)
		if l < unix.CmsgLen(0) || l > len(ctl) {
			return
		}
		if h.Level == unix.SOL_SOCKET && h.Type == unix.SO_RXQ_OVFL && l >= unix.CmsgLen(4) {
			v := *(*uint32)(unsafe.Pointer(&ctl[unix.CmsgLen(0)]))
			m.dropped += uint64(v - m.ovfl)
			m.ovfl = v
			return
		}
		ctl = ctl[min(len(ctl), unix.CmsgSpace(l-unix.CmsgLen(0))):]
	}
}

// Dropped is how many datagrams the kernel dropped from this socket's
// receive queue since the last call, as far as the reads so far tell.
func (m *mmsgConn) Dropped() uint64 {
	d := m.dropped
	m.dropped = 0
	return d
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
