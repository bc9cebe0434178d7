package forwarder

import "time"

// legEstimate is a stream leg's downlink estimate, from what its socket
// accepts (the device's own REMB is ignored on stream legs: over TCP its
// delay-based estimate measures the relay's queue, not the path).
//
// Each period: if the queue stayed backed up (a write left frames queued,
// or frames were dropped), the leg carried what the socket accepted, and
// that is the estimate. If it never backed up, the socket took everything
// offered: the estimate grows by a tenth a period from the last backed-up
// figure, and after legEstimateForget without a backup it is unknown again
// (0, as a UDP receiver before its first REMB). Published every period
// into the receiver's downlink, where the conductor and the policer read
// every member's estimate.
type legEstimate struct {
	bytes      int  // accepted this period
	backed     bool // the queue stayed non-empty after a write, or dropped frames
	bps        uint64
	lastBacked time.Time
	last       time.Time
}

const (
	legEstimateEvery  = 250 * time.Millisecond
	legEstimateForget = 5 * time.Second
	legEstimateMax    = 50_000_000
)

func (e *legEstimate) wrote(n int, _ time.Duration, more bool) {
	e.bytes += n
	if more {
		e.backed = true
	}
}

// tick closes a period and publishes the estimate to the member's
// downlink, if it has joined.
func (e *legEstimate) tick(l *streamLeg, now time.Time) {
	period := now.Sub(e.last)
	if e.last.IsZero() || period <= 0 {
		period = legEstimateEvery
	}
	switch {
	case e.backed:
		e.bps = min(uint64(float64(e.bytes)*8/period.Seconds()), legEstimateMax)
		e.lastBacked = now
	case e.bps > 0 && now.Sub(e.lastBacked) > legEstimateForget:
		e.bps = 0
	case e.bps > 0:
		e.bps = min(e.bps+e.bps/10, legEstimateMax)
	}
	e.bytes, e.backed, e.last = 0, false, now
	rte := l.s.f.routes.Load().bySrc[l.addr]
	if rte == nil || rte.media == nil {
		return
	}
	rte.media.down.stream.Store(true)
	rte.media.down.remb.Store(e.bps)
}
