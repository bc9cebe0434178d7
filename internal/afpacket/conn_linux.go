//go:build linux

package afpacket

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Config says where a Conn's frames go and what it reads.
type Config struct {
	// NetNS is the network namespace the socket is opened in: a name
	// under /var/run/netns (ip netns add) or a path; empty: this
	// process's.
	NetNS string
	// Iface is the interface (in NetNS) frames go out of and come in on.
	Iface string
	// Gateway is the Ethernet destination of every frame (the far end of
	// the veth pair, or a router there).
	Gateway MAC
	// Port is the UDP port the Conn sends from and reads frames for.
	Port uint16
	// Checksum: compute UDP checksums (else 0, none).
	Checksum bool
	// WriteBatch is how many frames Queue holds for one Flush (default
	// 64); Blocks and BlockSize size the receive ring (default 64 of
	// 256 KiB).
	WriteBatch, Blocks, BlockSize int
}

func (c Config) withDefaults() Config {
	if c.WriteBatch == 0 {
		c.WriteBatch = 64
	}
	if c.Blocks == 0 {
		c.Blocks = 64
	}
	if c.BlockSize == 0 {
		c.BlockSize = 256 << 10
	}
	return c
}

// Conn is one AF_PACKET socket on Config.Iface: it sends UDP datagrams as
// frames it builds (Queue, Flush: sendmmsg) and reads the frames for its
// port from a TPACKET_V3 ring (ReadBatch). One goroutine may write while
// another reads; neither side is safe for more than one goroutine.
type Conn struct {
	fd      int
	file    *os.File        // fd, in the runtime's poller: ReadBatch waits there
	rc      syscall.RawConn // file's
	wait    func(fd uintptr) bool
	statsFn func(fd uintptr)
	link    Link
	port    uint16
	sum     bool

	// Write side: per queued frame its headers and the caller's payload.
	hdrs   [][HeaderLen]byte
	msgs   []unix.Mmsghdr
	iov    []unix.Iovec // two per frame: headers, payload
	queued int
	pfd    [1]unix.PollFd

	ring     rxRing
	overruns atomic.Uint64
	closing  atomic.Bool
	state    atomic.Int32 // ringIdle, ringReading, ringClosed
	started  bool         // reader only
}

// Ring ownership: Close releases the ring itself unless a reader took it.
const (
	ringIdle int32 = iota
	ringReading
	ringClosed
)

// Open opens a Conn as c says (needs CAP_NET_RAW, and CAP_SYS_ADMIN for
// another namespace).
func Open(c Config) (*Conn, error) {
	c = c.withDefaults()
	if c.Iface == "" || c.Port == 0 {
		return nil, errors.New("afpacket: an interface and a port are needed")
	}
	var conn *Conn
	err := InNetNS(c.NetNS, func() error {
		ifc, err := net.InterfaceByName(c.Iface)
		if err != nil {
			return err
		}
		if len(ifc.HardwareAddr) != 6 {
			return fmt.Errorf("afpacket: %s has no Ethernet address", c.Iface)
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0) // protocol 0: nothing read until bind
		if err != nil {
			return fmt.Errorf("afpacket: socket: %w", err)
		}
		conn = &Conn{fd: fd, link: Link{Src: MAC(ifc.HardwareAddr), Dst: c.Gateway}, port: c.Port, sum: c.Checksum}
		if err := conn.setup(ifc.Index, c); err != nil {
			_ = unix.Close(fd)
			conn.ring.unmap()
			return err
		}
		return conn.poller()
	})
	if err != nil {
		return nil, err
	}
	conn.hdrs = make([][HeaderLen]byte, c.WriteBatch)
	conn.msgs, conn.iov = make([]unix.Mmsghdr, c.WriteBatch), make([]unix.Iovec, 2*c.WriteBatch)
	for i := range conn.msgs {
		conn.iov[2*i].Base = &conn.hdrs[i][0]
		conn.iov[2*i].SetLen(HeaderLen)
		conn.msgs[i].Hdr.Iov = &conn.iov[2*i]
		conn.msgs[i].Hdr.SetIovlen(2)
	}
	return conn, nil
}

// setup sets the socket's options, filter and ring, then binds it to the
// interface for IPv4 (frames the socket sends are not read back: only
// ptype_all taps see outgoing frames).
func (c *Conn) setup(ifindex int, cfg Config) error {
	fd := c.fd
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1); err != nil {
		return fmt.Errorf("afpacket: PACKET_QDISC_BYPASS: %w", err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1) // Linux >= 4.20; belt and braces
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 8<<20) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 8<<20)
	}
	prog := portFilter(cfg.Port)
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER,
		&unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}); err != nil {
		return fmt.Errorf("afpacket: SO_ATTACH_FILTER: %w", err)
	}
	if err := c.ring.setup(fd, cfg.Blocks, cfg.BlockSize); err != nil {
		return err
	}
	sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: ifindex}
	if err := unix.Bind(fd, sa); err != nil {
		return fmt.Errorf("afpacket: bind %d: %w", ifindex, err)
	}
	return nil
}

