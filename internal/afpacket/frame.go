package afpacket

import (
	"encoding/binary"
	"net/netip"
)

// MAC is an Ethernet address.
type MAC [6]byte

// Link is the Ethernet source and destination every frame of a Conn
// carries.
type Link struct {
	Src, Dst MAC
}

// Header lengths: Ethernet II, IPv4 without options, UDP.
const (
	ethLen    = 14
	ipv4Len   = 20
	udpLen    = 8
	HeaderLen = ethLen + ipv4Len + udpLen
)

const (
	etherTypeIPv4 = 0x0800
	protoUDP      = 17
	defaultTTL    = 64
	flagDF        = 0x4000 // don't fragment: no IP ID needed (RFC 6864)
)

// Datagram is a UDP datagram read from a frame: Payload points into the
// frame.
type Datagram struct {
	Src, Dst netip.AddrPort
	Payload  []byte
}

// PutHeaders writes the Ethernet, IPv4 and UDP headers of the datagram
// payload from from to to into h (at least HeaderLen bytes): the IPv4
// header checksum always, the UDP checksum when sum (else 0: none, as
// RFC 768 allows over IPv4). It allocates nothing.
func PutHeaders(h []byte, l Link, from, to netip.AddrPort, payload []byte, sum bool) {
	_ = h[HeaderLen-1]
	copy(h[0:6], l.Dst[:])
	copy(h[6:12], l.Src[:])
	binary.BigEndian.PutUint16(h[12:14], etherTypeIPv4)
	ip := h[ethLen : ethLen+ipv4Len]
	ip[0], ip[1] = 0x45, 0                                                   // version 4, 5 words; no DSCP
	binary.BigEndian.PutUint16(ip[2:4], uint16(ipv4Len+udpLen+len(payload))) //nolint:gosec // callers keep frames under 64 KiB
	binary.BigEndian.PutUint16(ip[4:6], 0)
	binary.BigEndian.PutUint16(ip[6:8], flagDF)
	ip[8], ip[9] = defaultTTL, protoUDP
	ip[10], ip[11] = 0, 0
	src, dst := from.Addr().Unmap().As4(), to.Addr().Unmap().As4()
	copy(ip[12:16], src[:])
	copy(ip[16:20], dst[:])
	binary.BigEndian.PutUint16(ip[10:12], ^fold(sum16(ip, 0)))
	u := h[ethLen+ipv4Len : HeaderLen]
	binary.BigEndian.PutUint16(u[0:2], from.Port())
	binary.BigEndian.PutUint16(u[2:4], to.Port())
	binary.BigEndian.PutUint16(u[4:6], uint16(udpLen+len(payload))) //nolint:gosec // as above
	binary.BigEndian.PutUint16(u[6:8], 0)
	if sum {
		c := ^fold(udpSum(ip, u, payload))
		if c == 0 {
			c = 0xffff // 0 means "no checksum" (RFC 768)
		}
		binary.BigEndian.PutUint16(u[6:8], c)
	}
}

// udpSum is the unfolded one's complement sum of the UDP pseudo-header
// (RFC 768), the UDP header u and payload.
func udpSum(ip, u, payload []byte) uint32 {
	s := sum16(ip[12:20], 0) // source and destination addresses
	s += protoUDP + uint32(binary.BigEndian.Uint16(u[4:6]))
	s = sum16(u, s)
	return sum16(payload, s)
}

// sum16 adds b as big-endian 16-bit words (a last odd byte padded with
// zero) to s, unfolded.
func sum16(b []byte, s uint32) uint32 {
	for len(b) >= 8 {
		s += uint32(binary.BigEndian.Uint16(b)) + uint32(binary.BigEndian.Uint16(b[2:])) +
			uint32(binary.BigEndian.Uint16(b[4:])) + uint32(binary.BigEndian.Uint16(b[6:]))
		b = b[8:]
		if s >= 1<<30 {
			s = uint32(fold(s))
		}
	}
	for len(b) >= 2 {
		s += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint32(b[0]) << 8
	}
	return s
}

// fold folds a sum to 16 bits with end-around carry.
func fold(s uint32) uint16 {
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s) //nolint:gosec // folded
}

// Parse reads the UDP datagram of an Ethernet II frame carrying IPv4
// (no VLAN tag): false for anything else, a fragment, a bad IPv4 header
// checksum or lengths that do not fit the frame (trailing padding is
// allowed). The UDP checksum is not checked: a frame tapped on its way
// out of a veth may carry only the pseudo-header's partial sum (checksum
// offload). It allocates nothing.
func Parse(f []byte) (Datagram, bool) {
	if len(f) < HeaderLen || binary.BigEndian.Uint16(f[12:14]) != etherTypeIPv4 {
		return Datagram{}, false
	}
	ip := f[ethLen:]
	ihl := int(ip[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(ip[2:4]))
	switch {
	case ip[0]>>4 != 4 || ihl < ipv4Len || ip[9] != protoUDP:
		return Datagram{}, false
	case total < ihl+udpLen || total > len(ip):
		return Datagram{}, false
	case binary.BigEndian.Uint16(ip[6:8])&0x3fff != 0: // more fragments, or an offset
		return Datagram{}, false
	case fold(sum16(ip[:ihl], 0)) != 0xffff:
		return Datagram{}, false
	}
	u := ip[ihl:total]
	ul := int(binary.BigEndian.Uint16(u[4:6]))
	if ul < udpLen || ul > len(u) {
		return Datagram{}, false
	}
	return Datagram{
		Src:     netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[12:16])), binary.BigEndian.Uint16(u[0:2])),
		Dst:     netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[16:20])), binary.BigEndian.Uint16(u[2:4])),
		Payload: u[udpLen:ul],
	}, true
}

// UDPChecksumOK tells whether the datagram of frame f (which Parse
// accepts) carries a correct UDP checksum or none (0).
func UDPChecksumOK(f []byte) bool {
	ip := f[ethLen:]
	ihl := int(ip[0]&0x0f) * 4
	u := ip[ihl:]
	ul := int(binary.BigEndian.Uint16(u[4:6]))
	if binary.BigEndian.Uint16(u[6:8]) == 0 {
		return true
	}
	return fold(udpSum(ip, u[:udpLen], u[udpLen:ul])) == 0xffff
}

// ParseMAC reads "02:00:00:00:00:01".
func ParseMAC(s string) (MAC, bool) {
	var m MAC
	if len(s) != 17 {
		return m, false
	}
	for i := range m {
		if i > 0 && s[3*i-1] != ':' {
			return m, false
		}
		hi, ok1 := unhex(s[3*i])
		lo, ok2 := unhex(s[3*i+1])
		if !ok1 || !ok2 {
			return m, false
		}
		m[i] = hi<<4 | lo
	}
	return m, true
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// String is the MAC in the usual colon form.
func (m MAC) String() string {
	const hex = "0123456789abcdef"
	b := make([]byte, 0, 17)
	for i, x := range m {
		if i > 0 {
			b = append(b, ':')
		}
		b = append(b, hex[x>>4], hex[x&15])
	}
	return string(b)
}
