package client

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/callrelay/callrelay/protocol"
)

// attempt is a re-join or migration in flight: one goroutine dials, run
// takes its result. At most one at a time.
type attempt struct {
	kind   EventKind // EventFailover, EventRejoined or EventMigrated
	from   netip.AddrPort
	target netip.AddrPort // EventMigrated: the MigrateTo address
	began  time.Time      // trouble noticed, or the Rejoin or MigrateTo received
	// spare: an EventTransport leg opened beside a suspect UDP Conn
	// (transport_session.go). quiet: a Conn of this attempt not swapped in
	// is closed without a leave (it reaches the forwarder of the current
	// Conn, where a leave could end the session the current Conn holds).
	spare, quiet bool
	unreachable  bool // a spare opened on port unreachable: if it fails, fail over at once
	cancel       context.CancelFunc
	result       chan attemptResult // unbuffered: an abandoned attempt closes its Conn
}

type attemptResult struct {
	conn *Conn
	err  error
}

// run is the Session's supervisor: the only goroutine that replaces the
// current Conn. It watches the Conn (its end, its Control messages, its
// port-unreachable hints, its keepalive answers), starts re-joins and
// migrations, and swaps their Conn in.
func (s *Session) run() {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		err := s.step(timer)
		if err != nil {
			s.teardown(err)
			return
		}
	}
}

// step waits for one thing to happen and handles it; a non-nil error ends
// the Session.
func (s *Session) step(timer *time.Timer) error {
	cur := s.current()
	var (
		ended, unreachable, answered <-chan struct{}
		control                      <-chan protocol.RelayMessage
		result                       <-chan attemptResult
	)
	wake := time.Now().Add(time.Hour)
	if s.watch {
		ended, unreachable, control = cur.Done(), cur.Unreachable(), cur.Control()
		wake = cur.lastAnswer().Add(s.failoverAfter(cur))
		if at, ok := s.udpRetryAt(cur); ok { // transport_session.go
			wake = minTime(wake, at)
		}
		if !s.nudge.IsZero() {
			answered = cur.answered
			wake = minTime(wake, s.nudge.Add(nudgeWindow(cur)))
		}
		wake = s.spareWake(cur, wake) // transport_session.go
		if s.att != nil && s.att.spare {
			answered = cur.answered // UDP answering again closes the spare
		}
	}
	if s.att != nil {
		result = s.att.result
	}
	timer.Reset(time.Until(wake))
	select {
	case <-s.closing:
		return ErrClosed
	case <-ended:
		return s.ended(cur)
	case m, ok := <-control:
		if !ok { // closed when the Conn ends
			return s.ended(cur)
		}
		s.onControl(cur, m)
	case <-unreachable:
		s.onUnreachable(cur) // transport_session.go
	case <-answered:
		s.checkNudge(cur)
		s.udpRecovered(cur)
	case <-timer.C:
		s.checkTimers(cur)
	case r := <-result:
		return s.finished(r)
	}
	return nil
}

// ended handles the end of the current Conn: a forwarder's final refusal
// ends the Session, anything else is a failover.
func (s *Session) ended(cur *Conn) error {
	err := cur.Err()
	var je *JoinError
	if errors.As(err, &je) && !credentialRefusal(err) {
		s.emit(SessionEvent{Kind: EventLost, From: cur.Forwarder(), Err: err})
		return err
	}
	// A 401 to a keepalive: the forwarder lost the session and would not
	// resume it. A re-join tries the other forwarders and a fresh token,
	// and ends at once if those are refused too.
	s.trouble(cur, EventFailover, errors.Is(err, syscall.ECONNREFUSED), err)
	return nil
}

// checkTimers gives up a silent Conn, and escalates an in-place rejoin that
// went unanswered to a new join.
func (s *Session) checkTimers(cur *Conn) {
	if !s.watch {
		return
	}
	now := time.Now()
	if s.backToUDP(cur, now) || s.checkSpare(cur, now) { // transport_session.go
		return
	}
	if !s.nudge.IsZero() && !now.Before(s.nudge.Add(nudgeWindow(cur))) && !cur.lastAnswer().After(s.nudge) {
		s.log.Info("rejoin nudge: no answer in place, joining anew", zap.Stringer("forwarder", cur.Forwarder()))
		s.replace(cur, EventRejoined, s.nudge, s.candidates(cur.Forwarder(), netip.AddrPort{}, false))
		return
	}
	if silent := now.Sub(cur.lastAnswer()); silent >= s.failoverAfter(cur) {
		s.trouble(cur, EventFailover, false, fmt.Errorf("%w: no keepalive answer from %s for %v",
			ErrSessionLost, cur.Forwarder(), silent.Round(time.Millisecond)))
	}
}

