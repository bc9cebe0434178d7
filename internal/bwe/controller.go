package bwe

import "math"

// Rate controller constants (draft-ietf-rmcat-gcc-02 §5.5 and §6).
const (
	beta               = 0.85          // a decrease goes to beta x incoming rate
	increasePerSecond  = 1.08          // multiplicative increase, per second
	maxIncreaseDtNs    = 1_000_000_000 // longer gaps between updates count as this
	decreaseIntervalNs = 200_000_000   // at most one decrease per interval

	// The additive increase near the link capacity: about one packet per
	// response time (an assumed RTT of 200 ms + 100 ms), the packet size
	// guessed from the rate at framesPerSecond, at most maxPacketBits.
	responseTimeNs  = 300_000_000
	maxPacketBits   = 1200 * 8
	framesPerSecond = 30
	minAdditiveBps  = 4000 // per second

	// An increase goes at most to incomingCapFactor x incoming rate +
	// incomingCapBps: the sender must use what it has before it gets more,
	// but a sender below the capacity can still grow.
	incomingCapFactor = 1.5
	incomingCapBps    = 10_000

	lossHigh       = 0.10        // above: cut the estimate
	lossLow        = 0.02        // at or above: no increase
	lossIntervalNs = 500_000_000 // at most one loss cut per interval

	// The link capacity estimate (the incoming rate at decreases): weight
	// of a new sample, and bounds of its relative standard deviation.
	capacityAlpha  = 0.05
	capacityDevMin = 0.03
	capacityDevMax = 0.15

	secondNs = 1e9
)

// ctrlState is the rate controller's state (gcc-02 §5.5, figure 2).
type ctrlState uint8

const (
	stateHold ctrlState = iota
	stateIncrease
	stateDecrease
)

// controller is the AIMD rate controller with the loss-based bound.
type controller struct {
	minBps, maxBps float64
	est            float64
	state          ctrlState

	lastUpdate   int64
	lastDecrease int64
	lastLossCut  int64
	hasUpdate    bool
	hasDecrease  bool
	hasLossCut   bool

	// Link capacity: the incoming rate seen at decreases, as an average
	// and a relative variance. Near it the increase is additive.
	capAvg, capVar float64
	hasCap         bool
}

func (c *controller) init(cfg Config) {
	*c = controller{
		minBps: float64(cfg.MinBps),
		maxBps: float64(cfg.MaxBps),
		est:    float64(cfg.InitialBps),
		state:  stateIncrease,
	}
}

// update runs the controller at now with the detector's verdict u and the
// window's incoming rate and loss, and returns the new estimate.
//
// steady says that the delay has been steady (neither over- nor underuse)
// for at least a window, so that the incoming rate is what the leg carried
// without its queue growing or draining.
func (c *controller) update(now int64, u usage, steady bool, st windowStats) float64 {
	var dt int64
	if c.hasUpdate {
		dt = min(max(now-c.lastUpdate, 0), maxIncreaseDtNs)
	}
	c.lastUpdate, c.hasUpdate = now, true
	incoming := 0.0
	if st.rateOK {
		incoming = st.bps
	}

	switch u {
	case usageOver:
		c.state = stateDecrease
	case usageUnder:
		c.state = stateHold
	default:
		if c.state == stateHold {
			c.state = stateIncrease
		}
	}

	switch c.state {
	case stateIncrease:
		if st.lossOK && st.loss >= lossLow {
			break // loss: no increase, but the delay-based state stays
		}
		c.increase(float64(dt)/secondNs, incoming)
	case stateDecrease:
		if st.settled && (!c.hasDecrease || now-c.lastDecrease >= decreaseIntervalNs) {
			c.est = min(c.est, beta*incoming)
			c.observeCapacity(incoming)
			c.lastDecrease, c.hasDecrease = now, true
			c.state = stateHold
		}
	}

	// What arrived while the queue neither grew nor drained, the leg
	// carried: never ask for less. (Not while a queue drains: the rate
	// then is the link's, and flooring at it would keep the queue full.)
	if steady && st.rateOK && c.est < incoming {
		c.est = incoming
	}

	// Loss-based bound: the sender's rate times (1 - loss/2), applied at
	// most once per interval and never below what did arrive.
	if st.lossOK && st.loss > lossHigh && (!c.hasLossCut || now-c.lastLossCut >= lossIntervalNs) {
		c.est = min(c.est, max(c.est*(1-0.5*st.loss), incoming))
		c.lastLossCut, c.hasLossCut = now, true
	}

	c.est = min(max(c.est, c.minBps), c.maxBps)
	return c.est
}

// increase grows the estimate over dtSec seconds: additively near the
// known link capacity, multiplicatively otherwise, and to at most
// incomingCapFactor x incoming + incomingCapBps (never lowering it).
func (c *controller) increase(dtSec, incoming float64) {
	if c.hasCap && incoming > c.capAvg*(1+3*c.capDev()) {
		c.hasCap = false // the leg got faster: search again
	}
	var next float64
	if c.hasCap {
		next = c.est + additiveBpsPerSecond(c.est)*dtSec
	} else {
		next = c.est * math.Pow(increasePerSecond, dtSec)
	}
	limit := max(c.est, incomingCapFactor*incoming+incomingCapBps)
	c.est = min(next, limit)
}

// additiveBpsPerSecond is the additive increase rate at bps: about one
// packet per response time, but never faster than the multiplicative
// increase (which it would be at low rates).
func additiveBpsPerSecond(bps float64) float64 {
	frameBits := bps / framesPerSecond
	packets := math.Ceil(frameBits / maxPacketBits)
	packetBits := frameBits / max(packets, 1)
	perPacket := packetBits * secondNs / responseTimeNs
	return max(min(perPacket, bps*(increasePerSecond-1)), minAdditiveBps)
}

// observeCapacity folds the incoming rate at a decrease into the link
// capacity estimate, restarting it if the rate is far below.
func (c *controller) observeCapacity(bps float64) {
	if bps <= 0 {
		return
	}
	if c.hasCap && bps < c.capAvg*(1-3*c.capDev()) {
		c.hasCap = false
	}
	if !c.hasCap {
		c.capAvg, c.capVar, c.hasCap = bps, capacityDevMax*capacityDevMax, true
		return
	}
	c.capAvg = (1-capacityAlpha)*c.capAvg + capacityAlpha*bps
	e := (bps - c.capAvg) / c.capAvg
	c.capVar = (1-capacityAlpha)*c.capVar + capacityAlpha*e*e
}

func (c *controller) capDev() float64 {
	return min(max(math.Sqrt(c.capVar), capacityDevMin), capacityDevMax)
}
