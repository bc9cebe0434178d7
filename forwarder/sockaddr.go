package forwarder

import (
	"encoding/binary"
	"net/netip"
)

// sockaddr is a destination encoded once, in the kernel's layout for the
// socket's family, so that the send path copies nothing and converts nothing.
// Linux: sockaddr_in (16 bytes) or sockaddr_in6 (28 bytes).
type sockaddr struct {
	raw [28]byte
	len uint32
	ap  netip.AddrPort
}

const (
	afInet  = 2
	afInet6 = 10
)

// encodeSockaddr lays out ap for a socket of the given family (v6 sockets
// reach IPv4 peers through v4-mapped addresses).
func encodeSockaddr(ap netip.AddrPort, v6socket bool) sockaddr {
	s := sockaddr{ap: ap}
	a := ap.Addr()
	if !v6socket {
		a = a.Unmap()
		binary.NativeEndian.PutUint16(s.raw[0:2], afInet)
		binary.BigEndian.PutUint16(s.raw[2:4], ap.Port())
		v4 := a.As4()
		copy(s.raw[4:8], v4[:])
		s.len = 16
		return s
	}
	binary.NativeEndian.PutUint16(s.raw[0:2], afInet6)
	binary.BigEndian.PutUint16(s.raw[2:4], ap.Port())
	v6 := a.As16()
	copy(s.raw[8:24], v6[:])
	s.len = 28
	return s
}

// decodeSockaddr reads a kernel sockaddr; v4-mapped v6 addresses come back
// as plain IPv4 so that one peer has one key whatever the socket family.
func decodeSockaddr(b []byte) (netip.AddrPort, bool) {
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