// onControl acts on a Rejoin or MigrateTo from the current forwarder.
func (s *Session) onControl(cur *Conn, m protocol.RelayMessage) {
	switch m := m.(type) {
	case *protocol.Rejoin:
		s.nudges.Add(1)
		at := cur.lastNudge()
		// The Conn has sent its keepalive at once (unless rate-limited: then
		// the nudge before it is the one being confirmed, or was).
		if s.att != nil || !s.nudge.IsZero() || at.IsZero() || !at.After(s.confirmed) {
			s.ignored.Add(1)
			return
		}
		s.log.Debug("rejoin nudge", zap.Stringer("forwarder", cur.Forwarder()), zap.Stringer("reason", m.Reason))
		s.nudge = at
		s.checkNudge(cur)
	case *protocol.MigrateTo:
		s.onMigrateTo(cur, m)
	}
}

// checkNudge confirms an in-place rejoin once the forwarder answered a
// keepalive sent after the nudge.
func (s *Session) checkNudge(cur *Conn) {
	if s.nudge.IsZero() {
		return
	}
	ans := cur.lastAnswer()
	if !ans.After(s.nudge) {
		return
	}
	took := ans.Sub(s.nudge)
	s.confirmed, s.nudge = s.nudge, time.Time{}
	s.rejoins.Add(1)
	s.mu.Lock()
	s.lastGap = took
	s.mu.Unlock()
	s.log.Info("rejoined in place", zap.Stringer("forwarder", cur.Forwarder()), zap.Duration("took", took))
	s.emit(SessionEvent{Kind: EventRejoined, From: cur.Forwarder(), To: cur.Forwarder(), Took: took})
}

func (s *Session) onMigrateTo(cur *Conn, m *protocol.MigrateTo) {
	target, from, now := unmap(m.Addr), cur.Forwarder(), time.Now()
	listener, via := target, m.Transport // a TCP or TLS listener: migrate_stream.go
	if via != protocol.TransportUDP {
		target = s.streamForwarder(listener, via)
	}
	if target == from || s.att != nil || (!s.lastMigrate.IsZero() && now.Sub(s.lastMigrate) < nudgeInterval) {
		s.ignored.Add(1)
		s.log.Debug("migrate-to ignored", zap.Stringer("target", target), zap.Bool("busy", s.att != nil))
		return
	}
	s.lastMigrate = now
	s.log.Info("migrating", zap.Stringer("from", from), zap.Stringer("to", target), zap.Stringer("transport", via),
		zap.Duration("deadline", m.Deadline))
	deadline := m.Deadline
	dial := func(ctx context.Context) (*Conn, error) { return s.migrate(ctx, target, from, deadline) }
	if via != protocol.TransportUDP {
		dial = func(ctx context.Context) (*Conn, error) {
			return s.migrateStream(ctx, target, listener, via, from, deadline)
		}
	}
	s.start(&attempt{kind: EventMigrated, from: from, target: target, began: now}, dial)
}

// trouble gives up the current Conn (dead: its forwarder is known to be
// gone) and starts a failover, unless a re-join is already in flight. A
// migration in flight is abandoned; its target goes first.
func (s *Session) trouble(cur *Conn, kind EventKind, dead bool, cause error) {
	var front netip.AddrPort
	if s.att != nil {
		if s.att.kind != EventMigrated && s.att.kind != EventTransport {
			return
		}
		front = s.att.target
		s.abandon()
	}
	s.log.Warn("forwarder trouble, re-joining", zap.Stringer("forwarder", cur.Forwarder()),
		zap.Bool("unreachable", dead), zap.Error(cause))
	s.replace(cur, kind, time.Now(), s.candidates(front, cur.Forwarder(), dead))
}

// replace stops using cur (writes are dropped from now on) and starts a
// re-join on cands.
func (s *Session) replace(cur *Conn, kind EventKind, began time.Time, cands []netip.AddrPort) {
	s.watch, s.nudge = false, time.Time{}
	s.mu.Lock()
	s.rejoining = true
	s.mu.Unlock()
	old := cur.Forwarder()
	s.start(&attempt{kind: kind, from: old, began: began},
		func(ctx context.Context) (*Conn, error) { return s.rejoin(ctx, began, cands, old) })
}

