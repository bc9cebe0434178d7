package bwe

import "math/rand/v2"

// This file is a discrete-event simulation of one network leg: senders
// pacing RTP-sized packets into a bottleneck link (a tail-drop FIFO drained
// at a fixed capacity), then propagation delay, jitter and random loss, and
// an Estimator at the far end fed on a fake clock. Nothing sleeps.

const (
	ms = int64(1_000_000)
	s  = 1000 * ms

	// simEpoch makes the simulated arrivals look like unix nanoseconds.
	simEpoch = int64(1_700_000_000) * s
)

// simLink is the bottleneck. A zero capacityBps means no rate limit.
type simLink struct {
	capacityBps float64
	queueNs     int64   // tail drop when the queue would hold more than this much, at capacity
	propNs      int64   // one-way propagation delay
	jitterNs    int64   // extra delay, uniform in [-jitterNs, +jitterNs]; order is kept
	lossProb    float64 // random loss, before the queue

	rng         *rand.Rand
	busyUntil   int64 // when the link finishes sending what is queued
	lastArrival int64
	drops       int
}

// send hands the link a packet of size bytes at t and returns when it
// arrives, or false when it is lost.
func (l *simLink) send(t int64, size int) (int64, bool) {
	if l.lossProb > 0 && l.rng.Float64() < l.lossProb {
		l.drops++
		return 0, false
	}
	dep := t
	if l.capacityBps > 0 {
		start := max(t, l.busyUntil)
		tx := int64(float64(size) * 8e9 / l.capacityBps)
		if start+tx-t > l.queueNs {
			l.drops++
			return 0, false
		}
		l.busyUntil = start + tx
		dep = l.busyUntil
	}
	a := dep + l.propNs
	if l.jitterNs > 0 {
		a += l.rng.Int64N(2*l.jitterNs+1) - l.jitterNs
	}
	a = max(a, l.lastArrival) // a FIFO path: jitter delays, never reorders
	l.lastArrival = a
	return a, true
}

// simSender paces packets of size bytes at rateBps on its own clock.
type simSender struct {
	stream   int
	mtu      int // packet size; frames are cut into packets of at most this
	size     int // of the next packet
	rateBps  float64
	adaptive bool    // follows the estimate fed back to it
	share    float64 // fraction of the estimate an adaptive sender takes
	clockNs  int64   // the sender's clock reads t + clockNs
	frames   bool    // send 30 frames/s, each a back-to-back burst of packets
	stopped  bool    // sends nothing while set

	frameLeft int // packets left in the current frame

	next int64
	seq  uint16
	recv SendTimeUnwrapper // the receiver's unwrapper for this sender
}

// abs24 is the abs-send-time the sender stamps on a packet sent at t.
func (ss *simSender) abs24(t int64) uint32 {
	c := t + ss.clockNs
	units := (c/s)<<absSendTimeFracBits + (c%s)<<absSendTimeFracBits/s
	return uint32(units) & absSendTimeMask
}

type inflight struct {
	arrival int64
	abs24   uint32
	size    int
	sender  int
	seq     uint16
}

// sim runs senders through a link into an Estimator.
type sim struct {
	link            simLink
	senders         []*simSender
	est             Estimator
	tickNs          int64
	feedbackDelayNs int64 // how late adaptive senders learn the estimate
	noSendTime      bool
	// onDeliver, if set, sees every packet handed to the estimator.
	onDeliver func(arrival, sendTime int64, size, stream int, seq uint16)

	queue    []inflight
	feedback []uint64 // estimate per tick, for the delayed feedback
	now      int64
}

func newSim(link simLink, seed uint64, senders ...*simSender) *sim {
	link.rng = rand.New(rand.NewPCG(seed, seed^0x5bd1e995))
	sm := &sim{link: link, senders: senders, tickNs: 50 * ms, feedbackDelayNs: 100 * ms}
	sm.est.Init(Config{})
	return sm
}

// step advances the simulation by one tick and runs Update.
func (sm *sim) step() {
	end := sm.now + sm.tickNs
	for {
		var next *simSender
		for i, ss := range sm.senders {
			if !ss.stopped && ss.next < end && (next == nil || ss.next < next.next) {
				next = sm.senders[i]
			}
		}
		if next == nil {
			break
		}
		t := next.next
		if a, ok := sm.link.send(t, next.size); ok {
			sm.queue = append(sm.queue, inflight{arrival: a, abs24: next.abs24(t), size: next.size, sender: indexOf(sm.senders, next), seq: next.seq})
		}
		next.seq++
		next.advance()
	}
	n := 0
	for _, p := range sm.queue {
		if p.arrival > end {
			break
		}
		ss := sm.senders[p.sender]
		st := ss.recv.Unwrap(p.abs24)
		sm.est.OnPacket(simEpoch+p.arrival, st, !sm.noSendTime, p.size, ss.stream, p.seq)
		if sm.onDeliver != nil {
			sm.onDeliver(simEpoch+p.arrival, st, p.size, ss.stream, p.seq)
		}
		n++
	}
	sm.queue = append(sm.queue[:0], sm.queue[n:]...)
	sm.now = end
	est := sm.est.Update(simEpoch + end)
	sm.feedback = append(sm.feedback, est)
	lag := int(sm.feedbackDelayNs / sm.tickNs)
	if i := len(sm.feedback) - 1 - lag; i >= 0 {
		for _, ss := range sm.senders {
			if ss.adaptive {
				ss.rateBps = float64(sm.feedback[i]) * ss.share
			}
		}
	}
}

// advance sets when the sender sends its next packet, and its size.
func (ss *simSender) advance() {
	rate := max(ss.rateBps, 8000)
	if !ss.frames {
		ss.next += int64(float64(ss.mtu) * 8e9 / rate)
		return
	}
	if ss.frameLeft > 0 {
		ss.size = min(ss.frameLeft, ss.mtu)
		ss.frameLeft -= ss.size
		ss.next += 20_000 // 20 µs apart: a burst
		return
	}
	ss.next += s / 30
	frame := max(int(rate/30/8+0.5), 100)
	ss.size = min(frame, ss.mtu)
	ss.frameLeft = frame - ss.size
}

func indexOf(ss []*simSender, x *simSender) int {
	for i := range ss {
		if ss[i] == x {
			return i
		}
	}
	panic("unknown sender")
}

// sample is the estimator's state at one time.
type sample struct {
	t        int64
	est      float64
	incoming float64
	loss     float64
}

// run simulates until d and samples the estimator every sampleNs.
func (sm *sim) run(d, sampleNs int64) []sample {
	var out []sample
	for sm.now < d {
		sm.step()
		if sm.now%sampleNs == 0 {
			out = append(out, sample{t: sm.now, est: float64(sm.est.Estimate()), incoming: float64(sm.est.IncomingBps()), loss: sm.est.LossFraction()})
		}
	}
	return out
}

// paced returns a sender of 1200-byte packets at bps.
func paced(stream int, bps float64) *simSender {
	return &simSender{stream: stream, mtu: 1200, size: 1200, rateBps: bps, share: 1, clockNs: 61 * s}
}
