//go:build linux

package afpacket

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rxRing is a TPACKET_V3 receive ring: Blocks blocks of BlockSize bytes
// the kernel fills with frames and hands over whole (when full, or
// retireAfterMs after its first frame); the reader walks a block's frames
// and gives it back.
type rxRing struct {
	mem       []byte
	blockSize int
	blocks    int
	next      int // the block to read next
	held      int // the block the last batch points into (-1: none)

	// The last batch: each datagram's payload (offset and length in mem),
	// destination address and kernel arrival time (unix ns).
	off, n []int32
	dst    []netip.Addr
	rx     []int64
	count  int
	drops  uint64
	reads  int
}

// retireAfterMs is how long a block that holds frames may stay open: the
// reader's wake-up lag at low rates (delays are measured from the kernel's
// arrival times, which this lag does not touch).
const retireAfterMs = 8

// Offsets in a block descriptor (struct tpacket_block_desc, hdr v1) and a
// frame header (struct tpacket3_hdr).
const (
	blkStatus   = 8
	blkNumPkts  = 12
	blkFirstPkt = 16
	pktNext     = 0
	pktSec      = 4
	pktNsec     = 8
	pktSnaplen  = 12
	pktMac      = 24
	pktHdrMin   = 48
	frameSize   = 2048
)

func (r *rxRing) setup(fd, blocks, blockSize int) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VERSION, unix.TPACKET_V3); err != nil {
		return fmt.Errorf("afpacket: TPACKET_V3: %w", err)
	}
	req := unix.TpacketReq3{Block_size: uint32(blockSize), Block_nr: uint32(blocks), //nolint:gosec // small
		Frame_size: frameSize, Frame_nr: uint32(blockSize / frameSize * blocks), Retire_blk_tov: retireAfterMs} //nolint:gosec // small
	if err := unix.SetsockoptTpacketReq3(fd, unix.SOL_PACKET, unix.PACKET_RX_RING, &req); err != nil {
		return fmt.Errorf("afpacket: PACKET_RX_RING: %w", err)
	}
	mem, err := unix.Mmap(fd, 0, blocks*blockSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_LOCKED)
	if err != nil {
		mem, err = unix.Mmap(fd, 0, blocks*blockSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	}
	if err != nil {
		return fmt.Errorf("afpacket: mmap ring: %w", err)
	}
	most := blockSize / 64 // no frame takes less (header and Ethernet/IPv4/UDP)
	*r = rxRing{mem: mem, blockSize: blockSize, blocks: blocks, held: -1,
		off: make([]int32, most), n: make([]int32, most), dst: make([]netip.Addr, most), rx: make([]int64, most)}
	return nil
}

func (r *rxRing) unmap() {
	if r.mem != nil {
		_ = unix.Munmap(r.mem)
		r.mem = nil
	}
}

func (r *rxRing) status(b int) *uint32 {
	return (*uint32)(unsafe.Pointer(&r.mem[b*r.blockSize+blkStatus]))
}

// release gives the block of the last batch back to the kernel.
func (r *rxRing) release() {
	if r.held >= 0 {
		atomic.StoreUint32(r.status(r.held), unix.TP_STATUS_KERNEL)
		r.held = -1
	}
	r.count = 0
}

// take reads block b's frames into the batch if the kernel handed it
// over; false if not.
func (r *rxRing) take(b int, port uint16) bool {
	if atomic.LoadUint32(r.status(b))&unix.TP_STATUS_USER == 0 {
		return false
	}
	base := b * r.blockSize
	blk := r.mem[base : base+r.blockSize]
	num := int(binary.NativeEndian.Uint32(blk[blkNumPkts:]))
	off := int(binary.NativeEndian.Uint32(blk[blkFirstPkt:]))
	r.held, r.count = b, 0
	for range num {
		if off < 0 || off+pktHdrMin > len(blk) || r.count == len(r.off) {
			break
		}
		h := blk[off:]
		mac, snap := int(binary.NativeEndian.Uint16(h[pktMac:])), int(binary.NativeEndian.Uint32(h[pktSnaplen:]))
		if mac+snap <= len(h) {
			if d, ok := Parse(h[mac : mac+snap]); ok && d.Dst.Port() == port {
				r.off[r.count] = int32(base + off + mac + payloadStart(h[mac:], d)) //nolint:gosec // < ring size
				r.n[r.count] = int32(len(d.Payload))                                //nolint:gosec // < frame
				r.dst[r.count] = d.Dst.Addr()
				r.rx[r.count] = int64(binary.NativeEndian.Uint32(h[pktSec:]))*1e9 + int64(binary.NativeEndian.Uint32(h[pktNsec:]))
				r.count++
			}
		}
		next := int(binary.NativeEndian.Uint32(h[pktNext:]))
		if next == 0 {
			break
		}
		off += next
	}
	return true
}

// payloadStart is where d's payload, parsed from frame f, starts in f.
func payloadStart(f []byte, d Datagram) int {
	return int(uintptr(unsafe.Pointer(unsafe.SliceData(d.Payload))) - uintptr(unsafe.Pointer(unsafe.SliceData(f))))
}

// ReadBatch waits until a block of frames arrives and returns how many
// datagrams for the Conn's port it holds: Buf, Dst and RxTime describe
// each until the next ReadBatch. After Close: net.ErrClosed.
func (c *Conn) ReadBatch() (int, error) {
	r := &c.ring
	if !c.started {
		if !c.state.CompareAndSwap(ringIdle, ringReading) {
			return 0, net.ErrClosed
		}
		c.started = true
	}
	r.release()
	for {
		if c.closing.Load() {
			r.unmap()
			return 0, net.ErrClosed
		}
		if r.take(r.next, c.port) {
			r.next = (r.next + 1) % r.blocks
			if r.reads++; r.reads%64 == 0 {
				c.readDrops()
			}
			if r.count > 0 {
				return r.count, nil
			}
			r.release()
			continue
		}
		if err := c.rc.Read(c.wait); err != nil && !c.closing.Load() {
			return 0, fmt.Errorf("afpacket: wait: %w", err)
		}
	}
}

// ready tells the poller whether the next block is the reader's (else it
// parks the reader until the socket is readable: a block was handed over).
func (c *Conn) ready(uintptr) bool {
	return atomic.LoadUint32(c.ring.status(c.ring.next))&unix.TP_STATUS_USER != 0
}

// readDrops adds the frames the kernel dropped (ring full) since the last
// look (PACKET_STATISTICS resets its counters on every read).
func (c *Conn) readDrops() {
	_ = c.rc.Control(c.statsFn)
}

func (c *Conn) stats(fd uintptr) {
	if st, err := unix.GetsockoptTpacketStatsV3(int(fd), unix.SOL_PACKET, unix.PACKET_STATISTICS); err == nil {
		c.ring.drops += uint64(st.Drops)
	}
}

// Buf is datagram i's payload (valid until the next ReadBatch).
func (c *Conn) Buf(i int) []byte {
	r := &c.ring
	return r.mem[r.off[i] : r.off[i]+r.n[i]]
}

// Dst is the address datagram i was sent to.
func (c *Conn) Dst(i int) netip.Addr { return c.ring.dst[i] }

// RxTime is when the kernel took frame i in, unix ns (CLOCK_REALTIME).
func (c *Conn) RxTime(i int) int64 { return c.ring.rx[i] }

// Dropped is how many frames for this socket the kernel dropped since the
// last call, as far as the reads tell (counted every 64 blocks).
func (c *Conn) Dropped() uint64 {
	d := c.ring.drops
	c.ring.drops = 0
	return d
}
