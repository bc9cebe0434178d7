package mmsg

import (
	"encoding/binary"
	"net/netip"
)

// Sockaddr is a destination encoded once, in the kernel's layout for the
// socket's family (Linux: sockaddr_in, 16 bytes, or sockaddr_in6, 28
// bytes), so that QueueTo copies nothing and converts nothing.
type Sockaddr struct {
	raw [28]byte
	n   uint32
}

// Linux's address families.
const (
	afInet  = 2
	afInet6 = 10
)

// EncodeSockaddr lays out ap for a socket of the given family (v6 sockets
// reach IPv4 peers through v4-mapped addresses).
func EncodeSockaddr(ap netip.AddrPort, v6socket bool) Sockaddr {
	var s Sockaddr
	s.encode(ap, v6socket)
	return s
}

func (s *Sockaddr) encode(ap netip.AddrPort, v6socket bool) {
	binary.BigEndian.PutUint16(s.raw[2:4], ap.Port())
	if !v6socket {
		binary.NativeEndian.PutUint16(s.raw[0:2], afInet)
		v4 := ap.Addr().Unmap().As4()
		copy(s.raw[4:8], v4[:])
		clear(s.raw[8:])
		s.n = 16
		return
	}
	binary.NativeEndian.PutUint16(s.raw[0:2], afInet6)
	clear(s.raw[4:8])
	v6 := ap.Addr().As16()
	copy(s.raw[8:24], v6[:])
	clear(s.raw[24:])
	s.n = 28
}

// Bytes is the encoded address.
func (s *Sockaddr) Bytes() []byte { return s.raw[:s.n] }

// DecodeSockaddr reads a kernel sockaddr; v4-mapped v6 addresses come back
// as plain IPv4 so that one peer has one key whatever the socket family.
func DecodeSockaddr(b []byte) (netip.AddrPort, bool) {
	if len(b) < 16 {
		return netip.AddrPort{}, false
	}
	port := binary.BigEndian.Uint16(b[2:4])
	switch binary.NativeEndian.Uint16(b[0:2]) {
	case afInet:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), port), true
	case afInet6:
		if len(b) < 28 {
			return netip.AddrPort{}, false
		}
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[8:24])).Unmap(), port), true
	}
	return netip.AddrPort{}, false
}
