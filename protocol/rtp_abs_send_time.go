package protocol

import "time"

// DefaultAbsSendTimeExtensionID is the RFC 8285 id of the abs-send-time
// extension (http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time)
// when signaling does not negotiate another.
const DefaultAbsSendTimeExtensionID uint8 = 3

const (
	absSendTimeLen      = 3
	absSendTimeFracBits = 18        // 6.18 fixed point: units of 2^-18 s, about 3.8 µs
	absSendTimeMask     = 1<<24 - 1 // 24 bits on the wire
	absSendTimeHalf     = 1 << 23   // 32 s, half the 64 s cycle
)

// AbsSendTime returns the abs-send-time value of t: seconds in 6.18 fixed
// point, modulo 64 s, truncated to 2^-18 s (about 3.8 µs). These are the
// middle 24 bits of t's 64-bit NTP timestamp (RFC 5905), which equal those
// of its Unix time because the two epochs lie a multiple of 64 s apart.
func AbsSendTime(t time.Time) uint32 {
	frac := (uint64(t.Nanosecond()) << absSendTimeFracBits) / uint64(time.Second) //nolint:gosec // 0..1e9-1
	secs := uint64(t.Unix())                                                      //nolint:gosec // wraps on purpose: only the low 6 bits count
	return uint32((secs<<absSendTimeFracBits | frac) & absSendTimeMask)           //nolint:gosec // masked to 24 bits
}

// AbsSendTimeBytes returns the extension's three data bytes for the 24-bit
// value v (its upper 8 bits are ignored), big-endian, for
// RTPHeaderFields.Extensions.
func AbsSendTimeBytes(v uint32) [absSendTimeLen]byte {
	return [absSendTimeLen]byte{byte(v >> 16), byte(v >> 8), byte(v)}
}

// AbsSendTimeDelta returns a - b for two abs-send-time values, taking the
// 64-second wrap into account: the result lies in (-32 s, 32 s], truncated
// towards zero to the nanosecond. Only the low 24 bits of a and b count.
func AbsSendTimeDelta(a, b uint32) time.Duration {
	d := int64((a - b) & absSendTimeMask)
	if d > absSendTimeHalf {
		d -= 1 << 24
	}
	return time.Duration(d * int64(time.Second) / (1 << absSendTimeFracBits))
}

// AbsSendTime reads the abs-send-time extension from the element with the
// given id (negotiated out of band; default DefaultAbsSendTimeExtensionID):
// the sender's send time in 6.18 fixed-point seconds modulo 64 s, a 24-bit
// value. ok is false when the element is absent or its data is not exactly
// three bytes. It does not allocate.
func (h *RTPHeader) AbsSendTime(id uint8) (uint32, bool) {
	d, found := h.ExtensionByID(id)
	if !found || len(d) != absSendTimeLen {
		return 0, false
	}
	return uint32(d[0])<<16 | uint32(d[1])<<8 | uint32(d[2]), true
}
