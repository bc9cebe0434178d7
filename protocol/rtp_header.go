package protocol

import (
	"encoding/binary"
	"fmt"
)

// RTP header constants (RFC 3550 5.1, RFC 8285, RFC 6464).
const (
	// RTPExtProfileOneByte is the "defined by profile" value of an RFC 8285
	// one-byte header extension block (4.2).
	RTPExtProfileOneByte uint16 = 0xBEDE
	// RTPExtProfileTwoByte is the "defined by profile" value of an RFC 8285
	// two-byte header extension block (4.3); its low 4 bits ("appbits") are
	// application data, so 0x1000..0x100F all mean two-byte elements.
	RTPExtProfileTwoByte uint16 = 0x1000

	// DefaultAudioLevelExtensionID is the RFC 8285 id of the RFC 6464
	// audio-level extension when signaling does not negotiate another.
	DefaultAudioLevelExtensionID uint8 = 1

	rtpFixedLen     = 12
	rtpVersion      = 2
	rtpOneByteStop  = 15     // RFC 8285 4.2: id 15 ends the walk
	rtpTwoByteMask  = 0xFFF0 // RFC 8285 4.3: 0x100 followed by 4 appbits
	rtpAudioVoice   = 0x80   // RFC 6464 3: V flag
	rtpAudioLevelMx = 0x7F   // RFC 6464 3: level, 0..127 -dBov
)

// Parse errors are wrapped once, here, so that rejecting a malformed packet
// on the forwarder's hot path costs no allocation.
var (
	errRTPShortFixed  = fmt.Errorf("%w: fixed header needs %d bytes", ErrRTPTooShort, rtpFixedLen)
	errRTPShortCSRC   = fmt.Errorf("%w: csrc list past the end", ErrRTPTooShort)
	errRTPShortExtHdr = fmt.Errorf("%w: extension header past the end", ErrRTPTooShort)
	errRTPShortExt    = fmt.Errorf("%w: extension block past the end", ErrRTPTooShort)
	errRTPNoPadding   = fmt.Errorf("%w: P bit set but no byte after the header", ErrRTPPadding)
	errRTPZeroPadding = fmt.Errorf("%w: padding count is zero", ErrRTPPadding)
	errRTPBigPadding  = fmt.Errorf("%w: padding count exceeds the payload", ErrRTPPadding)
	errRTPOneByteElem = fmt.Errorf("%w: one-byte element past the end of the block", ErrRTPExtension)
	errRTPTwoByteLen  = fmt.Errorf("%w: two-byte element without its length byte", ErrRTPExtension)
	errRTPTwoByteElem = fmt.Errorf("%w: two-byte element past the end of the block", ErrRTPExtension)
)

// RTPHeader is a zero-copy view of an RTP packet's header (RFC 3550 5.1)
// with its RFC 8285 header extension. Parse fills a caller-owned RTPHeader
// and keeps a reference to the parsed bytes: Payload and ExtensionByID
// return sub-slices of them, valid only while the caller does not reuse the
// buffer. An RTPHeader is meant to be reused from packet to packet; nothing
// in it allocates.
//
// The forwarder reads the header but never rewrites it: packets are relayed
// byte-exact.
type RTPHeader struct {
	Version        uint8 // always 2 after a successful Parse
	Padding        bool
	Extension      bool
	Marker         bool
	CSRCCount      uint8
	PayloadType    uint8
	SequenceNumber uint16
	Timestamp      uint32
	SSRC           uint32

	// HeaderLen is the length of fixed header, CSRC list and extension
	// block together: the payload starts at this offset.
	HeaderLen int
	// PaddingLen is the count of padding bytes at the end of the packet,
	// the count byte included (0 when Padding is false).
	PaddingLen int
	// ExtProfile is the 16-bit "defined by profile" value of the
	// extension block (0 when Extension is false).
	ExtProfile uint16

	extOff, extLen int // the extension block's elements, after its 4-byte header
	buf            []byte
}

