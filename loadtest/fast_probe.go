package loadtest

// Probe sampling: the fast engine seals most devices' frames once and
// sends copies (the relay cannot tell: payloads are opaque), and runs full
// SRTP with byte-exact checks on the members of a sample of calls, the
// probe calls: every probeEvery-th call of the arrivals (the first
// included), so that the sample is spread evenly over the run and over a
// ramp's steps; an agent of a distributed run counts its own calls (its
// share of the arrivals), so that each has its probes.

// isProbeCall says whether call number no (its index in the arrivals) is a
// probe call when every probeEvery-th call is one (probeEvery <= 1: all).
func isProbeCall(no, probeEvery int) bool {
	return probeEvery <= 1 || no%probeEvery == 0
}

// SSRCs of the fast engine's devices: the top bit set, the device number,
// and the low bit set on probes, so a receiver tells the sender and how to
// read its frame from the SSRC alone. Device numbers are below
// maxDevices < 2^30.
const fastSSRCBase = 0x8000_0000

func fastSSRC(dev int, probe bool) uint32 {
	s := uint32(fastSSRCBase) | uint32(dev)<<1 //nolint:gosec // dev < maxDevices < 2^30
	if probe {
		s |= 1
	}
	return s
}

// fastSender is the device number and probe flag an SSRC names (false:
// not one of the engine's).
func fastSender(ssrc uint32) (dev int, probe, ok bool) {
	if ssrc&fastSSRCBase == 0 {
		return 0, false, false
	}
	return int(ssrc&(1<<25-1)) >> 1, ssrc&1 == 1, true // bits 25-26: a video layer (fast_video.go)
}
