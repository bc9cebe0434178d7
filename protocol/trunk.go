package protocol

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"slices"
	"time"
)

// Trunk frames carry media between the forwarders of one call, on a separate
// internal UDP socket: one frame is one media datagram (RTP or RTCP, opaque,
// byte-exact) of one call, sent once to each remote forwarder that serves
// participants of that call.
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|  version = 2  |    stream     |          reserved (0)         |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                      call id (16 bytes)                       |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|               sender participant id (16 bytes)                |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                origin forwarder tag (8 bytes)                 |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                  sequence (64 bits, unsigned)                 |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|            payload: the media datagram (1 or more bytes)      :
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                        tag (16 bytes)                         |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// tag = HMAC-SHA256(trunk subkey, every byte before the tag)[:16]. The
// origin is ForwarderTag of the sending forwarder's id. Each sending
// goroutine of a forwarder numbers its frames as one stream: (origin,
// stream) names it, and its sequence increases by one with every frame,
// starting at TrunkSeqStart of the process's start, so a restarted sender
// goes on above its previous process. Receivers keep a replay window per
// stream (TrunkReplayWindow) and drop a frame seen before or too old.
const (
	// TrunkHeaderLen is the length of the header before the payload.
	TrunkHeaderLen = 52
	// TrunkTagLen is the length of the authentication tag after the payload.
	TrunkTagLen = 16
	// TrunkOverhead is what a frame adds to its payload.
	TrunkOverhead = TrunkHeaderLen + TrunkTagLen

	trunkVersion = 2
)

// TrunkHeader is what a trunk frame says about its payload.
type TrunkHeader struct {
	Call   ID     // the call the datagram belongs to
	Sender ID     // the participant who sent it
	Origin uint64 // ForwarderTag of the forwarder that received it from the sender
	Stream uint8  // the sending forwarder's numbering stream (one per sending goroutine)
	Seq    uint64 // the frame's number in its stream
}

// TrunkSeqStart is the first sequence number of a stream of a forwarder
// process that started at started: its Unix milliseconds times 2^20. A
// process started later begins above every number an earlier one could
// have sent (that would take 2^20 frames a millisecond), so receivers need
// not learn of restarts to keep their windows. Sequences stay below 2^64
// until the year 2527.
func TrunkSeqStart(started time.Time) uint64 { return uint64(max(started.UnixMilli(), 1)) << 20 }

// TrunkCodec seals and opens trunk frames with one cluster key. It is not
// safe for concurrent use: give each goroutine its own. Seal and Open
// allocate nothing.
type TrunkCodec struct {
	mac hash.Hash // HMAC-SHA256 keyed with the trunk subkey, created once
	sum [sha256.Size]byte

	numbered bool
	stream   uint8
	next     uint64
}

// Number makes c a numbering sender: from now on Seal stamps each frame
// with stream and the next sequence number, starting at first (see
// TrunkSeqStart), and writes both into the header it was given. A codec
// that is not numbering seals the header's own Stream and Seq.
func (c *TrunkCodec) Number(stream uint8, first uint64) {
	c.numbered, c.stream, c.next = true, stream, first
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
	if c.numbered {
		h.Stream, h.Seq = c.stream, c.next
		c.next++
	}
	start := len(dst)
	dst = slices.Grow(dst, TrunkOverhead+len(payload))
	dst = append(dst, trunkVersion, h.Stream, 0, 0)
	dst = append(dst, h.Call[:]...)
	dst = append(dst, h.Sender[:]...)
	dst = binary.BigEndian.AppendUint64(dst, h.Origin)
	dst = binary.BigEndian.AppendUint64(dst, h.Seq)
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
	h.Origin = binary.BigEndian.Uint64(frame[36:44])
	h.Stream = frame[1]
	h.Seq = binary.BigEndian.Uint64(frame[44:TrunkHeaderLen])
	return frame[TrunkHeaderLen:end:end], nil
}
