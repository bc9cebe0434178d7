package client

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"go.uber.org/zap"
)

// udpRetryAt: on a TCP or TLS Conn, when the Session tries UDP again.
func (s *Session) udpRetryAt(cur *Conn) (time.Time, bool) {
	if cur.Transport() == TransportUDP || s.att != nil || len(s.cfg.Streams) == 0 {
		return time.Time{}, false
	}
	return s.udpRetry, true
}

// backToUDP starts a UDP join of the current forwarder when one is due; it
// reports whether it did. The stream Conn carries the call until the UDP
// Conn is up (the forwarder moves the session to the UDP address on its
// join); then the swap closes it.
func (s *Session) backToUDP(cur *Conn, now time.Time) bool {
	at, ok := s.udpRetryAt(cur)
	if !ok || now.Before(at) {
		return false
	}
	fwd := cur.Forwarder()
	s.log.Debug("trying UDP again", zap.Stringer("forwarder", fwd), zap.Stringer("transport", cur.Transport()))
	cfg := s.cfg
	cfg.Streams, cfg.Forwarders = nil, []netip.AddrPort{fwd}
	cfg.JoinTimeout = min(cfg.JoinTimeout, 2*time.Second)
	s.start(&attempt{kind: EventTransport, from: fwd, began: now, quiet: true},
		func(ctx context.Context) (*Conn, error) { return Dial(ctx, cfg) })
	return true
}

// Transport is how the Session reaches its forwarder now: udp, tcp or tls.
func (s *Session) Transport() Transport { return s.current().Transport() }

// Spare leg: make-before-break off a failing UDP path (protocol/README.md
// section 9, rule 7). On UDP to a forwarder with a TCP or TLS listener,
// the Session watches for the first sign that UDP is failing, well before
// FailoverAfter:
//
//   - a keepalive answer overdue: none for a keepalive interval plus
//     answerWait;
//   - media stopping: no RTP for SuspectAfter, after which the Conn sends
//     one keepalive at once (a probe; one per silence), and that probe
//     unanswered for answerWait;
//   - ICMP port unreachable (onUnreachable): a firewall that rejects UDP,
//     or a dead forwarder process, whose listener then refuses the spare
//     at once and the Session fails over without waiting.
//
// It then joins the same forwarder over TCP and TLS at once (dialStreams:
// the same token, ticket and device proof; the forwarder takes it as an
// address change) while UDP stays the active path, and switches the moment
// that join is answered. Should UDP answer a keepalive meanwhile, the spare
// is abandoned and closed without a leave, and the UDP Conn sends a
// keepalive at once, which takes the session back should the spare's join
// have moved it. One spare per suspicion: if it fails, the next one waits
// for UDP to answer again, and FailoverAfter decides as before.

// suspectAfter is Config.SuspectAfter (at most FailoverAfter), or a quarter
// of FailoverAfter; 0: no spare legs.
func (s *Session) suspectAfter(c *Conn) time.Duration {
	switch {
	case s.cfg.SuspectAfter < 0:
		return 0
	case s.cfg.SuspectAfter > 0:
		return min(s.cfg.SuspectAfter, s.failoverAfter(c))
	}
	return s.failoverAfter(c) / 4
}

// answerWait is how long a keepalive may go unanswered before the UDP path
// is suspect: half of SuspectAfter, or four round trips if longer.
func (s *Session) answerWait(c *Conn) time.Duration {
	return max(4*time.Duration(c.stats.rtt.Load()), s.suspectAfter(c)/2)
}

// spareable: cur is on UDP to a forwarder with a TCP or TLS listener, and
// nothing else is in flight.
func (s *Session) spareable(cur *Conn) bool {
	if cur.Transport() != TransportUDP || s.att != nil || !s.nudge.IsZero() || s.suspectAfter(cur) == 0 {
		return false
	}
	ep := s.cfg.Streams[cur.Forwarder()]
	return ep.TCP.IsValid() || ep.TLS.IsValid()
}

