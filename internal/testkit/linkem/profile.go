package linkem

import (
	"math"
	"time"
)

// minQueueBytes is the smallest default bottleneck queue: about a dozen
// full-size packets, so a slow link still absorbs a burst.
const minQueueBytes = 15000

// Profile is the impairment of one direction of a link. The zero Profile
// passes packets through unchanged.
type Profile struct {
	// Loss is the probability, 0..1, that a packet is dropped at random,
	// independently of every other packet. Values outside 0..1 are clamped.
	Loss float64
	// Delay is the one-way base delay added to every packet.
	Delay time.Duration
	// Jitter adds a uniform extra delay in [0, Jitter] per packet. The link
	// stays order-preserving: a packet never leaves before the previous one
	// (see the package comment).
	Jitter time.Duration
	// RateBps is the bottleneck rate in bits per second, counting whole UDP
	// payloads; a packet of len bytes takes len*8/RateBps to serialise.
	// 0 means unlimited (no bottleneck, no queue).
	RateBps uint64
	// QueueBytes is the bottleneck queue size; a packet arriving to a full
	// queue is dropped (tail drop). 0 or less means the default: 100 ms worth
	// of RateBps, at least 15000 bytes. Unused when RateBps is 0.
	QueueBytes int
}

// normalized returns p with out-of-range fields clamped and the default
// queue size filled in.
func (p Profile) normalized() Profile {
	switch {
	case math.IsNaN(p.Loss) || p.Loss < 0:
		p.Loss = 0
	case p.Loss > 1:
		p.Loss = 1
	}
	p.Delay = max(p.Delay, 0)
	p.Jitter = max(p.Jitter, 0)
	if p.RateBps == 0 {
		p.QueueBytes = 0
	} else if p.QueueBytes <= 0 {
		p.QueueBytes = int(min(p.RateBps/8/10, math.MaxInt32))
		p.QueueBytes = max(p.QueueBytes, minQueueBytes)
	}
	return p
}
