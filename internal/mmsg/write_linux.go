//go:build linux

package mmsg

import (
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Queue adds b for dst to the write batch, sent from src when it is valid
// (needs PktInfo); b must stay untouched until Flush. It reports false
// when the batch is full: Flush first.
func (c *Conn) Queue(b []byte, dst netip.AddrPort, src netip.Addr) bool {
	if c.queued == len(c.shdrs) {
		return false
	}
	i := c.queued
	c.snames[i].encode(dst, c.v6)
	c.set(i, b, &c.snames[i])
	if src.IsValid() && c.pkt {
		ctl := unsafe.Slice((*byte)(unsafe.Pointer(&c.sctl[i][0])), unix.CmsgSpace(12))
		clear(ctl)
		ch := (*unix.Cmsghdr)(unsafe.Pointer(&ctl[0]))
		ch.Level, ch.Type = unix.IPPROTO_IP, unix.IP_PKTINFO
		ch.SetLen(unix.CmsgLen(12))
		a := src.Unmap().As4()
		copy(ctl[unix.CmsgLen(0)+4:], a[:]) // ipi_spec_dst: the source to use
		h := &c.shdrs[i].Hdr
		h.Control = &ctl[0]
		h.SetControllen(unix.CmsgSpace(12))
	}
	c.queued++
	return true
}

// QueueTo adds b for an encoded destination (laid out for this socket's
// family) to the write batch, from the socket's own address; b and dst
// must stay untouched until Flush. It reports false when the batch is
// full: Flush first.
func (c *Conn) QueueTo(b []byte, dst *Sockaddr) bool {
	if c.queued == len(c.shdrs) {
		return false
	}
	c.set(c.queued, b, dst)
	c.queued++
	return true
}

func (c *Conn) set(i int, b []byte, dst *Sockaddr) {
	c.siov[i].Base = &b[0]
	c.siov[i].SetLen(len(b))
	h := &c.shdrs[i].Hdr
	h.Name = &dst.raw[0]
	h.Namelen = dst.n
	h.Control = nil
	h.SetControllen(0)
}

func (c *Conn) doWrite(fd uintptr) bool {
	for c.soff < c.queued {
		n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&c.shdrs[c.soff])),
			uintptr(c.queued-c.soff), unix.MSG_DONTWAIT, 0, 0)
		switch errno {
		case unix.EAGAIN:
			return false // socket buffer full: wait until writable
		case unix.EINTR:
			continue
		case 0:
			c.soff += int(n)
		default:
			// The first of the rest failed (unreachable peer, bad
			// address): skip it, keep the others.
			c.sfailed++
			c.soff++
		}
	}
	return true
}

// Flush sends the queued batch and reports how many went and how many
// failed (on a closed socket, all that had not gone).
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
		c.siov[i].Base = nil // do not keep buffers reachable
		c.shdrs[i].Hdr.Name = nil
	}
	c.queued = 0
	return sent, failed
}

// Close closes the socket; a blocked ReadBatch returns an error.
func (c *Conn) Close() error { return c.conn.Close() }
