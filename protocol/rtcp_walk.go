package protocol

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
)

// RTCP packet types (RFC 3550 12.1, RFC 4585 6.1) and feedback formats the
// walker reads.
const (
	RTCPTypeSR    uint8 = 200 // sender report, RFC 3550 6.4.1
	RTCPTypeRR    uint8 = 201 // receiver report, RFC 3550 6.4.2
	RTCPTypeSDES  uint8 = 202 // source description, RFC 3550 6.5
	RTCPTypeBYE   uint8 = 203 // goodbye, RFC 3550 6.6
	RTCPTypeAPP   uint8 = 204 // application-defined, RFC 3550 6.7
	RTCPTypeRTPFB uint8 = 205 // transport-layer feedback, RFC 4585 6.2
	RTCPTypePSFB  uint8 = 206 // payload-specific feedback, RFC 4585 6.3

	RTCPFormatNACK uint8 = 1  // RTPFB: generic NACK, RFC 4585 6.2.1
	RTCPFormatPLI  uint8 = 1  // PSFB: picture loss indication, RFC 4585 6.3.1
	RTCPFormatFIR  uint8 = 4  // PSFB: full intra request, RFC 5104 4.3.1
	RTCPFormatAFB  uint8 = 15 // PSFB: application layer feedback (REMB), RFC 4585 6.4
)

const (
	rtcpHeaderLen      = 4
	rtcpSRFixedLen     = 28 // header, SSRC, NTP (8), RTP timestamp, packet and octet counts
	rtcpRRFixedLen     = 8  // header, SSRC
	rtcpReportBlockLen = 24 // RFC 3550 6.4.1
	rtcpAPPFixedLen    = 12 // header, SSRC, name
	rtcpFBFixedLen     = 12 // header, sender SSRC, media SSRC (RFC 4585 6.1)
	rtcpNackEntryLen   = 4  // PID, BLP
	rtcpFIREntryLen    = 8  // SSRC, command sequence number, 3 reserved bytes (RFC 5104 4.3.1.1)
	rtcpREMBFixedLen   = 20 // feedback header, "REMB", num SSRC, exponent and mantissa
	rtcpREMBID         = "REMB"
)

// The walker's errors, wrapped once so that rejecting a datagram on the
// forwarder's hot path allocates nothing.
var (
	errRTCPEmpty         = fmt.Errorf("%w: empty datagram", ErrRTCPMalformed)
	errRTCPShortHeader   = fmt.Errorf("%w: fewer than 4 bytes left for a header", ErrRTCPMalformed)
	errRTCPVersion       = fmt.Errorf("%w: version is not 2", ErrRTCPMalformed)
	errRTCPType          = fmt.Errorf("%w: packet type outside 192..223", ErrRTCPMalformed)
	errRTCPLength        = fmt.Errorf("%w: length past the end of the datagram", ErrRTCPMalformed)
	errRTCPZeroPadding   = fmt.Errorf("%w: padding count is zero", ErrRTCPMalformed)
	errRTCPBigPadding    = fmt.Errorf("%w: padding count exceeds the packet", ErrRTCPMalformed)
	errRTCPReports       = fmt.Errorf("%w: report blocks past the end of the packet", ErrRTCPMalformed)
	errRTCPShortAPP      = fmt.Errorf("%w: APP packet without SSRC and name", ErrRTCPMalformed)
	errRTCPShortFeedback = fmt.Errorf("%w: feedback packet without sender and media SSRC", ErrRTCPMalformed)
	errRTCPNackFCI       = fmt.Errorf("%w: NACK FCI empty or not whole entries", ErrRTCPMalformed)
	errRTCPFIRFCI        = fmt.Errorf("%w: FIR FCI empty or not whole entries", ErrRTCPMalformed)
	errRTCPREMB          = fmt.Errorf("%w: REMB length disagrees with its SSRC count", ErrRTCPMalformed)
)