// Parse reads the RTP packet b into h, overwriting all of h, and keeps a
// reference to b. It checks that the version is 2, that the CSRC list and the
// header extension fit in b, that RFC 8285 extension elements do not run past
// their block, and that the padding count is 1..len(payload with padding).
// The errors it returns wrap ErrRTPTooShort, ErrRTPVersion, ErrRTPPadding or
// ErrRTPExtension, and leave h the zero value. Parse never allocates, not
// even on error.
//
// Parse accepts exactly the packets github.com/pion/rtp's Packet.Unmarshal
// accepts, except that it also requires version 2, and it reads two-byte
// extension elements under every profile value 0x1000..0x100F.
func (h *RTPHeader) Parse(b []byte) error {
	if err := h.parse(b); err != nil {
		*h = RTPHeader{}
		return err
	}
	h.buf = b
	return nil
}

func (h *RTPHeader) parse(b []byte) error {
	*h = RTPHeader{}
	if len(b) < rtpFixedLen {
		return errRTPShortFixed
	}
	h.Version = b[0] >> 6
	if h.Version != rtpVersion {
		return ErrRTPVersion
	}
	h.Padding = b[0]&0x20 != 0
	h.Extension = b[0]&0x10 != 0
	h.CSRCCount = b[0] & 0x0F
	h.Marker = b[1]&0x80 != 0
	h.PayloadType = b[1] & 0x7F
	h.SequenceNumber = binary.BigEndian.Uint16(b[2:4])
	h.Timestamp = binary.BigEndian.Uint32(b[4:8])
	h.SSRC = binary.BigEndian.Uint32(b[8:12])

	n := rtpFixedLen + 4*int(h.CSRCCount)
	if len(b) < n {
		return errRTPShortCSRC
	}
	if h.Extension {
		if len(b) < n+4 {
			return errRTPShortExtHdr
		}
		h.ExtProfile = binary.BigEndian.Uint16(b[n : n+2])
		h.extLen = 4 * int(binary.BigEndian.Uint16(b[n+2:n+4]))
		h.extOff = n + 4
		n = h.extOff + h.extLen
		if len(b) < n {
			return errRTPShortExt
		}
		// Walk every element once, so that ExtensionByID may trust the block.
		if _, _, _, err := rtpFindExtension(b[h.extOff:n], h.ExtProfile, 0); err != nil {
			return err
		}
	}
	h.HeaderLen = n

	if h.Padding {
		if len(b) <= n {
			return errRTPNoPadding
		}
		h.PaddingLen = int(b[len(b)-1])
		if h.PaddingLen == 0 {
			return errRTPZeroPadding
		}
		if n+h.PaddingLen > len(b) {
			return errRTPBigPadding
		}
	}
	return nil
}

// CSRC returns the i-th contributing source, 0 <= i < CSRCCount. It panics
// when i is out of range, like a slice index.
func (h *RTPHeader) CSRC(i int) uint32 {
	if i < 0 || i >= int(h.CSRCCount) {
		panic(fmt.Sprintf("protocol: csrc index %d out of range [0,%d)", i, h.CSRCCount))
	}
	off := rtpFixedLen + 4*i
	return binary.BigEndian.Uint32(h.buf[off : off+4])
}

// Payload returns the payload of the parsed packet, padding excluded: a
// sub-slice of the bytes given to Parse. For callrelay media the payload is
// end-to-end encrypted and opaque.
func (h *RTPHeader) Payload() []byte {
	if h.buf == nil {
		return nil
	}
	return h.buf[h.HeaderLen : len(h.buf)-h.PaddingLen]
}

