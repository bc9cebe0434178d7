//go:build linux

package mmsg

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Conn is one UDP socket read and written in batches.
type Conn struct {
	conn *net.UDPConn
	rc   syscall.RawConn
	pkt  bool

	rhdrs  [Batch]unix.Mmsghdr
	riov   [Batch]unix.Iovec
	rnames [Batch][16]byte
	rctl   [Batch][ctlWords]uint64
	bufs   [Batch][BufSize]byte
	srcs   [Batch]netip.AddrPort
	dsts   [Batch]netip.Addr
	ovfl   uint32
	drops  uint64

	shdrs  [Batch]unix.Mmsghdr
	siov   [Batch]unix.Iovec
	snames [Batch][16]byte
	sctl   [Batch][ctlWords]uint64
	queued int

	rn, soff, sfailed int
	rerr              error
	readFn, writeFn   func(fd uintptr) bool
}

// ctlWords is the room for one datagram's control messages (IP_PKTINFO
// and SO_RXQ_OVFL), 8-byte aligned.
const ctlWords = 12

// Open binds a UDP socket to addr (IPv4; port 0 picks one).
func Open(addr netip.AddrPort, o Options) (*Conn, error) {
	if !addr.Addr().Unmap().Is4() {
		return nil, fmt.Errorf("mmsg: %s: IPv4 only", addr)
	}
	uc, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return nil, err
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		_ = uc.Close()
		return nil, err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = tune(int(fd), o) }); err != nil || serr != nil {
		_ = uc.Close()
		return nil, errors.Join(err, serr)
	}
	c := &Conn{conn: uc, rc: rc, pkt: o.PktInfo}
	for i := range c.rhdrs {
		c.riov[i].Base = &c.bufs[i][0]
		c.riov[i].SetLen(BufSize)
		c.rhdrs[i].Hdr.Iov = &c.riov[i]
		c.rhdrs[i].Hdr.SetIovlen(1)
		c.rhdrs[i].Hdr.Name = &c.rnames[i][0]
		c.rhdrs[i].Hdr.Control = (*byte)(unsafe.Pointer(&c.rctl[i][0]))
		c.shdrs[i].Hdr.Iov = &c.siov[i]
		c.shdrs[i].Hdr.SetIovlen(1)
		c.shdrs[i].Hdr.Name = &c.snames[i][0]
		c.shdrs[i].Hdr.Namelen = 16
	}
	c.readFn, c.writeFn = c.doRead, c.doWrite
	return c, nil
}

// tune sets the socket options o asks for, and SO_RXQ_OVFL.
func tune(fd int, o Options) error {
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RXQ_OVFL, 1)
	if o.PktInfo {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_PKTINFO, 1); err != nil {
			return fmt.Errorf("mmsg: IP_PKTINFO: %w", err)
		}
	}
	if o.Buffer > 0 {
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, o.Buffer) != nil {
			_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, o.Buffer)
		}
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, o.Buffer) != nil {
			_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, o.Buffer)
		}
	}
	return nil
}

// LocalAddr is the bound address.
func (c *Conn) LocalAddr() netip.AddrPort {
	return c.conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

func (c *Conn) doRead(fd uintptr) bool {
	for i := range c.rhdrs {
		c.rhdrs[i].Hdr.Namelen = 16
		c.rhdrs[i].Hdr.SetControllen(ctlWords * 8)
		c.rhdrs[i].Hdr.Flags = 0
	}
	for {
		n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&c.rhdrs[0])),
			Batch, unix.MSG_DONTWAIT, 0, 0)
		switch errno {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		case 0:
			c.rn, c.rerr = int(n), nil
		default:
			c.rn, c.rerr = 0, errno
		}
		return true
	}
}

// ReadBatch blocks until at least one datagram arrives and returns how
// many it read: Buf, Src and Dst give each.
func (c *Conn) ReadBatch() (int, error) {
	if err := c.rc.Read(c.readFn); err != nil {
		return 0, err
	}
	if c.rerr != nil {
		return 0, c.rerr
	}
	for i := 0; i < c.rn; i++ {
		h := &c.rhdrs[i].Hdr
		c.srcs[i] = decodeSockaddr(c.rnames[i][:min(int(h.Namelen), 16)])
		c.dsts[i] = c.readCtl(i)
	}
	return c.rn, nil
}

