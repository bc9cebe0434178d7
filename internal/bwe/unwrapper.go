package bwe

// abs-send-time (http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time)
// is a 24-bit 6.18 fixed-point count of seconds: 18 fraction bits, so one
// unit is 2^-18 s (about 3.8 µs), and the field wraps every 64 s.
const (
	absSendTimeBits     = 24
	absSendTimeFracBits = 18
	absSendTimeMask     = 1<<absSendTimeBits - 1
	absSendTimeHalf     = 1 << (absSendTimeBits - 1)
	absSendTimeFracMask = 1<<absSendTimeFracBits - 1
)

// SendTimeUnwrapper turns one sender's 24-bit abs-send-time values into a
// continuous send time in nanoseconds on that sender's clock. Use one per
// sender (per clock), not one per call.
//
// Each value is placed within ±32 s of the previous one, so it tolerates
// reordering and gaps of up to half the 64 s wrap period; after a longer
// silence the result may be off by a multiple of 64 s, which Estimator
// treats as a clock jump and recovers from. The first value maps to
// [0, 64 s). The zero value is ready to use and has no allocation.
type SendTimeUnwrapper struct {
	last    uint32 // previous 24-bit value
	units   int64  // unwrapped count of 2^-18 s units
	started bool
}

// Unwrap returns the send time of abs24 (only its low 24 bits are used) in
// nanoseconds, continuous across the 64 s wrap.
func (u *SendTimeUnwrapper) Unwrap(abs24 uint32) int64 {
	abs24 &= absSendTimeMask
	if !u.started {
		u.started = true
		u.last = abs24
		u.units = int64(abs24)
		return unitsToNs(u.units)
	}
	diff := int64((abs24 - u.last) & absSendTimeMask)
	if diff >= absSendTimeHalf {
		diff -= 1 << absSendTimeBits
	}
	u.last = abs24
	u.units += diff
	return unitsToNs(u.units)
}

// Reset forgets the sender's history; the next value maps to [0, 64 s).
func (u *SendTimeUnwrapper) Reset() { *u = SendTimeUnwrapper{} }

// unitsToNs converts 2^-18 s units to nanoseconds without overflowing for
// any send time an int64 of nanoseconds can hold (whole seconds and the
// fraction are converted separately), rounding to the nearest nanosecond.
func unitsToNs(units int64) int64 {
	secs := units >> absSendTimeFracBits // floor, also for negative units
	frac := units & absSendTimeFracMask  // 0 .. 2^18-1
	return secs*1e9 + (frac*1e9+1<<(absSendTimeFracBits-1))>>absSendTimeFracBits
}
