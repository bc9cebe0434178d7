//go:build !linux

package mmsg

import (
	"errors"
	"net"
	"net/netip"
)

// Conn is the portable fallback: one datagram per system call, no
// per-datagram addresses and no drop count. It is correct everywhere and
// fast nowhere; relays and the fast generator run on Linux.
type Conn struct {
	conn   *net.UDPConn
	buf    []byte
	n      int
	src    netip.AddrPort
	bufs   [][]byte
	dsts   []netip.AddrPort
	queued int
}

// ErrUnsupported: per-datagram addresses need Linux.
var ErrUnsupported = errors.New("mmsg: per-datagram addresses (PktInfo) need Linux")

// Open binds a UDP socket to addr and wraps it.
func Open(addr netip.AddrPort, o Options) (*Conn, error) {
	if o.PktInfo {
		return nil, ErrUnsupported
	}
	uc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return nil, err
	}
	return Wrap(uc, o)
}

// Wrap reads and writes uc one datagram at a time; Close closes uc.
func Wrap(uc *net.UDPConn, o Options) (*Conn, error) {
	if o.PktInfo {
		return nil, ErrUnsupported
	}
	o = o.withDefaults()
	if o.Buffer > 0 {
		_ = uc.SetReadBuffer(o.Buffer)
		_ = uc.SetWriteBuffer(o.Buffer)
	}
	return &Conn{conn: uc, buf: make([]byte, o.BufSize+1), bufs: make([][]byte, o.WriteBatch),
		dsts: make([]netip.AddrPort, o.WriteBatch)}, nil
}

// LocalAddr is the bound address.
func (c *Conn) LocalAddr() netip.AddrPort { return c.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// TryReadBatch reads nothing here (no read without a wait): the next
// ReadBatch gets what is queued.
func (c *Conn) TryReadBatch() (int, error) { return 0, nil }

// ReadBatch reads one datagram.
func (c *Conn) ReadBatch() (int, error) {
	n, src, err := c.conn.ReadFromUDPAddrPort(c.buf)
	if err != nil {
		return 0, err
	}
	c.n, c.src = n, netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	return 1, nil
}

func (c *Conn) Buf(int) []byte         { return c.buf[:min(c.n, len(c.buf)-1)] }
func (c *Conn) Truncated(int) bool     { return c.n >= len(c.buf) }
func (c *Conn) Src(int) netip.AddrPort { return c.src }
func (c *Conn) Dst(int) netip.Addr     { return netip.Addr{} }
func (c *Conn) Dropped() uint64        { return 0 }
func (c *Conn) RxTime(int) int64       { return 0 }
func (c *Conn) Close() error           { return c.conn.Close() }
func (c *Conn) QueueTo(b []byte, dst *Sockaddr) bool {
	ap, _ := DecodeSockaddr(dst.Bytes())
	return c.Queue(b, ap, netip.Addr{})
}

// Queue adds b for dst (src is ignored: no PktInfo here).
func (c *Conn) Queue(b []byte, dst netip.AddrPort, _ netip.Addr) bool {
	if c.queued == len(c.bufs) {
		return false
	}
	c.bufs[c.queued], c.dsts[c.queued] = b, dst
	c.queued++
	return true
}

// Flush sends the queued datagrams one by one.
func (c *Conn) Flush() (sent, failed int) {
	for i := 0; i < c.queued; i++ {
		if _, err := c.conn.WriteToUDPAddrPort(c.bufs[i], c.dsts[i]); err != nil {
			failed++
		} else {
			sent++
		}
		c.bufs[i] = nil
	}
	c.queued = 0
	return sent, failed
}
