package protocol

import "fmt"

// RelayProbeSSRC is the SSRC of the relay's padding probes. No device may
// send with it (a device's SSRCs are random and non-zero by convention of
// this protocol); a device that receives RTP with SSRC 0 feeds it to its
// downlink estimator and discards it.
const RelayProbeSSRC uint32 = 0

// RelayProbePayloadType is the payload type of the relay's padding probes.
const RelayProbePayloadType uint8 = 127

// AppendRelayProbe appends one probe of size bytes (at least 32, at most
// 1200) to dst: RTP with SSRC RelayProbeSSRC, payload type 127, the
// abs-send-time element absSendTime under id absID, and zero bytes after
// the header. README.md section 4, "Relay probes".
func AppendRelayProbe(dst []byte, seq uint16, absSendTime uint32, absID uint8, size int) ([]byte, error) {
	if size < 32 || size > 1200 {
		return dst, fmt.Errorf("%w: probe of %d bytes, want 32..1200", ErrRTPShortBuffer, size)
	}
	f := RTPHeaderFields{PayloadType: RelayProbePayloadType, SequenceNumber: seq, SSRC: RelayProbeSSRC}
	ab := AbsSendTimeBytes(absSendTime)
	f.Extensions[0] = RTPExtension{ID: absID, Data: ab[:]}
	start := len(dst)
	dst = append(dst, make([]byte, size)...)
	n, err := f.MarshalTo(dst[start:])
	if err != nil {
		return dst[:start], err
	}
	_ = n // the rest is already zero
	return dst, nil
}
