package protocol

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"slices"
)

// Trunk frames carry media between the forwarders of one call, on a separate
// internal UDP socket: one frame is one media datagram (RTP or RTCP, opaque,
// byte-exact) of one call, sent once to each remote forwarder that serves
// participants of that call.
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|  version = 1  |                  reserved (0)                 |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                      call id (16 bytes)                       |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|               sender participant id (16 bytes)                |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                origin forwarder tag (8 bytes)                 |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|            payload: the media datagram (1 or more bytes)      :
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                        tag (16 bytes)                         |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// tag = HMAC-SHA256(trunk subkey, every byte before the tag)[:16]. The
// origin is ForwarderTag of the sending forwarder's id. Frames carry no
// sequence number and no replay protection: the media inside is SRTP
// protected end to end, and the receiving devices' SRTP replay windows
// discard replayed packets.
const (
	// TrunkHeaderLen is the length of the header before the payload.
	TrunkHeaderLen = 44
	// TrunkTagLen is the length of the authentication tag after the payload.
	TrunkTagLen = 16
	// TrunkOverhead is what a frame adds to its payload.
	TrunkOverhead = TrunkHeaderLen + TrunkTagLen

	trunkVersion = 1
)

// TrunkHeader is what a trunk frame says about its payload.
type TrunkHeader struct {
	Call   ID     // the call the datagram belongs to
	Sender ID     // the participant who sent it
	Origin uint64 // ForwarderTag of the forwarder that received it from the sender
}

// TrunkCodec seals and opens trunk frames with one cluster key. It is not
// safe for concurrent use: give each goroutine its own. Seal and Open
// allocate nothing.
type TrunkCodec struct {
	mac hash.Hash // HMAC-SHA256 keyed with the trunk subkey, created once
	sum [sha256.Size]byte
}

// NewTrunkCodec returns a codec for frames authenticated with k's trunk
// subkey.
func NewTrunkCodec(k ClusterKey) *TrunkCodec {
	sub := k.trunkKey()
	c := &TrunkCodec{mac: hmac.New(sha256.New, sub[:])}
	c.mac.Reset() // the first Reset saves the keyed state; later ones only restore it
	return c
}

// Seal appends the frame for payload to dst and returns it. It allocates
// nothing when cap(dst)-len(dst) >= len(payload)+TrunkOverhead.
//
// The payload may already sit where the frame puts it, at
// dst[len(dst)+TrunkHeaderLen:], so a reader that receives a datagram into
// buf[TrunkHeaderLen:] seals it in place with Seal(buf[:0], h,
// buf[TrunkHeaderLen:TrunkHeaderLen+n]) without copying it. Any other
// overlap of payload and dst's spare capacity garbles the frame. An empty
// payload makes a frame that Open rejects.
func (c *TrunkCodec) Seal(dst []byte, h *TrunkHeader, payload []byte) []byte {
	start := len(dst)
	dst = slices.Grow(dst, TrunkOverhead+len(payload))
	dst = append(dst, trunkVersion, 0, 0, 0)
	dst = append(dst, h.Call[:]...)
	dst = append(dst, h.Sender[:]...)
	dst = binary.BigEndian.AppendUint64(dst, h.Origin)
	dst = append(dst, payload...)
	return append(dst, c.tag(dst[start:])...)
}

// tag returns the first TrunkTagLen bytes of the MAC of b, in c.sum.
func (c *TrunkCodec) tag(b []byte) []byte {
	c.mac.Reset()
	c.mac.Write(b)
	return c.mac.Sum(c.sum[:0])[:TrunkTagLen]
}

// Open checks a frame's version, length and tag (in constant time) and, if
// all are good, fills h and returns the payload, which aliases frame (its
// capacity ends where the tag begins). On error h is untouched. The errors
// are ErrTrunkTruncated, ErrTrunkVersion and ErrTrunkAuth themselves,
// without context, so that rejecting a frame allocates nothing either.
func (c *TrunkCodec) Open(frame []byte, h *TrunkHeader) (payload []byte, err error) {
	if len(frame) == 0 {
		return nil, ErrTrunkTruncated
	}
	if frame[0] != trunkVersion {
		return nil, ErrTrunkVersion
	}
	if len(frame) <= TrunkOverhead {
		return nil, ErrTrunkTruncated
	}
	end := len(frame) - TrunkTagLen
	if !hmac.Equal(c.tag(frame[:end]), frame[end:]) {
		return nil, ErrTrunkAuth
	}
	copy(h.Call[:], frame[4:20])
	copy(h.Sender[:], frame[20:36])
	h.Origin = binary.BigEndian.Uint64(frame[36:TrunkHeaderLen])
	return frame[TrunkHeaderLen:end:end], nil
}
