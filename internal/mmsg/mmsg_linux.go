//go:build linux

package mmsg

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Conn is one UDP socket read and written in batches with recvmmsg and
// sendmmsg, called directly: golang.org/x/net/ipv4's ReadBatch allocates a
// *net.UDPAddr for every datagram, and the per-packet path must allocate
// nothing. Headers, buffers and address slots are allocated once here, and
// the syscall callbacks are method values built once.
//
// The socket's own receive-queue drops come with the datagrams: SO_RXQ_OVFL
// makes the kernel attach the socket's cumulative drop count (sk_drops) to
// every datagram queued after the first drop. This needs no file read, no
// scan of every UDP socket on the host (/proc/net/udp) and works where
// /proc/net is hidden. Its one lag: a drop is reported with the next
// datagram queued, which on a socket that overflows is at once.
type Conn struct {
	conn *net.UDPConn
	rc   syscall.RawConn
	pkt  bool
	v6   bool
	ts   bool

	rhdrs  []unix.Mmsghdr
	riov   []unix.Iovec
	rnames [][28]byte
	rctl   [][ctlWords]uint64 // control messages, 8-byte aligned
	bufs   []byte             // ReadBatch buffers of bsize bytes
	bsize  int
	srcs   []netip.AddrPort
	dsts   []netip.Addr
	rxns   []int64 // kernel receive times (RxTime), unix ns
	ovfl   uint32  // the kernel's 32-bit drop count as last seen
	drops  uint64  // drops seen since the last Dropped call

	shdrs  []unix.Mmsghdr
	siov   []unix.Iovec
	snames []Sockaddr // destinations given to Queue
	sctl   [][ctlWords]uint64
	queued int

	// Results of the syscall callbacks.
	rn, soff, sfailed int
	rerr              error
	readFn, writeFn   func(fd uintptr) bool
	tryFn             func(fd uintptr) bool
}

// ctlWords is the room for one datagram's control messages (IP_PKTINFO,
// SO_RXQ_OVFL and SCM_TIMESTAMPNS: 32 + 24 + 32 bytes), 8-byte aligned.
const ctlWords = 12

// Open binds a UDP socket to addr (IPv4; port 0 picks one) and wraps it.
func Open(addr netip.AddrPort, o Options) (*Conn, error) {
	if !addr.Addr().Unmap().Is4() {
		return nil, fmt.Errorf("mmsg: %s: IPv4 only", addr)
	}
	var lc net.ListenConfig
	if o.ReuseAddr {
		lc.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			if err := rc.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
			}); err != nil {
				return err
			}
			return serr
		}
	}
	pc, err := lc.ListenPacket(context.Background(), "udp4", addr.String())
	if err != nil {
		return nil, err
	}
	uc := pc.(*net.UDPConn)
	c, err := Wrap(uc, o)
	if err != nil {
		_ = uc.Close()
		return nil, err
	}
	return c, nil
}

// Wrap reads and writes uc in batches; Close closes uc. Several Conns may
// wrap one socket (say, one reading and one writing).
func Wrap(uc *net.UDPConn, o Options) (*Conn, error) {
	o = o.withDefaults()
	rc, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = tune(int(fd), o) }); err != nil || serr != nil {
		return nil, errors.Join(err, serr)
	}
	la, _ := uc.LocalAddr().(*net.UDPAddr)
	c := &Conn{conn: uc, rc: rc, pkt: o.PktInfo, ts: o.RxTime, v6: la != nil && la.IP.To4() == nil, bsize: o.BufSize}
	c.rhdrs, c.riov = make([]unix.Mmsghdr, o.ReadBatch), make([]unix.Iovec, o.ReadBatch)
	c.rnames, c.rctl = make([][28]byte, o.ReadBatch), make([][ctlWords]uint64, o.ReadBatch)
	c.bufs = make([]byte, o.ReadBatch*o.BufSize)
	c.srcs, c.dsts = make([]netip.AddrPort, o.ReadBatch), make([]netip.Addr, o.ReadBatch)
	if o.RxTime {
		c.rxns = make([]int64, o.ReadBatch)
	}
	for i := range c.rhdrs {
		c.riov[i].Base = &c.bufs[i*o.BufSize]
		c.riov[i].SetLen(o.BufSize)
		c.rhdrs[i].Hdr.Iov = &c.riov[i]
		c.rhdrs[i].Hdr.SetIovlen(1)
		c.rhdrs[i].Hdr.Name = &c.rnames[i][0]
		c.rhdrs[i].Hdr.Control = (*byte)(unsafe.Pointer(&c.rctl[i][0]))
	}
	c.shdrs, c.siov = make([]unix.Mmsghdr, o.WriteBatch), make([]unix.Iovec, o.WriteBatch)
	c.snames, c.sctl = make([]Sockaddr, o.WriteBatch), make([][ctlWords]uint64, o.WriteBatch)
	for i := range c.shdrs {
		c.shdrs[i].Hdr.Iov = &c.siov[i]
		c.shdrs[i].Hdr.SetIovlen(1)
	}
	c.readFn, c.writeFn = c.doRead, c.doWrite
	c.tryFn = c.doTry
	return c, nil
}