// RTCPWalker reads an RTCP datagram, a compound packet (RFC 3550 6.1) or a
// single reduced-size packet (RFC 5506), one packet at a time, without
// copying or allocating: the forwarder's hot path reads feedback with it,
// while clients and tests build packets with github.com/pion/rtcp. A
// walker is meant to be reused:
//
//	w.Reset(datagram)
//	for w.Next() {
//		switch w.Type() { ... }
//	}
//	if err := w.Err(); err != nil { ... }
//
// Next validates each packet before the accessors read it: version 2, a
// packet type in 192..223, the length within the datagram, the padding
// count (when P is set: 1..length-4, RFC 3550 6.4.1), and the parts its
// type and count declare: an SR's or RR's report blocks, an APP packet's
// SSRC and name, a feedback packet's two SSRCs (RFC 4585 6.1), a NACK's and
// a FIR's FCI (one or more whole entries) and a REMB's SSRC list. Padding is
// excluded from everything the accessors read except Packet. Other packet
// types (SDES, BYE, XR, ...) are checked only for the common header.
//
// The accessors describe the packet of the last successful Next; before
// the first and after the last they return zero values. The slices they
// return alias the datagram.
//
// Compared with github.com/pion/rtcp's Unmarshal, the walker is stricter in
// four ways: it rejects packet types outside 192..223 (pion reads them as
// raw packets), a padding count of 0 or one larger than the packet (pion
// mostly ignores padding), feedback packets of any format shorter than 12
// bytes, and padding that cuts into report blocks or FCI (pion reads
// padding bytes as report blocks and NACK entries). It is more lenient in
// others: it reads only the packets above, so an SDES or BYE it passes may
// be one pion rejects, it accepts a REMB whose media SSRC is not 0 and a
// padded REMB, and PSFB format 15 with an identifier other than REMB
// (which pion refuses as a malformed REMB).
type RTCPWalker struct {
	buf  []byte
	next int    // offset of the packet after the current one
	pkt  []byte // the current packet, padding included
	end  int    // the current packet's length without padding
	n    int    // packets read so far
	err  error
}

// Reset starts a walk over b, forgetting the previous one. It keeps a
// reference to b.
func (w *RTCPWalker) Reset(b []byte) {
	*w = RTCPWalker{buf: b}
}

// Next advances to the next packet of the datagram. It returns false at
// the end of the datagram and on a malformed packet; Err then tells the two
// apart. Packets read before a malformed one were well-formed, but the
// datagram as a whole is not: callers that must treat it as a unit check
// Err after the loop. An empty datagram is malformed.
func (w *RTCPWalker) Next() bool {
	w.pkt, w.end = nil, 0
	if w.err != nil {
		return false
	}
	rest := w.buf[w.next:]
	if len(rest) == 0 {
		if w.n == 0 {
			w.err = errRTCPEmpty
		}
		return false
	}
	size, end, err := rtcpCheckPacket(rest)
	if err != nil {
		w.err = err
		return false
	}
	w.pkt, w.end = rest[:size:size], end
	w.next += size
	w.n++
	return true
}

// rtcpCheckPacket validates the packet at the front of b and returns its
// length with and without padding.
func rtcpCheckPacket(b []byte) (size, end int, err error) {
	if len(b) < rtcpHeaderLen {
		return 0, 0, errRTCPShortHeader
	}
	if b[0]>>6 != rtpVersion {
		return 0, 0, errRTCPVersion
	}
	typ, count := b[1], b[0]&0x1F
	if typ < demuxRTCPTypeLow || typ > demuxRTCPTypeHigh {
		return 0, 0, errRTCPType
	}
	size = (int(binary.BigEndian.Uint16(b[2:4])) + 1) * 4
	if size > len(b) {
		return 0, 0, errRTCPLength
	}
	end = size
	if b[0]&0x20 != 0 {
		pad := int(b[size-1])
		switch {
		case pad == 0:
			return 0, 0, errRTCPZeroPadding
		case pad > size-rtcpHeaderLen:
			return 0, 0, errRTCPBigPadding
		}
		end -= pad
	}
	if err := rtcpCheckBody(b[:end], typ, count); err != nil {
		return 0, 0, err
	}
	return size, end, nil
}

// rtcpCheckBody checks what the packet p (padding removed) declares for
// its type.
func rtcpCheckBody(p []byte, typ, count uint8) error {
	switch typ {
	case RTCPTypeSR:
		if len(p) < rtcpSRFixedLen+rtcpReportBlockLen*int(count) {
			return errRTCPReports
		}
	case RTCPTypeRR:
		if len(p) < rtcpRRFixedLen+rtcpReportBlockLen*int(count) {
			return errRTCPReports
		}
	case RTCPTypeAPP:
		if len(p) < rtcpAPPFixedLen {
			return errRTCPShortAPP
		}
	case RTCPTypeRTPFB, RTCPTypePSFB:
		if len(p) < rtcpFBFixedLen {
			return errRTCPShortFeedback
		}
		fci := len(p) - rtcpFBFixedLen
		switch {
		case typ == RTCPTypeRTPFB && count == RTCPFormatNACK:
			if fci == 0 || fci%rtcpNackEntryLen != 0 {
				return errRTCPNackFCI
			}
		case typ == RTCPTypePSFB && count == RTCPFormatFIR:
			if fci == 0 || fci%rtcpFIREntryLen != 0 {
				return errRTCPFIRFCI
			}
		case typ == RTCPTypePSFB && count == RTCPFormatAFB && rtcpIsREMB(p):
			if len(p) < rtcpREMBFixedLen || len(p) != rtcpREMBFixedLen+4*int(p[16]) {
				return errRTCPREMB
			}
		}
	}
	return nil
}

