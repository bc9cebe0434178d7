package protocol

import "encoding/binary"

// PacketKind is what a datagram on a forwarder's UDP port carries, decided
// from its first bytes alone (RFC 7983 section 7, RFC 5761 section 4).
type PacketKind uint8

// Kinds of datagram. KindUnknown is dropped and counted by the forwarder.
const (
	KindUnknown PacketKind = iota
	KindSTUN
	KindRTP
	KindRTCP
)

// String returns "unknown", "stun", "rtp" or "rtcp".
func (k PacketKind) String() string {
	switch k {
	case KindSTUN:
		return "stun"
	case KindRTP:
		return "rtp"
	case KindRTCP:
		return "rtcp"
	default:
		return "unknown"
	}
}

const (
	demuxSTUNMinLen   = 20         // STUN message header (RFC 8489 5)
	demuxSTUNCookie   = 0x2112A442 // magic cookie at bytes 4..8
	demuxRTPMinLen    = 12         // RTP fixed header (RFC 3550 5.1)
	demuxRTCPMinLen   = 8          // RTCP common header + sender SSRC
	demuxRTCPTypeLow  = 192        // RFC 5761 4: RTCP packet types 192..223
	demuxRTCPTypeHigh = 223
)

// Classify tells STUN, RTP and RTCP apart by the first bytes of b:
//
//   - first byte 0..3: STUN, if b holds at least the 20-byte STUN header and
//     the magic cookie 0x2112A442 at bytes 4..8;
//   - first byte 128..191 (RTP version 2): RTCP if the second byte is
//     192..223 and b holds at least 8 bytes, else RTP if b holds at least
//     the 12-byte fixed header;
//   - anything else, or a datagram too short for its kind: KindUnknown.
//
// Classify looks at no more than 8 bytes, never allocates and never panics.
// It does not validate the rest of the packet; the parser for the kind does.
func Classify(b []byte) PacketKind {
	if len(b) == 0 {
		return KindUnknown
	}
	switch first := b[0]; {
	case first <= 3:
		if len(b) >= demuxSTUNMinLen && binary.BigEndian.Uint32(b[4:8]) == demuxSTUNCookie {
			return KindSTUN
		}
	case first >= 128 && first <= 191:
		if len(b) < 2 {
			return KindUnknown
		}
		if b[1] >= demuxRTCPTypeLow && b[1] <= demuxRTCPTypeHigh {
			if len(b) >= demuxRTCPMinLen {
				return KindRTCP
			}
			return KindUnknown
		}
		if len(b) >= demuxRTPMinLen {
			return KindRTP
		}
	}
	return KindUnknown
}
