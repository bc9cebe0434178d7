package loadtest

import (
	"fmt"
	"net/netip"
)

// Device addresses of the fast engine: device i of a run speaks from its
// own address in 127.0.0.0/8 (all of it reaches this host on Linux), from
// 127.16.0.1 on, 254 devices per /24 (no .0 or .255 host byte), so that
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

// deviceAddr is device i's address.
func deviceAddr(i int) (netip.Addr, error) {
	if i < 0 || i >= maxDevices {
		return netip.Addr{}, fmt.Errorf("loadtest: device %d: only %d device addresses in 127.0.0.0/8", i, maxDevices)
	}
	block := i/addrPerBlock + addrFirstBlock<<8
	return netip.AddrFrom4([4]byte{127, byte(block >> 8), byte(block), byte(i%addrPerBlock + 1)}), nil
}

// deviceOf is the device whose address a is (false: none).
func deviceOf(a netip.Addr) (int, bool) {
	if !a.Is4() {
		return 0, false
	}
	b := a.As4()
	if b[0] != 127 || b[1] < addrFirstBlock || b[3] == 0 || b[3] == 255 {
		return 0, false
	}
	block := (int(b[1])-addrFirstBlock)<<8 | int(b[2])
	return block*addrPerBlock + int(b[3]) - 1, true
}

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
	g, ok := deviceOf(a)
	of := max(e.p.share.of, 1)
	if !ok || g%of != e.p.share.index {
		return 0, false
	}
	return g / of, true
}