// rtcpIsREMB reports whether the PSFB packet p carries the REMB identifier
// as the first word of its FCI.
func rtcpIsREMB(p []byte) bool {
	return len(p) >= rtcpFBFixedLen+4 && string(p[rtcpFBFixedLen:rtcpFBFixedLen+4]) == rtcpREMBID
}

// Err returns the reason the walk stopped early, wrapping ErrRTCPMalformed,
// or nil when it reached the end of the datagram (or has not stopped yet).
func (w *RTCPWalker) Err() error { return w.err }

// Type returns the current packet's type (PT): RTCPTypeSR, RTCPTypeRR,
// RTCPTypeAPP, RTCPTypeRTPFB, RTCPTypePSFB, or another in 192..223.
func (w *RTCPWalker) Type() uint8 {
	if w.pkt == nil {
		return 0
	}
	return w.pkt[1]
}

// Count returns the 5-bit field after P: the report count of SR and RR,
// the source count of SDES and BYE, the subtype of APP, the format (FMT) of
// feedback packets.
func (w *RTCPWalker) Count() uint8 {
	if w.pkt == nil {
		return 0
	}
	return w.pkt[0] & 0x1F
}

// Packet returns the whole current packet, header and padding included:
// what a forwarder relays byte-exact.
func (w *RTCPWalker) Packet() []byte { return w.pkt }

// SenderSSRC returns the SSRC in bytes 4..8 of the current packet: the
// sender's for SR, RR, APP and feedback packets, the first chunk's or
// source's for SDES and BYE. It returns 0 when the packet ends before.
func (w *RTCPWalker) SenderSSRC() uint32 {
	if w.end < 8 {
		return 0
	}
	return binary.BigEndian.Uint32(w.pkt[4:8])
}

// MediaSSRC returns the media source SSRC of a feedback packet (RTPFB or
// PSFB, RFC 4585 6.1), and 0 for other packets.
func (w *RTCPWalker) MediaSSRC() uint32 {
	if !w.isFeedback() {
		return 0
	}
	return binary.BigEndian.Uint32(w.pkt[8:12])
}

func (w *RTCPWalker) isFeedback() bool {
	t := w.Type()
	return t == RTCPTypeRTPFB || t == RTCPTypePSFB
}

// NackPairs returns the number of FCI entries of a generic NACK (RTPFB
// format 1, RFC 4585 6.2.1), at least 1, and 0 for any other packet.
func (w *RTCPWalker) NackPairs() int {
	if w.Type() != RTCPTypeRTPFB || w.Count() != RTCPFormatNACK {
		return 0
	}
	return (w.end - rtcpFBFixedLen) / rtcpNackEntryLen
}

// NackPair returns the i-th FCI entry of a generic NACK, 0 <= i <
// NackPairs(): pid, a lost packet's sequence number, and blp, a bitmask of
// the 16 that follow it: bit i (least significant first) set means
// sequence number pid+1+i (modulo 2^16) is lost too. It panics when i is
// out of range, like a slice index.
func (w *RTCPWalker) NackPair(i int) (pid, blp uint16) {
	if i < 0 || i >= w.NackPairs() {
		panic(fmt.Sprintf("protocol: nack pair index %d out of range [0,%d)", i, w.NackPairs()))
	}
	off := rtcpFBFixedLen + rtcpNackEntryLen*i
	return binary.BigEndian.Uint16(w.pkt[off : off+2]), binary.BigEndian.Uint16(w.pkt[off+2 : off+4])
}

// IsPLI reports whether the current packet is a picture loss indication
// (PSFB format 1, RFC 4585 6.3.1).
func (w *RTCPWalker) IsPLI() bool {
	return w.Type() == RTCPTypePSFB && w.Count() == RTCPFormatPLI
}