// ExtensionByID returns the data of the first RFC 8285 header extension
// element with the given id: a sub-slice of the bytes given to Parse, so it
// does not allocate. It reports false when the packet has no extension
// block, when the block is neither one-byte (profile 0xBEDE) nor two-byte
// (0x1000..0x100F), or when no element carries id. Id 0 (padding) is never
// found, nor, in one-byte blocks, id 15 or anything after it.
func (h *RTPHeader) ExtensionByID(id uint8) ([]byte, bool) {
	if !h.Extension || id == 0 {
		return nil, false
	}
	block := h.buf[h.extOff : h.extOff+h.extLen]
	start, end, ok, err := rtpFindExtension(block, h.ExtProfile, id)
	if err != nil || !ok {
		return nil, false
	}
	return block[start:end:end], true
}

// AudioLevel reads the RFC 6464 client-to-mixer audio level carried in the
// extension element with the given id (negotiated out of band; default
// DefaultAudioLevelExtensionID): voice is the V flag, level is 0..127 in
// -dBov (0 loudest, 127 silence). ok is false when the element is absent or
// empty.
func (h *RTPHeader) AudioLevel(id uint8) (voice bool, level uint8, ok bool) {
	d, found := h.ExtensionByID(id)
	if !found || len(d) == 0 {
		return false, 0, false
	}
	return d[0]&rtpAudioVoice != 0, d[0] & rtpAudioLevelMx, true
}

// AudioLevelByte encodes an RFC 6464 audio level element's data byte: the V
// flag and the level in -dBov, clamped to 127.
func AudioLevelByte(voice bool, level uint8) byte {
	b := min(level, rtpAudioLevelMx)
	if voice {
		b |= rtpAudioVoice
	}
	return b
}

// rtpFindExtension walks the RFC 8285 elements of block (the bytes after
// the 4-byte extension header) and returns the bounds of the first element
// with the given id. With id 0 it matches nothing and so validates the whole
// block. Blocks of other profiles are opaque: nothing found, no error.
func rtpFindExtension(block []byte, profile uint16, id uint8) (start, end int, found bool, err error) {
	switch {
	case profile == RTPExtProfileOneByte:
		return rtpFindOneByte(block, id)
	case profile&rtpTwoByteMask == RTPExtProfileTwoByte:
		return rtpFindTwoByte(block, id)
	default:
		return 0, 0, false, nil
	}
}

// rtpFindOneByte walks one-byte elements (RFC 8285 4.2):
//
//	 0 1 2 3 4 5 6 7
//	+-+-+-+-+-+-+-+-+
//	|  ID   |  len  |  data: len+1 bytes
//	+-+-+-+-+-+-+-+-+
//
// A zero byte is padding; id 15 (and, as in pion/rtp, id 0 with a non-zero
// length) ends the walk.
func rtpFindOneByte(block []byte, id uint8) (start, end int, found bool, err error) {
	for i := 0; i < len(block); {
		c := block[i]
		if c == 0 {
			i++
			continue
		}
		eid, size := c>>4, int(c&0x0F)+1
		if eid == rtpOneByteStop || eid == 0 {
			return 0, 0, false, nil
		}
		i++
		if i+size > len(block) {
			return 0, 0, false, errRTPOneByteElem
		}
		if eid == id {
			return i, i + size, true, nil
		}
		i += size
	}
	return 0, 0, false, nil
}

// rtpFindTwoByte walks two-byte elements (RFC 8285 4.3):
//
//	 0                   1
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|       ID      |     length    |  data: length bytes (may be 0)
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// A zero byte where an id is expected is padding.
func rtpFindTwoByte(block []byte, id uint8) (start, end int, found bool, err error) {
	for i := 0; i < len(block); {
		eid := block[i]
		i++
		if eid == 0 {
			continue
		}
		if i >= len(block) {
			return 0, 0, false, errRTPTwoByteLen
		}
		size := int(block[i])
		i++
		if i+size > len(block) {
			return 0, 0, false, errRTPTwoByteElem
		}
		if eid == id {
			return i, i + size, true, nil
		}
		i += size
	}
	return 0, 0, false, nil
}
