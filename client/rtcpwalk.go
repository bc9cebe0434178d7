package client

import (
	"encoding/binary"

	"github.com/pion/rtcp"
)

// RTPWriter sends RTP packets: a Conn or a Session.
type RTPWriter interface {
	WriteRTP(pkt []byte) error
}

// RTCPWriter sends RTCP packets as one compound datagram: a Conn or a
// Session.
type RTCPWriter interface {
	WriteRTCP(pkts ...rtcp.Packet) error
}

var (
	_ RTPWriter  = (*Conn)(nil)
	_ RTPWriter  = (*Session)(nil)
	_ RTCPWriter = (*Conn)(nil)
	_ RTCPWriter = (*Session)(nil)
)

// forEachRTCP calls fn for every packet of the RTCP datagram b (one packet
// or a compound one) that pion/rtcp decodes. Packets are decoded one by one,
// so a broken or unknown packet costs only itself; it returns how many were
// skipped. The walk stops where the framing breaks (a length past the end).
// RTCP is rare next to RTP, so decoding allocates.
func forEachRTCP(b []byte, fn func(rtcp.Packet)) (bad int) {
	for off := 0; off < len(b); {
		rest := b[off:]
		if len(rest) < 4 || rest[0]>>6 != 2 {
			return bad + 1
		}
		size := (int(binary.BigEndian.Uint16(rest[2:4])) + 1) * 4
		if size > len(rest) {
			return bad + 1
		}
		off += size
		pkts, err := rtcp.Unmarshal(rest[:size])
		if err != nil {
			bad++
			continue
		}
		for _, p := range pkts {
			fn(p)
		}
	}
	return bad
}
