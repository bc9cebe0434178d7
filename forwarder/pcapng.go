package forwarder

import (
	"encoding/binary"
	"net/netip"
)

// pcapng (draft-ietf-opsawg-pcapng): little-endian blocks, each
// type | total length | body | total length, padded to 4 bytes.
const (
	pcapngSHB     = 0x0A0D0D0A
	pcapngIDB     = 0x00000001
	pcapngEPB     = 0x00000006
	pcapngMagic   = 0x1A2B3C4D
	linktypeRaw   = 101 // LINKTYPE_RAW: each packet starts with an IPv4 or IPv6 header
	pcapngSnapLen = 0   // no limit declared: each block says what it kept
)

// pcapngHeader appends a Section Header Block and one Interface
// Description Block (raw IP, nanosecond timestamps).
func pcapngHeader(dst []byte) []byte {
	le := binary.LittleEndian
	dst = le.AppendUint32(dst, pcapngSHB)
	dst = le.AppendUint32(dst, 28)
	dst = le.AppendUint32(dst, pcapngMagic)
	dst = le.AppendUint16(dst, 1) // version 1.0
	dst = le.AppendUint16(dst, 0)
	dst = le.AppendUint64(dst, ^uint64(0)) // section length unknown
	dst = le.AppendUint32(dst, 28)

	// IDB with option if_tsresol = 9 (nanoseconds), then opt_endofopt.
	dst = le.AppendUint32(dst, pcapngIDB)
	dst = le.AppendUint32(dst, 32)
	dst = le.AppendUint16(dst, linktypeRaw)
	dst = le.AppendUint16(dst, 0)
	dst = le.AppendUint32(dst, pcapngSnapLen)
	dst = le.AppendUint16(dst, 9) // if_tsresol
	dst = le.AppendUint16(dst, 1)
	dst = append(dst, 9, 0, 0, 0)
	dst = le.AppendUint32(dst, 0) // opt_endofopt
	dst = le.AppendUint32(dst, 32)
	return dst
}

// appendEPB appends one capture record (capture.go's layout) as an
// Enhanced Packet Block: an IP and UDP header built from the record's
// addresses and the datagram's original size, then the kept bytes.
func (cp *capture) appendEPB(dst, rec []byte) []byte {
	le := binary.LittleEndian
	at := binary.BigEndian.Uint64(rec)
	out := rec[8] == 1
	peer := netip.AddrPortFrom(netip.AddrFrom16([16]byte(rec[9:25])).Unmap(), binary.BigEndian.Uint16(rec[25:27]))
	orig := int(binary.BigEndian.Uint16(rec[27:29]))
	kept := rec[captureRecFixed:]
	src, dst2 := peer, cp.self
	if out {
		src, dst2 = cp.self, peer
	}
	ip := ipUDPHeader(src, dst2, orig)
	capLen := len(ip) + len(kept)
	origLen := len(ip) + orig
	pad := (4 - capLen%4) % 4
	total := 32 + capLen + pad
	dst = le.AppendUint32(dst, pcapngEPB)
	dst = le.AppendUint32(dst, uint32(total))
	dst = le.AppendUint32(dst, 0) // interface 0
	dst = le.AppendUint32(dst, uint32(at>>32))
	dst = le.AppendUint32(dst, uint32(at))
	dst = le.AppendUint32(dst, uint32(capLen))
	dst = le.AppendUint32(dst, uint32(origLen))
	dst = append(dst, ip...)
	dst = append(dst, kept...)
	dst = append(dst, make([]byte, pad)...)
	return le.AppendUint32(dst, uint32(total))
}

// ipUDPHeader is an IPv4 (both addresses IPv4) or IPv6 header and a UDP
// header for a datagram of n bytes from src to dst. IPv4 carries its
// header checksum; the UDP checksum cannot be computed over bytes not
// kept: 0 says "none" for IPv4, and for IPv6 it is left 0 too (Wireshark
// does not check UDP checksums unless told to).
func ipUDPHeader(src, dst netip.AddrPort, n int) []byte {
	be := binary.BigEndian
	var h []byte
	if src.Addr().Is4() && dst.Addr().Is4() {
		h = make([]byte, 20, 28)
		h[0] = 0x45
		be.PutUint16(h[2:], uint16(min(20+8+n, 0xFFFF)))
		h[8] = 64 // TTL
		h[9] = 17 // UDP
		s, d := src.Addr().As4(), dst.Addr().As4()
		copy(h[12:], s[:])
		copy(h[16:], d[:])
		be.PutUint16(h[10:], ipv4Checksum(h))
	} else {
		h = make([]byte, 40, 48)
		h[0] = 0x60
		be.PutUint16(h[4:], uint16(min(8+n, 0xFFFF)))
		h[6] = 17
		h[7] = 64
		s, d := src.Addr().As16(), dst.Addr().As16()
		copy(h[8:], s[:])
		copy(h[24:], d[:])
	}
	h = be.AppendUint16(h, src.Port())
	h = be.AppendUint16(h, dst.Port())
	h = be.AppendUint16(h, uint16(min(8+n, 0xFFFF)))
	return be.AppendUint16(h, 0)
}

func ipv4Checksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(h[i])<<8 | uint32(h[i+1])
	}
	for sum > 0xFFFF {
		sum = sum>>16 + sum&0xFFFF
	}
	return ^uint16(sum)
}