// suspicion says when cur's UDP path becomes suspect if nothing is
// answered meanwhile (zero: a spare for this silence was tried already),
// and when a probe is due (zero: none).
func (s *Session) suspicion(cur *Conn) (suspect, probe time.Time) {
	ans := cur.lastAnswer()
	wait := s.answerWait(cur)
	if !ans.Equal(s.spareFor) {
		suspect = ans.Add(cur.Params().KeepaliveInterval + wait)
		if s.probe.After(ans) {
			suspect = minTime(suspect, s.probe.Add(wait))
		}
	}
	if lm := cur.lastMedia.Load(); lm != 0 {
		if media := time.Unix(0, lm); s.probe.Before(media) {
			probe = media.Add(s.suspectAfter(cur))
		}
	}
	return suspect, probe
}

// spareWake is the earliest of suspicion's times, or far when cur is not
// spareable.
func (s *Session) spareWake(cur *Conn, far time.Time) time.Time {
	if !s.spareable(cur) {
		return far
	}
	suspect, probe := s.suspicion(cur)
	for _, t := range []time.Time{suspect, probe} {
		if !t.IsZero() {
			far = minTime(far, t)
		}
	}
	return far
}

// checkSpare sends a probe or opens a spare leg when one is due; it reports
// whether it opened one.
func (s *Session) checkSpare(cur *Conn, now time.Time) bool {
	if !s.spareable(cur) {
		return false
	}
	suspect, probe := s.suspicion(cur)
	if !suspect.IsZero() && !now.Before(suspect) {
		s.openSpare(cur, now)
		return true
	}
	if !probe.IsZero() && !now.Before(probe) {
		s.probe = now
		s.probes.Add(1)
		cur.sendKeepalive(now)
	}
	return false
}

// openSpare joins cur's forwarder over TCP and TLS beside the UDP Conn.
func (s *Session) openSpare(cur *Conn, now time.Time) {
	fwd := cur.Forwarder()
	s.spareFor = cur.lastAnswer()
	s.spares.Add(1)
	s.log.Info("UDP path suspect: opening a TCP/TLS leg beside it", zap.Stringer("forwarder", fwd),
		zap.Duration("unanswered", now.Sub(s.spareFor).Round(time.Millisecond)))
	// Bounded by JoinTimeout, and in effect by FailoverAfter: a failover
	// abandons the spare (trouble).
	cfg := s.cfg
	s.start(&attempt{kind: EventTransport, from: fwd, began: now, spare: true, quiet: true},
		func(ctx context.Context) (*Conn, error) { return dialStreams(ctx, cfg, fwd) })
}

// udpRecovered abandons the spare leg in flight once the UDP Conn had a
// keepalive answered after the spare was opened.
func (s *Session) udpRecovered(cur *Conn) {
	att := s.att
	if att == nil || !att.spare || !cur.lastAnswer().After(att.began) {
		return
	}
	s.abandon() // its goroutine closes the spare quietly
	s.sparesClosed.Add(1)
	s.log.Info("UDP answers again: spare leg closed", zap.Stringer("forwarder", cur.Forwarder()),
		zap.Duration("after", time.Since(att.began).Round(time.Millisecond)))
	cur.sendKeepalive(time.Now())
}

// onUnreachable acts on ICMP port unreachable from cur's forwarder. It
// means the forwarder process died, or a firewall on the way rejects UDP:
// with a TCP or TLS listener to try, the Session opens a spare leg at once
// (a dead forwarder refuses its connection as fast), and fails over only
// if that fails; otherwise it fails over at once, as without listeners.
func (s *Session) onUnreachable(cur *Conn) {
	switch {
	case s.att != nil && s.att.spare:
		return // the spare in flight decides
	case s.spareable(cur) && !cur.lastAnswer().Equal(s.spareFor):
		s.openSpare(cur, time.Now())
		s.att.unreachable = true
		return
	}
	s.trouble(cur, EventFailover, true, unreachableErr(cur.Forwarder()))
}

func unreachableErr(fwd netip.AddrPort) error {
	return fmt.Errorf("%w: %s: port unreachable", ErrSessionLost, fwd)
}
