package linkem

import (
	"math/rand/v2"
	"time"
)

// verdict is what the shaper decided for one packet.
type verdict uint8

const (
	pass      verdict = iota // schedule it
	lost                     // dropped by random loss
	queueFull                // tail-dropped at the bottleneck queue
)

// shaper decides the fate and departure time of each packet of one
// direction. It is pure scheduling logic: time is an argument, and it has no
// sockets or goroutines. It is not safe for concurrent use; the reader
// goroutine of a direction is its only user.
type shaper struct {
	rng *rand.Rand
	// busyUntil is when the bottleneck finishes serialising every packet
	// admitted so far. The bytes still waiting are the time left until then
	// at the current rate.
	busyUntil time.Time
	// lastDepart is the departure time of the previous packet; no packet
	// departs before it (order preservation).
	lastDepart time.Time
}

func newShaper(seed1, seed2 uint64) shaper {
	return shaper{rng: rand.New(rand.NewPCG(seed1, seed2))}
}

// admit decides for a packet of size bytes arriving at now under profile p
// (normalized). For a pass it returns the departure time, never earlier than
// that of the previous packet passed.
func (s *shaper) admit(now time.Time, size int, p *Profile) (time.Time, verdict) {
	if p.Loss > 0 && s.rng.Float64() < p.Loss {
		return time.Time{}, lost
	}
	ready := now // when the packet has left the bottleneck
	if p.RateBps > 0 {
		start := now
		if s.busyUntil.After(now) {
			start = s.busyUntil
			backlog := s.busyUntil.Sub(now).Seconds() * float64(p.RateBps) / 8
			if backlog+float64(size) > float64(p.QueueBytes) {
				return time.Time{}, queueFull
			}
		} else if size > p.QueueBytes {
			return time.Time{}, queueFull
		}
		ready = start.Add(serialisation(size, p.RateBps))
		s.busyUntil = ready
	}
	depart := ready.Add(p.Delay)
	if p.Jitter > 0 {
		depart = depart.Add(time.Duration(s.rng.Int64N(int64(p.Jitter) + 1)))
	}
	if depart.Before(s.lastDepart) {
		depart = s.lastDepart
	}
	s.lastDepart = depart
	return depart, pass
}

// serialisation is how long size bytes take at rate bits per second,
// rounded to the nanosecond. size is at most MaxPayload, so the product
// cannot overflow.
func serialisation(size int, rate uint64) time.Duration {
	return time.Duration(uint64(size) * 8 * uint64(time.Second) / rate)
}