// start runs an attempt's dial in its own goroutine.
func (s *Session) start(att *attempt, dial func(context.Context) (*Conn, error)) {
	ctx, cancel := context.WithCancel(s.ctx)
	att.cancel, att.result = cancel, make(chan attemptResult)
	s.att = att
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		c, err := dial(ctx)
		select {
		case att.result <- attemptResult{conn: c, err: err}:
		case <-ctx.Done(): // abandoned, or the Session ended
			switch {
			case c == nil:
			case att.quiet:
				c.closeQuietly()
			default:
				_ = c.Close()
			}
		}
	}()
}

// abandon cancels the attempt in flight; its goroutine closes any Conn it
// got.
func (s *Session) abandon() {
	s.att.cancel()
	s.att = nil
}

// finished takes an attempt's result: swap the new Conn in, or report the
// failure (a failed migration leaves the old Conn be; a failed re-join ends
// the Session).
func (s *Session) finished(r attemptResult) error {
	att := s.att
	s.att = nil
	att.cancel()
	took := time.Since(att.began)
	if r.err != nil {
		if att.spare { // stay on UDP: FailoverAfter decides, or port unreachable at once
			s.log.Info("spare leg failed", zap.Stringer("forwarder", att.from), zap.Error(r.err))
			if att.unreachable {
				s.trouble(s.current(), EventFailover, true, unreachableErr(att.from))
			}
			return nil
		}
		if att.kind == EventTransport { // UDP still does not answer: stay, try again later
			s.udpRetry = time.Now().Add(s.cfg.UDPRetryEvery)
			return nil
		}
		if att.kind == EventMigrated {
			s.migrationsFailed.Add(1)
			s.log.Warn("migration failed, staying", zap.Stringer("forwarder", att.from), zap.Error(r.err))
			s.emit(SessionEvent{Kind: EventMigrateFailed, From: att.from, To: att.target, Took: took, Err: r.err})
			return nil
		}
		s.emit(SessionEvent{Kind: EventLost, From: att.from, Took: took, Err: r.err})
		return r.err
	}
	s.swap(r.conn, took, att.spare)
	s.udpRetry = time.Now().Add(s.cfg.UDPRetryEvery)
	switch att.kind {
	case EventTransport:
		s.transportMoves.Add(1)
	case EventFailover:
		s.failovers.Add(1)
	case EventRejoined:
		s.rejoins.Add(1)
	case EventMigrated:
		s.migrations.Add(1)
	}
	s.log.Info("forwarder switched", zap.Stringer("kind", att.kind), zap.Stringer("from", att.from),
		zap.Stringer("to", r.conn.Forwarder()), zap.Duration("took", took))
	s.emit(SessionEvent{Kind: att.kind, From: att.from, To: r.conn.Forwarder(), Took: took, Transport: r.conn.Transport()})
	return nil
}

// swap makes c the current Conn and retires the old one: Close, off the
// supervisor and the media path, sends the leave (bounded by LeaveTimeout;
// nothing is sent if the old Conn has already ended). With quiet (c is a
// spare leg to the old Conn's forwarder), or whenever c is on the old
// Conn's forwarder (a failover or re-join that landed where it was), the
// old Conn sends no leave, and c a keepalive once it is gone: the leave
// would reach the forwarder that now holds the session for c, and once a
// keepalive of the old Conn still in flight had moved the session back to
// the old socket (it has that socket's cookie), it would end the session c
// holds; c's keepalive takes the session to c.
func (s *Session) swap(c *Conn, took time.Duration, quiet bool) {
	s.mu.Lock()
	old := s.conn
	quiet = quiet || old.Forwarder() == c.Forwarder()
	s.conn, s.rejoining, s.lastGap = c, false, took
	s.mu.Unlock()
	s.watch, s.nudge, s.confirmed = true, time.Time{}, time.Time{}
	s.pumps.Add(1)
	go s.pump(c)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if quiet {
			old.closeQuietly()
			c.sendKeepalive(time.Now())
			return
		}
		_ = old.Close()
	}()
}

// teardown ends the Session: no more writes, no attempt, the current Conn
// closed (its leave sent), every goroutine gone, the channels closed.
func (s *Session) teardown(err error) {
	s.mu.Lock()
	s.err = err
	cur := s.conn
	s.mu.Unlock()
	if s.att != nil {
		s.abandon()
	}
	s.cancel()
	_ = cur.Close()
	s.wg.Wait()
	s.pumps.Wait()
	close(s.media)
	close(s.events)
	if !errors.Is(err, ErrClosed) {
		s.log.Warn("session lost", zap.Error(err))
	}
	close(s.done)
}
