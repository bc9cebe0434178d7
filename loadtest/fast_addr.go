package loadtest

import (
	"fmt"
	"net/netip"
)

// Device addresses of the fast engine: device i of a run speaks from its
// own address, with socket I/O in 127.0.0.0/8 (all of it reaches this host
// on Linux) from 127.16.0.1 on, with packet I/O in Fast.Packet.Devices
// (fast_io.go); 254 devices per /24 (no .0 or .255 host byte), so that
// addresses map to device numbers and back by arithmetic, with no table.
// Addresses are never reused within a run: a forwarder still holding a
// left device's session would refuse another participant from its
// address.
const (
	addrFirstBlock = 16 // 127.16.0.0/24 is the first /24 used
	addrPerBlock   = 254
	// maxDevices is how many addresses there are (127.16.0.1 ..
	// 127.255.255.254).
	maxDevices = (256 - addrFirstBlock) * 256 * addrPerBlock
)

// addrRange is a range of device addresses: blocks /24s from base (the
// address of the first, host byte 0), 254 devices each (no .0 or .255
// host byte), and an address outside them, mute (fast_select.go).
type addrRange struct {
	base   uint32
	blocks int
	muted  uint32
}

// loopbackRange is the socket I/O's range: 127.16.0.1 .. 127.255.255.254.
var loopbackRange = addrRange{base: 127<<24 | addrFirstBlock<<16, blocks: (256 - addrFirstBlock) * 256,
	muted: 127<<24 | (addrFirstBlock-1)<<16 | 1}

// rangeOf is the range of prefix p (IPv4, /8 to /23): its first /24 holds
// the mute address, the others devices.
func rangeOf(p netip.Prefix) (addrRange, error) {
	if !p.Addr().Is4() || p.Bits() < 8 || p.Bits() > 23 {
		return addrRange{}, fmt.Errorf("loadtest: device prefix %s: want IPv4, /8 to /23", p)
	}
	b := p.Masked().Addr().As4()
	base := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8
	return addrRange{base: base + 256, blocks: 1<<(24-p.Bits()) - 1, muted: base + 1}, nil
}

func (r addrRange) devices() int { return r.blocks * addrPerBlock }

// addr is device i's address.
func (r addrRange) addr(i int) (netip.Addr, error) {
	if i < 0 || i >= r.devices() {
		return netip.Addr{}, fmt.Errorf("loadtest: device %d: only %d device addresses from %s", i, r.devices(), u32Addr(r.base))
	}
	return u32Addr(r.base + uint32(i/addrPerBlock)<<8 + uint32(i%addrPerBlock) + 1), nil //nolint:gosec // i < devices
}

// dev is the device whose address a is (false: none).
func (r addrRange) dev(a netip.Addr) (int, bool) {
	if !a.Is4() {
		return 0, false
	}
	b := a.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	if v < r.base || b[3] == 0 || b[3] == 255 {
		return 0, false
	}
	block := int((v - r.base) >> 8)
	if block >= r.blocks {
		return 0, false
	}
	return block*addrPerBlock + int(b[3]) - 1, true
}

// mute is the address no device has (fast_select.go).
func (r addrRange) mute() netip.Addr { return u32Addr(r.muted) }

func u32Addr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// deviceAddr is device i's address in the loopback range.
func deviceAddr(i int) (netip.Addr, error) { return loopbackRange.addr(i) }

// deviceOf is the device whose loopback address a is (false: none).
func deviceOf(a netip.Addr) (int, bool) { return loopbackRange.dev(a) }

// globalDev is the run-wide device number of this engine's device no: the
// agents of a distributed run on one host interleave their devices'
// addresses (agent i of n takes numbers i, i+n, i+2n...).
func (e *fastEngine) globalDev(no int) int {
	of := max(e.p.share.of, 1)
	return no*of + e.p.share.index
}

// localDev is this engine's device whose address a is (false: none, or
// another agent's).
func (e *fastEngine) localDev(a netip.Addr) (int, bool) {
	g, ok := e.devices().dev(a)
	of := max(e.p.share.of, 1)
	if !ok || g%of != e.p.share.index {
		return 0, false
	}
	return g / of, true
}

// devices is the engine's device range: e.addrs, or the loopback range
// when none was set (an engine built by hand, as unit tests do).
func (e *fastEngine) devices() addrRange {
	if e.addrs.blocks == 0 {
		return loopbackRange
	}
	return e.addrs
}