// tune sets the socket options o asks for, and SO_RXQ_OVFL (a kernel
// without it, before 2.6.33, attaches no count: drops then read as none).
func tune(fd int, o Options) error {
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RXQ_OVFL, 1)
	if o.PktInfo {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_PKTINFO, 1); err != nil {
			return fmt.Errorf("mmsg: IP_PKTINFO: %w", err)
		}
	}
	if o.RxTime {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
			return fmt.Errorf("mmsg: SO_TIMESTAMPNS: %w", err)
		}
	}
	if o.DontFragment {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_PROBE); err != nil {
			return fmt.Errorf("mmsg: IP_MTU_DISCOVER: %w", err)
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
		c.rhdrs[i].Hdr.Namelen = 28
		c.rhdrs[i].Hdr.SetControllen(ctlWords * 8)
		c.rhdrs[i].Hdr.Flags = 0
	}
	for {
		n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&c.rhdrs[0])),
			uintptr(len(c.rhdrs)), unix.MSG_DONTWAIT, 0, 0)
		switch errno {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false // not ready: let the runtime poller wait
		case 0:
			c.rn, c.rerr = int(n), nil
		default:
			c.rn, c.rerr = 0, errno
		}
		return true
	}
}

// doTry is doRead that never waits: nothing queued reads as 0 datagrams.
func (c *Conn) doTry(fd uintptr) bool {
	if !c.doRead(fd) {
		c.rn, c.rerr = 0, nil
	}
	return true
}

// ReadBatch blocks until at least one datagram arrives and returns how
// many it read: Buf, Src, Dst and Truncated describe each until the next
// ReadBatch.
func (c *Conn) ReadBatch() (int, error) { return c.read(c.readFn) }

// TryReadBatch is ReadBatch without the wait: 0 and no error when nothing
// is queued. It never parks the goroutine in the runtime's poller, so a
// reader that polls with it while another goroutine holds the only P
// (GOMAXPROCS 1) is not left waiting for the poller to be checked.
func (c *Conn) TryReadBatch() (int, error) { return c.read(c.tryFn) }

func (c *Conn) read(fn func(fd uintptr) bool) (int, error) {
	if err := c.rc.Read(fn); err != nil {
		return 0, err
	}
	if c.rerr != nil {
		return 0, c.rerr
	}
	for i := 0; i < c.rn; i++ {
		h := &c.rhdrs[i].Hdr
		c.srcs[i], _ = DecodeSockaddr(c.rnames[i][:min(int(h.Namelen), 28)])
		if c.pkt || c.ts {
			c.dsts[i] = c.readCtl(i)
		}
	}
	if !c.pkt && !c.ts && c.rn > 0 {
		// The count is stamped when a datagram is queued: the batch's last
		// has the latest.
		c.readCtl(c.rn - 1)
	}
	return c.rn, nil
}

// readCtl reads datagram i's control messages: its destination address
// (IP_PKTINFO) and the socket's drop count (SO_RXQ_OVFL; the kernel's
// counter is 32 bits and wraps, which the unsigned difference does not
// mind).
func (c *Conn) readCtl(i int) netip.Addr {
	var dst netip.Addr
	if c.ts {
		c.rxns[i] = 0
	}
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
		case c.ts && h.Level == unix.SOL_SOCKET && h.Type == unix.SCM_TIMESTAMPNS && len(data) >= 16:
			sec, nsec := int64(binary.NativeEndian.Uint64(data[0:8])), int64(binary.NativeEndian.Uint64(data[8:16])) //nolint:gosec // struct timespec
			c.rxns[i] = sec*1e9 + nsec
		}
		ctl = ctl[min(len(ctl), unix.CmsgSpace(l-unix.CmsgLen(0))):]
	}
	return dst
}

// RxTime is when the kernel queued datagram i on the socket, in unix ns
// (CLOCK_REALTIME), with Options.RxTime; else, or when the kernel gave
// none, 0.
func (c *Conn) RxTime(i int) int64 {
	if !c.ts {
		return 0
	}
	return c.rxns[i]
}

// Buf is datagram i of the last batch (valid until the next ReadBatch).
func (c *Conn) Buf(i int) []byte {
	o := i * c.bsize
	return c.bufs[o : o+min(int(c.rhdrs[i].Len), c.bsize)]
}

// Truncated tells whether datagram i was longer than its buffer.
func (c *Conn) Truncated(i int) bool { return c.rhdrs[i].Hdr.Flags&unix.MSG_TRUNC != 0 }

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
