package forwarder

import (
	"time"

	"go.uber.org/zap"

	"github.com/callrelay/callrelay/protocol"
)

// Downlink probing. A receiver's estimate is fed by what it receives, and
// it cannot grow far past that (internal/bwe caps an increase at 1.5 times
// the incoming rate): a receiver moved down to a low layer while its link
// was congested would stay there after the congestion ends. So while a
// receiver is held below what it subscribed to, its forwarder now and then
// sends it padding probes (protocol/README.md section 4, "Relay probes") on
// top of its media for probeFor, at 1.5 times its estimate. If the link
// carries them with a steady delay, the receiver's estimate rises to what
// arrived (internal/bwe never asks for less than that) and the conductor
// gives it more; if not, the receiver's next REMB falls and the probe stops
// at once, having cost that receiver a short queue, and the next one waits
// longer (from probeEvery, doubling per failure, up to probeMaxBackoff).
// The first probe waits probeAfterHold after the receiver was moved down:
// its link was full a moment before. A receiver held
// down by something else than its downlink (a small maximum height) sees
// its estimate rise probe after probe without getting more: after
// probeMaxRises of those it is probed at the longest interval.
const (
	probeFor        = 1500 * time.Millisecond
	probeEvery      = 3 * time.Second
	probeMaxBackoff = time.Minute
	probeSize       = 1000
	probeMinBps     = 50_000
	probeMaxRises   = 5
	maxProbing      = 16 // receivers probed at once per forwarder
)

// probeAfterHold is how long after a receiver was moved down its first
// probe waits (a variable only so that tests need not wait that long).
var probeAfterHold = 10 * time.Second

// heldDown reports whether a receiver gets less video than it subscribed
// to: a pair the conductor holds below the top rank, or off.
func (s *session) heldDown() bool {
	subs := s.video.subs
	if !s.video.subApplied {
		subs = s.video.defaults
	}
	for _, p := range subs {
		if t := p.target.Load(); t == rankNone || t < protocol.MaxSimulcastLayers-1 {
			return true
		}
	}
	return false
}

func (c *control) probeTick(s *session, now time.Time) {
	ps := &s.video.probe
	est := s.media.down.estimate()
	if now.Before(ps.until) {
		if est >= ps.startEst-ps.startEst/10 {
			c.sendProbes(s, ps, now)
			c.probingNext++
			return
		}
		ps.until = now // the link did not carry it: stop now
	}
	if !ps.until.IsZero() { // a probe just ended: did the estimate follow?
		switch {
		case est <= ps.startEst+ps.startEst/10:
			ps.failures, ps.rises = min(ps.failures+1, 10), 0
		case ps.rises >= probeMaxRises:
			// It keeps rising and the receiver is still held down: not
			// by its downlink (a thumbnail, say). Probe rarely.
			ps.failures, ps.rises = 10, 0
		default:
			ps.failures = 0
			ps.rises++
		}
		wait := min(probeEvery<<ps.failures, probeMaxBackoff)
		ps.until, ps.next = time.Time{}, now.Add(wait)
	}
	if !s.heldDown() {
		ps.heldSince = time.Time{}
		return
	}
	if ps.heldSince.IsZero() {
		ps.heldSince = now // just moved down: its link was full a moment ago
	}
	if est == 0 || now.Before(ps.next) || now.Sub(ps.heldSince) < probeAfterHold {
		return
	}
	if c.probing >= maxProbing {
		return // the control goroutine sends probes itself: a few receivers at a time
	}
	ps.until, ps.startEst, ps.last, ps.owed = now.Add(probeFor), est, now, 0
	ps.rate = max(est+est/2, probeMinBps)
	c.f.probes.Add(1)
	c.probing++
}

// sendProbes sends what is due since the last tick.
func (c *control) sendProbes(s *session, ps *probeState, now time.Time) {
	ps.owed += float64(ps.rate) / 8 * now.Sub(ps.last).Seconds()
	ps.last = now
	for ps.owed >= probeSize {
		ps.owed -= probeSize
		ps.seq++
		var err error
		c.probeBuf, err = protocol.AppendRelayProbe(c.probeBuf[:0], ps.seq, protocol.AbsSendTime(now),
			c.f.cfg.Adapt.AbsSendTimeExtensionID, probeSize)
		if err != nil {
			c.f.log.Error("building a probe", zap.Error(err))
			return
		}
		c.tickSend(c.probeBuf, s.addr)
		s.media.down.sent.Add(probeSize)
		c.f.probeBytes.Add(probeSize)
	}
}