// poller puts the socket in the runtime's poller (epoll): a reader waiting
// for a block parks its goroutine, not a thread in poll(2), so no thread
// blocks in a system call and the runtime's monitor is not woken for one.
func (c *Conn) poller() error {
	if err := unix.SetNonblock(c.fd, true); err != nil {
		return fmt.Errorf("afpacket: non-blocking: %w", err)
	}
	c.file = os.NewFile(uintptr(c.fd), "afpacket") //nolint:gosec // an fd
	rc, err := c.file.SyscallConn()
	if err != nil {
		_ = c.file.Close()
		c.ring.unmap()
		return err
	}
	c.rc = rc
	c.wait, c.statsFn = c.ready, c.stats
	return nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// portFilter is a classic BPF program that keeps the IPv4 UDP frames,
// first fragments or whole, for port and drops the rest.
func portFilter(port uint16) []unix.SockFilter {
	return []unix.SockFilter{
		{Code: 0x28, K: 12},                   // ldh [12]: EtherType
		{Code: 0x15, Jt: 0, Jf: 8, K: 0x0800}, // IPv4?
		{Code: 0x30, K: 23},                   // ldb [23]: protocol
		{Code: 0x15, Jt: 0, Jf: 6, K: 17},     // UDP?
		{Code: 0x28, K: 20},                   // ldh [20]: flags, offset
		{Code: 0x45, Jt: 4, Jf: 0, K: 0x1fff}, // a fragment after the first: drop
		{Code: 0xb1, K: 14},                   // ldxb 4*([14]&0xf): IP header length
		{Code: 0x48, K: 16},                   // ldh [x+16]: UDP destination port
		{Code: 0x15, Jt: 0, Jf: 1, K: uint32(port)},
		{Code: 0x06, K: 0x40000}, // keep the frame
		{Code: 0x06, K: 0},       // drop
	}
}

// LocalAddr is the Conn's port (on no one address: its datagrams come
// from any).
func (c *Conn) LocalAddr() netip.AddrPort { return netip.AddrPortFrom(netip.IPv4Unspecified(), c.port) }

// Link is the Conn's Ethernet source and destination.
func (c *Conn) Link() Link { return c.link }

// Queue adds payload b from src (at the Conn's port) to dst to the write
// batch; b must stay untouched until Flush. False when the batch is full:
// Flush first.
func (c *Conn) Queue(b []byte, dst netip.AddrPort, src netip.Addr) bool {
	if c.queued == len(c.msgs) {
		return false
	}
	i := c.queued
	PutHeaders(c.hdrs[i][:], c.link, netip.AddrPortFrom(src, c.port), dst, b, c.sum)
	if len(b) > 0 {
		c.iov[2*i+1].Base = &b[0]
	} else {
		c.iov[2*i+1].Base = nil
	}
	c.iov[2*i+1].SetLen(len(b))
	c.queued++
	return true
}

// Flush sends the queued frames and reports how many went and how many
// failed.
func (c *Conn) Flush() (sent, failed int) {
	off := 0
	for tries := 0; off < c.queued; {
		// A raw call: it never blocks (MSG_DONTWAIT), so the goroutine
		// keeps its P; with one P (a generator pinned to one core) a
		// plain call would have the runtime hand the P to the reader
		// for every batch, a thread switch each time.
		n, _, errno := unix.RawSyscall6(unix.SYS_SENDMMSG, uintptr(c.fd), uintptr(unsafe.Pointer(&c.msgs[off])),
			uintptr(c.queued-off), unix.MSG_DONTWAIT, 0, 0)
		switch errno {
		case 0:
			off += int(n)
			sent += int(n)
		case unix.EINTR:
		case unix.ENOBUFS:
			// The far end's receive backlog was full (veth_xmit dropped
			// it): the frame is gone, as if a NIC's ring had overflowed
			// there; the others go on.
			c.overruns.Add(1)
			off++
		case unix.EAGAIN:
			if tries++; tries > 100 {
				failed += c.queued - off
				off = c.queued
				break
			}
			c.pfd[0] = unix.PollFd{Fd: int32(c.fd), Events: unix.POLLOUT} //nolint:gosec // an fd
			_, _ = unix.Poll(c.pfd[:], 1)
		case unix.EBADF:
			failed += c.queued - off
			off = c.queued
		default:
			failed++ // the first of the rest was refused: skip it
			off++
		}
	}
	for i := range c.queued {
		c.iov[2*i+1].Base = nil // keep no payload reachable
	}
	c.queued = 0
	return sent, failed
}

// Overruns is how many frames the far end dropped as they were sent (its
// receive backlog full), since the Conn opened.
func (c *Conn) Overruns() uint64 { return c.overruns.Load() }

// Close closes the socket: a ReadBatch running or to come returns
// net.ErrClosed and releases the ring. No Queue or Flush may follow.
func (c *Conn) Close() error {
	if !c.closing.CompareAndSwap(false, true) {
		return nil
	}
	if c.state.CompareAndSwap(ringIdle, ringClosed) {
		c.ring.unmap()
	}
	// A reader parked in the poller wakes with an error and releases the
	// ring (the mapping outlives the descriptor).
	return c.file.Close()
}