// FIREntries returns the number of FCI entries of a full intra request
// (PSFB format 4, RFC 5104 4.3.1), at least 1, and 0 for any other packet.
// A FIR names the streams it asks key frames of in these entries; its
// header's media SSRC is 0 (RFC 5104 4.3.1.2) and means nothing.
func (w *RTCPWalker) FIREntries() int {
	if w.Type() != RTCPTypePSFB || w.Count() != RTCPFormatFIR {
		return 0
	}
	return (w.end - rtcpFBFixedLen) / rtcpFIREntryLen
}

// FIREntry returns the i-th FCI entry of a FIR, 0 <= i < FIREntries(): the
// SSRC of the stream a key frame is asked of, and the command sequence
// number (a repeated request keeps it, a new one increments it). It panics
// when i is out of range, like a slice index.
func (w *RTCPWalker) FIREntry(i int) (ssrc uint32, seq uint8) {
	if i < 0 || i >= w.FIREntries() {
		panic(fmt.Sprintf("protocol: FIR entry index %d out of range [0,%d)", i, w.FIREntries()))
	}
	off := rtcpFBFixedLen + rtcpFIREntryLen*i
	return binary.BigEndian.Uint32(w.pkt[off : off+4]), w.pkt[off+4]
}

// IsRelayApp reports whether the current packet is an APP packet named
// CRLY (RelayAppName): one of the relay's instructions, which
// ParseRelayApp decodes.
func (w *RTCPWalker) IsRelayApp() bool {
	return w.Type() == RTCPTypeAPP && string(w.pkt[8:12]) == RelayAppName
}

// REMB decodes a receiver estimated maximum bitrate (PSFB format 15 with
// the identifier "REMB", draft-alvestrand-rmcat-remb-03 2.2): bps is the
// 18-bit mantissa times 2 to the 6-bit exponent, in bits per second, and
// math.MaxUint64 when that does not fit 64 bits. ok is false for any other
// packet. The SSRCs the estimate applies to are not read.
func (w *RTCPWalker) REMB() (bps uint64, ok bool) {
	if w.Type() != RTCPTypePSFB || w.Count() != RTCPFormatAFB || !rtcpIsREMB(w.pkt[:w.end]) {
		return 0, false
	}
	p := w.pkt
	exp := uint(p[17] >> 2)
	mantissa := uint64(p[17]&0x03)<<16 | uint64(p[18])<<8 | uint64(p[19])
	if mantissa != 0 && uint(bits.Len64(mantissa))+exp > 64 {
		return math.MaxUint64, true
	}
	return mantissa << exp, true
}

// ReportBlocks returns the number of report blocks of an SR or RR (its
// count field; Next checked that they fit), and 0 for other packets.
func (w *RTCPWalker) ReportBlocks() int {
	switch w.Type() {
	case RTCPTypeSR, RTCPTypeRR:
		return int(w.Count())
	}
	return 0
}

// ReportBlock returns the i-th report block of an SR or RR (RFC 3550
// 6.4.1), 0 <= i < ReportBlocks(): the reportee's SSRC, the fraction lost
// since the last report (in 1/256), the cumulative number of packets lost
// (the raw 24-bit field: RFC 3550 makes it signed, so 0xFFFFFF is -1),
// the extended highest sequence number received and the interarrival
// jitter in RTP timestamp units. It panics when i is out of range, like a
// slice index.
func (w *RTCPWalker) ReportBlock(i int) (ssrc uint32, fractionLost uint8, totalLost uint32, highestSeq uint32, jitter uint32) {
	n := w.ReportBlocks()
	if i < 0 || i >= n {
		panic(fmt.Sprintf("protocol: report block index %d out of range [0,%d)", i, n))
	}
	off := rtcpRRFixedLen
	if w.Type() == RTCPTypeSR {
		off = rtcpSRFixedLen
	}
	b := w.pkt[off+rtcpReportBlockLen*i : off+rtcpReportBlockLen*(i+1)]
	ssrc = binary.BigEndian.Uint32(b[0:4])
	fractionLost = b[4]
	totalLost = uint32(b[5])<<16 | uint32(b[6])<<8 | uint32(b[7])
	highestSeq = binary.BigEndian.Uint32(b[8:12])
	jitter = binary.BigEndian.Uint32(b[12:16])
	return ssrc, fractionLost, totalLost, highestSeq, jitter
}
