package protocol

import (
	"encoding/binary"
	"fmt"
)

// MaxRTPExtensions is how many header extension elements RTPHeaderFields
// can write.
const MaxRTPExtensions = 4

// RTPExtension is one RFC 8285 one-byte header extension element to write.
// The zero value marks an unused slot.
type RTPExtension struct {
	ID   uint8  // 1..14; 0 = slot unused
	Data []byte // 1..16 bytes, copied into the header
}

// RTPHeaderFields is what a sender writes in front of its (encrypted)
// payload: an RTP version 2 header (RFC 3550 5.1) with no CSRC list, no
// padding bit, and the extension elements in use, if any, as one RFC 8285
// one-byte extension block (profile 0xBEDE). It is the encoding counterpart
// of RTPHeader, for the client library and tests; the forwarder never
// writes RTP headers.
type RTPHeaderFields struct {
	Marker         bool
	PayloadType    uint8 // 0..127
	SequenceNumber uint16
	Timestamp      uint32
	SSRC           uint32
	Extensions     [MaxRTPExtensions]RTPExtension
}

// MarshalSize returns the number of bytes MarshalTo writes for f: 12, plus,
// when an extension slot is used, 4 and the elements rounded up to a
// multiple of 4.
func (f *RTPHeaderFields) MarshalSize() int {
	elems, used := 0, false
	for _, e := range f.Extensions {
		if e.ID != 0 {
			elems += 1 + len(e.Data)
			used = true
		}
	}
	if !used {
		return rtpFixedLen
	}
	return rtpFixedLen + 4 + (elems+3)/4*4
}

// MarshalTo writes the header into dst and returns the number of bytes
// written, MarshalSize(). The payload goes right after it. Extension
// elements are written in slot order, unused slots skipped, and the block is
// zero-padded to a 32-bit boundary. MarshalTo never allocates; its errors
// wrap ErrRTPPayloadType, ErrRTPExtensionID, ErrRTPExtensionSize or
// ErrRTPShortBuffer, and on error dst may hold partial output.
func (f *RTPHeaderFields) MarshalTo(dst []byte) (int, error) {
	if f.PayloadType > 0x7F {
		return 0, ErrRTPPayloadType
	}
	if err := f.checkExtensions(); err != nil {
		return 0, err
	}
	size := f.MarshalSize()
	if len(dst) < size {
		return 0, ErrRTPShortBuffer
	}
	dst[0] = rtpVersion << 6
	dst[1] = f.PayloadType
	if f.Marker {
		dst[1] |= 0x80
	}
	binary.BigEndian.PutUint16(dst[2:4], f.SequenceNumber)
	binary.BigEndian.PutUint32(dst[4:8], f.Timestamp)
	binary.BigEndian.PutUint32(dst[8:12], f.SSRC)
	if size == rtpFixedLen {
		return size, nil
	}
	dst[0] |= 0x10 // X
	binary.BigEndian.PutUint16(dst[12:14], RTPExtProfileOneByte)
	binary.BigEndian.PutUint16(dst[14:16], uint16((size-rtpFixedLen-4)/4)) //nolint:gosec // at most 4*17 bytes
	n := rtpFixedLen + 4
	for _, e := range f.Extensions {
		if e.ID == 0 {
			continue
		}
		dst[n] = e.ID<<4 | uint8(len(e.Data)-1) //nolint:gosec // 1..16 checked
		n++
		n += copy(dst[n:], e.Data)
	}
	clear(dst[n:size])
	return size, nil
}

func (f *RTPHeaderFields) checkExtensions() error {
	var seen uint16
	for i, e := range f.Extensions {
		if e.ID == 0 {
			continue
		}
		if e.ID > 14 || seen&(1<<e.ID) != 0 {
			return fmt.Errorf("%w: slot %d has id %d", ErrRTPExtensionID, i, e.ID)
		}
		seen |= 1 << e.ID
		if len(e.Data) < 1 || len(e.Data) > 16 {
			return fmt.Errorf("%w: slot %d (id %d) has %d bytes", ErrRTPExtensionSize, i, e.ID, len(e.Data))
		}
	}
	return nil
}