// readCtl reads datagram i's control messages: its destination address
// (IP_PKTINFO) and the socket's drop count (SO_RXQ_OVFL).
func (c *Conn) readCtl(i int) netip.Addr {
	var dst netip.Addr
	n := min(int(c.rhdrs[i].Hdr.Controllen), ctlWords*8)
	ctl := unsafe.Slice((*byte)(unsafe.Pointer(&c.rctl[i][0])), n)
	for len(ctl) >= unix.CmsgLen(0) {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&ctl[0]))
		l := int(h.Len)
		if l < unix.CmsgLen(0) || l > len(ctl) {
			break
		}
		data := ctl[unix.CmsgLen(0):l]
		switch {
		case h.Level == unix.IPPROTO_IP && h.Type == unix.IP_PKTINFO && len(data) >= 12:
			dst = netip.AddrFrom4([4]byte(data[8:12])) // ipi_addr: the header's destination
		case h.Level == unix.SOL_SOCKET && h.Type == unix.SO_RXQ_OVFL && len(data) >= 4:
			v := binary.NativeEndian.Uint32(data)
			c.drops += uint64(v - c.ovfl)
			c.ovfl = v
		}
		ctl = ctl[min(len(ctl), unix.CmsgSpace(l-unix.CmsgLen(0))):]
	}
	return dst
}

// Buf is datagram i of the last batch (valid until the next ReadBatch).
func (c *Conn) Buf(i int) []byte { return c.bufs[i][:min(int(c.rhdrs[i].Len), BufSize)] }

// Src is the sender of datagram i.
func (c *Conn) Src(i int) netip.AddrPort { return c.srcs[i] }

// Dst is the address datagram i was sent to (with PktInfo; else invalid).
func (c *Conn) Dst(i int) netip.Addr { return c.dsts[i] }

// Dropped is how many datagrams the kernel dropped from the receive queue
// since the last call, as far as the reads tell.
func (c *Conn) Dropped() uint64 {
	d := c.drops
	c.drops = 0
	return d
}

// Queue adds b for dst to the write batch, sent from src when it is valid
// (needs PktInfo); b must stay untouched until Flush. It reports false
// when the batch is full: Flush first.
func (c *Conn) Queue(b []byte, dst netip.AddrPort, src netip.Addr) bool {
	if c.queued == Batch {
		return false
	}
	i := c.queued
	c.siov[i].Base = &b[0]
	c.siov[i].SetLen(len(b))
	encodeSockaddr(c.snames[i][:], dst)
	h := &c.shdrs[i].Hdr
	if src.IsValid() && c.pkt {
		ctl := unsafe.Slice((*byte)(unsafe.Pointer(&c.sctl[i][0])), unix.CmsgSpace(12))
		clear(ctl)
		ch := (*unix.Cmsghdr)(unsafe.Pointer(&ctl[0]))
		ch.Level, ch.Type = unix.IPPROTO_IP, unix.IP_PKTINFO
		ch.SetLen(unix.CmsgLen(12))
		a := src.Unmap().As4()
		copy(ctl[unix.CmsgLen(0)+4:], a[:]) // ipi_spec_dst: the source to use
		h.Control = &ctl[0]
		h.SetControllen(unix.CmsgSpace(12))
	} else {
		h.Control = nil
		h.SetControllen(0)
	}
	c.queued++
	return true
}

func (c *Conn) doWrite(fd uintptr) bool {
	for c.soff < c.queued {
		n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&c.shdrs[c.soff])),
			uintptr(c.queued-c.soff), unix.MSG_DONTWAIT, 0, 0)
		switch errno {
		case unix.EAGAIN:
			return false
		case unix.EINTR:
			continue
		case 0:
			c.soff += int(n)
		default:
			c.sfailed++ // the first of the rest failed: skip it
			c.soff++
		}
	}
	return true
}

// Flush sends the queued batch and reports how many went and how many
// failed.
func (c *Conn) Flush() (sent, failed int) {
	if c.queued == 0 {
		return 0, 0
	}
	c.soff, c.sfailed = 0, 0
	unsent := 0
	if err := c.rc.Write(c.writeFn); err != nil {
		unsent = c.queued - c.soff
	}
	sent, failed = c.soff-c.sfailed, c.sfailed+unsent
	for i := 0; i < c.queued; i++ {
		c.siov[i].Base = nil
	}
	c.queued = 0
	return sent, failed
}

// Close closes the socket; a blocked ReadBatch returns an error.
func (c *Conn) Close() error { return c.conn.Close() }

func encodeSockaddr(b []byte, ap netip.AddrPort) {
	binary.NativeEndian.PutUint16(b[0:2], unix.AF_INET)
	binary.BigEndian.PutUint16(b[2:4], ap.Port())
	a := ap.Addr().Unmap().As4()
	copy(b[4:8], a[:])
	clear(b[8:16])
}

func decodeSockaddr(b []byte) netip.AddrPort {
	if len(b) < 8 || binary.NativeEndian.Uint16(b[0:2]) != unix.AF_INET {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), binary.BigEndian.Uint16(b[2:4]))
}
