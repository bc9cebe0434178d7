package protocol

import "errors"

// Sentinel errors of the media path: demux, the RTP header view and the
// relay's RTCP APP messages. Functions that return them wrap them with
// context; callers test them with errors.Is.
var (
	// ErrRTPTooShort: a datagram is shorter than the RTP header it declares
	// (fixed header, CSRC list or header extension).
	ErrRTPTooShort = errors.New("protocol: rtp packet too short")
	// ErrRTPVersion: the RTP version field is not 2.
	ErrRTPVersion = errors.New("protocol: rtp version is not 2")
	// ErrRTPPadding: the P bit is set but the padding count is zero or
	// larger than the payload.
	ErrRTPPadding = errors.New("protocol: invalid rtp padding")
	// ErrRTPExtension: an RFC 8285 header extension element runs past the
	// end of the extension block.
	ErrRTPExtension = errors.New("protocol: malformed rtp header extension")
	// ErrRTPExtensionID: an extension element to write has an id outside
	// 1..14 or repeats an id.
	ErrRTPExtensionID = errors.New("protocol: bad rtp header extension id")
	// ErrRTPExtensionSize: an extension element to write has no data or more
	// than 16 bytes.
	ErrRTPExtensionSize = errors.New("protocol: bad rtp header extension size")
	// ErrRTPPayloadType: a payload type to write does not fit in 7 bits.
	ErrRTPPayloadType = errors.New("protocol: rtp payload type out of range")
	// ErrRTPShortBuffer: the destination buffer cannot hold the header.
	ErrRTPShortBuffer = errors.New("protocol: buffer too small for rtp header")
	// ErrRTPVideoFrame: a video frame extension to write has a layer count
	// outside 1..3 or a layer index not below it.
	ErrRTPVideoFrame = errors.New("protocol: invalid video frame extension")

	// ErrRTCPMalformed: an RTCP datagram is not a well-formed packet or
	// compound packet: empty, bad version, not an RTCP packet type, a
	// length past the end, bad padding, or a packet too short for what its
	// type and count declare (report blocks, feedback FCI).
	ErrRTCPMalformed = errors.New("protocol: malformed rtcp compound packet")

	// ErrRelayAppMalformed: the datagram is not a well-formed RTCP packet
	// or compound packet (bad version, length past the end).
	ErrRelayAppMalformed = errors.New("protocol: malformed rtcp packet")
	// ErrRelayAppNotFound: a well-formed RTCP datagram holds no CRLY APP
	// packet.
	ErrRelayAppNotFound = errors.New("protocol: no relay app packet")
	// ErrRelayAppSubType: a CRLY APP packet has a subtype this version does
	// not know.
	ErrRelayAppSubType = errors.New("protocol: unknown relay message subtype")
	// ErrRelayAppTruncated: a relay message body is shorter than its format.
	ErrRelayAppTruncated = errors.New("protocol: relay message truncated")
	// ErrRelayAppOversized: a relay message body is longer than its format.
	ErrRelayAppOversized = errors.New("protocol: relay message too long")
	// ErrRelayAppInvalid: a relay message field holds a value its format
	// forbids (out of range, inconsistent, repeated).
	ErrRelayAppInvalid = errors.New("protocol: invalid relay message field")
)
