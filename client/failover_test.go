package client

import (
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// join joins and closes the Session at the end of the test.
func (e *env) join(cfg Config) *Session {
	e.t.Helper()
	s, err := Join(testContext(e.t), cfg)
	require.NoError(e.t, err)
	e.t.Cleanup(func() { _ = s.Close() })
	return s
}

// joinOn joins cfg (whose Forwarders list on first) so that the Session
// starts on on: the others drop everything until the join is done.
func (e *env) joinOn(cfg Config, on *responder, all ...*responder) *Session {
	e.t.Helper()
	for _, r := range all {
		if r != on {
			r.set(func(r *responder) { r.dead = true })
		}
	}
	s := e.join(cfg)
	require.Equal(e.t, on.addr, s.Forwarder())
	for _, r := range all {
		r.set(func(r *responder) { r.dead = false })
	}
	return s
}

func nextEvent(t *testing.T, s *Session) SessionEvent {
	t.Helper()
	select {
	case ev, ok := <-s.Events():
		require.True(t, ok, "events closed: %v", s.Err())
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no session event within 5s")
		return SessionEvent{}
	}
}

// talk checks that media flows both ways between s and peer, through
// whichever forwarder they share.
func talk(t *testing.T, s *Session, peer *Conn) {
	t.Helper()
	// UDP: resend until one arrives (a switch may be finishing).
	in := []byte{0x80, 111, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7, 'i', 'n'}
	out := []byte{0x80, 111, 0, 2, 0, 0, 0, 0, 0, 0, 0, 8, 'o', 'u', 't'}
	deadline := time.After(5 * time.Second)
	for gotIn, gotOut := false, false; !gotIn || !gotOut; {
		if !gotIn {
			require.NoError(t, peer.WriteRTP(in))
		}
		if !gotOut {
			require.NoError(t, s.WriteRTP(out))
		}
		select {
		case p, ok := <-s.Media():
			require.True(t, ok, "media closed: %v", s.Err())
			require.Equal(t, in, p.Data)
			gotIn = true
			p.Release()
		case p, ok := <-peer.Media():
			require.True(t, ok, "peer media closed: %v", peer.Err())
			require.Equal(t, out, p.Data)
			gotOut = true
			p.Release()
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			t.Fatalf("no media within 5s (in %v, out %v)", gotIn, gotOut)
		}
	}
}

func (s *Session) isRejoining() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rejoining
}

// A forwarder that dies without a word (its host is gone: no answers, no
// ICMP) is given up, after FailoverAfter without a keepalive answer or when
// the Conn's idle timeout ends it, and the Session joins the other one.
func TestSessionFailoverWhenForwarderDies(t *testing.T) {
	for _, tc := range []struct {
		name          string
		params        protocol.SessionParams
		failoverAfter time.Duration
	}{
		{"no keepalive answer for FailoverAfter", protocol.SessionParams{KeepaliveInterval: 50 * time.Millisecond, IdleTimeout: time.Minute}, 300 * time.Millisecond},
		{"the Conn's idle timeout ends it", protocol.SessionParams{KeepaliveInterval: 50 * time.Millisecond, IdleTimeout: 300 * time.Millisecond}, time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			a, b := e.responder(tc.params), e.responder(tc.params)
			cfg := e.config(a, b)
			cfg.FailoverAfter = tc.failoverAfter
			s := e.joinOn(cfg, a, a, b)
			old := s.current()
			peer := e.dial(e.config(b))

			a.set(func(r *responder) { r.dead = true })
			ev := nextEvent(t, s)
			require.Equal(t, EventFailover, ev.Kind)
			require.Equal(t, a.addr, ev.From)
			require.Equal(t, b.addr, ev.To)
			require.NoError(t, ev.Err)
			require.Positive(t, ev.Took)
			require.Equal(t, b.addr, s.Forwarder())
			eventually(t, func() bool { return old.Err() != nil }, "the old Conn is closed")
			talk(t, s, peer)

			st := s.Stats()
			require.Equal(t, uint64(1), st.Failovers)
			require.Equal(t, ev.Took, st.LastGap)
			require.Zero(t, st.Migrations+st.Rejoins)
			require.NoError(t, s.Err())

			local := s.current().LocalAddr()
			require.NoError(t, s.Close())
			require.ErrorIs(t, s.Err(), ErrClosed)
			leaves := b.leaves()
			require.Len(t, leaves, 1, "Close leaves the current forwarder")
			require.Equal(t, local, leaves[0].from)
			for p := range s.Media() { // resent packets may still be queued
				p.Release()
			}
			_, open := <-s.Events()
			require.False(t, open)
			require.NoError(t, s.Close(), "Close is idempotent")
		})
	}
}

// A failover whose re-join lands on the forwarder it left (the only one
// configured, answering again: a stall, not a death) retires the old Conn
// without a leave. The leave went to the forwarder that now holds the
// session for the new socket, and once a keepalive of the old Conn still
// in flight had moved the session back to the old socket (it has that
// socket's cookie), it ended the session: the new Conn's media went
// nowhere until its next keepalive joined it again (systemtest
// TestRedisOutageTalkersChanging at load 19: "address changed" to the new
// socket, back to the old one, "participant left", "participant joined"
// 50-130 ms later, for every member after each failover storm).
func TestSessionFailoverToTheSameForwarderSendsNoLeave(t *testing.T) {
	e := newEnv(t)
	r := e.responder(protocol.SessionParams{KeepaliveInterval: 50 * time.Millisecond, IdleTimeout: time.Minute})
	cfg := e.config(r)
	cfg.FailoverAfter = 300 * time.Millisecond
	who := participant(t, cfg)
	s := e.join(cfg)
	old := s.current()
	oldLocal := old.LocalAddr()

	r.set(func(r *responder) { r.dead = true })
	eventually(t, s.isRejoining, "the Session gives up the silent Conn")
	r.set(func(r *responder) { r.dead = false })
	ev := nextEvent(t, s)
	require.Equal(t, EventFailover, ev.Kind)
	require.Equal(t, r.addr, ev.From)
	require.Equal(t, r.addr, ev.To)
	eventually(t, func() bool { return old.Err() != nil }, "the old Conn is closed")
	local := s.current().LocalAddr()
	require.NotEqual(t, oldLocal, local, "the re-join came from a new socket")
	eventually(t, func() bool { return r.session(who) == local }, "the session is the new socket's")
	require.Empty(t, r.allLeaves(), "no leave to the forwarder the new Conn is on")
	peer := e.dial(e.config(r))
	talk(t, s, peer)
	require.Equal(t, local, r.session(who))
}

// A dead forwarder process on a live host answers with ICMP port
// unreachable: the Session fails over at once, long before FailoverAfter (a
// minute here, so the test cannot pass without the hint), leaving the dead
// forwarder out of the re-join.
func TestSessionFailoverOnPortUnreachable(t *testing.T) {
	e := newEnv(t)
	a, b := e.responder(slowParams), e.responder(slowParams)
	cfg := e.config(a, b)
	cfg.FailoverAfter = time.Minute
	s := e.joinOn(cfg, a, a, b)
	peer := e.dial(e.config(b))

	a.kill()
	pkt := []byte{0x80, 111, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 'x'}
	deadline := time.After(5 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var ev SessionEvent
	for done := false; !done; {
		require.NoError(t, s.WriteRTP(pkt), "writes never fail while the Session re-joins")
		select {
		case ev = <-s.Events():
			done = true
		case <-tick.C:
		case <-deadline:
			t.Fatal("no failover within 5s")
		}
	}
	require.Equal(t, EventFailover, ev.Kind)
	require.Equal(t, a.addr, ev.From)
	require.Equal(t, b.addr, ev.To)
	require.Less(t, ev.Took, cfg.FailoverAfter)
	talk(t, s, peer)
	require.Equal(t, uint64(1), s.Stats().Failovers)
}

// When no forwarder takes the session back within RejoinTimeout, the
// Session ends: EventLost, Err wraps ErrSessionLost, Media and Events
// closed. Writes while it tries are dropped and counted, not errors.
func TestSessionLost(t *testing.T) {
	e := newEnv(t)
	params := protocol.SessionParams{KeepaliveInterval: 50 * time.Millisecond, IdleTimeout: time.Minute}
	a, b := e.responder(params), e.responder(params)
	cfg := e.config(a, b)
	cfg.FailoverAfter = 200 * time.Millisecond
	cfg.RejoinTimeout = 800 * time.Millisecond
	cfg.JoinTimeout = 300 * time.Millisecond
	b.set(func(r *responder) { r.dead = true })
	s := e.joinOn(cfg, a, a)

	a.set(func(r *responder) { r.dead = true })
	eventually(t, s.isRejoining, "the Session gives the silent forwarder up")
	require.NoError(t, s.WriteRTP([]byte{0x80, 111, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 'x'}))
	require.Equal(t, uint64(1), s.Stats().DroppedWhileRejoining)

	ev := nextEvent(t, s)
	require.Equal(t, EventLost, ev.Kind)
	require.Equal(t, a.addr, ev.From)
	require.ErrorIs(t, ev.Err, ErrSessionLost)
	select {
	case <-s.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed")
	}
	require.ErrorIs(t, s.Err(), ErrSessionLost)
	_, open := <-s.Events()
	require.False(t, open)
	for range s.Media() {
	}
	require.ErrorIs(t, s.WriteRTP([]byte{0x80, 111, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 'x'}), ErrSessionLost)
	require.NoError(t, s.Close())
}

// A forwarder that lost the session (here: it restarted, forgetting every
// session and cookie) nudges the device; the device re-joins at once from
// the same socket, on the same forwarder, long before any keepalive timer.
// Nudges beyond one a second are ignored.
func TestSessionRejoinNudgeInPlace(t *testing.T) {
	e := newEnv(t)
	r, other := e.responder(slowParams), e.responder(slowParams)
	cfg := e.config(r, other)
	cfg.FailoverAfter = time.Minute
	who := participant(t, cfg)
	s := e.joinOn(cfg, r, r, other)
	local := s.current().LocalAddr()
	eventually(t, func() bool { return len(transactions(r.from(local))) == 2 }, "the join and the first keepalive")

	r.forget()
	require.False(t, r.session(who).IsValid())
	for range 3 {
		r.tell(t, local, &protocol.Rejoin{Reason: protocol.RejoinUnknownAddress})
	}
	ev := nextEvent(t, s)
	require.Equal(t, EventRejoined, ev.Kind)
	require.Equal(t, r.addr, ev.From)
	require.Equal(t, r.addr, ev.To)
	require.Equal(t, local, r.session(who), "the same socket joined again")
	require.Equal(t, local, s.current().LocalAddr())
	require.NotEmpty(t, r.challenges(local), "the restarted forwarder asked for a new cookie")
	peer := e.dial(e.config(r)) // after forget, which a restart would have done to it too
	talk(t, s, peer)

	eventually(t, func() bool { return s.Stats().RejoinNudges == 3 }, "every nudge seen")
	st := s.Stats()
	require.Equal(t, uint64(1), st.Rejoins)
	require.Equal(t, uint64(2), st.ControlIgnored)
	require.Equal(t, uint64(2), st.Conn.NudgesLimited)
	require.Zero(t, st.Failovers)
	require.Empty(t, other.from(netip.AddrPort{}), "no new join elsewhere")
	require.Empty(t, s.Events())
}

// A nudge whose in-place rejoin goes unanswered turns into a new
// multi-connect join, the nudging forwarder first.
func TestSessionRejoinNudgeEscalates(t *testing.T) {
	e := newEnv(t)
	r, other := e.responder(slowParams), e.responder(slowParams)
	cfg := e.config(r, other)
	cfg.FailoverAfter = time.Minute
	s := e.joinOn(cfg, r, r, other)
	local := s.current().LocalAddr()
	// The answer to the first keepalive must not be in flight when r dies.
	eventually(t, func() bool { return len(transactions(r.from(local))) == 2 }, "the join and the first keepalive")
	eventually(t, func() bool { return s.current().Stats().KeepalivesAnswered >= 1 }, "the first keepalive answered")

	r.set(func(r *responder) { r.dead = true })
	r.tell(t, local, &protocol.Rejoin{})
	ev := nextEvent(t, s)
	require.Equal(t, EventRejoined, ev.Kind)
	require.Equal(t, r.addr, ev.From)
	require.Equal(t, other.addr, ev.To)
	require.Equal(t, other.addr, s.Forwarder())
	require.Equal(t, uint64(1), s.Stats().Rejoins)
}

// MigrateTo moves the Session make-before-break: media keeps going through
// the old forwarder while the new one is joined, and the old one gets the
// leave only after the new join.
func TestSessionMigrateMakeBeforeBreak(t *testing.T) {
	e := newEnv(t)
	a, b := e.responder(slowParams), e.responder(slowParams)
	cfg := e.config(a) // b is not configured: the MigrateTo names it
	s := e.joinOn(cfg, a, a)
	who := participant(t, cfg)
	peerA, peerB := e.dial(e.config(a)), e.dial(e.config(b))
	oldLocal := s.current().LocalAddr()
	// b answers joins late, so the test can look at the switch in progress.
	release := make(chan struct{})
	b.script(func(_ int, req protocol.JoinRequest) []reply {
		if req.ParticipantID != who {
			return []reply{{}}
		}
		return []reply{{first: func() {
			select { // holds b's serving goroutine until released
			case <-release:
			case <-time.After(5 * time.Second):
			}
		}}}
	})

	a.tell(t, oldLocal, &protocol.MigrateTo{Addr: b.addr, Deadline: 10 * time.Second})
	eventually(t, func() bool { return len(b.from(netip.AddrPort{})) > 2 }, "the join reaches b")
	talk(t, s, peerA) // still on a meanwhile
	require.Empty(t, a.leaves())
	released := time.Now()
	close(release)

	ev := nextEvent(t, s)
	require.Equal(t, EventMigrated, ev.Kind)
	require.Equal(t, a.addr, ev.From)
	require.Equal(t, b.addr, ev.To)
	require.Equal(t, b.addr, s.Forwarder())
	eventually(t, func() bool { return len(a.leaves()) == 1 }, "the old forwarder is left")
	leave := a.leaves()[0]
	require.Equal(t, oldLocal, leave.from)
	var joined time.Time
	for _, q := range b.from(netip.AddrPort{}) {
		if q.from == s.current().LocalAddr() {
			joined = q.at
			break
		}
	}
	require.False(t, joined.IsZero())
	require.True(t, joined.Before(leave.at), "joined b before leaving a")
	require.True(t, leave.at.After(released), "a is left only once b has accepted")
	talk(t, s, peerB)
	st := s.Stats()
	require.Equal(t, uint64(1), st.Migrations)
	require.Zero(t, st.DroppedWhileRejoining)
}

// A forged MigrateTo, naming an address where nothing listens or where
// something answers without the token's integrity key, costs one failed
// join: the Session stays on its forwarder, and the attempt is counted.
func TestSessionForgedMigrateTo(t *testing.T) {
	for _, tc := range []struct {
		name   string
		target func(t *testing.T, e *env) netip.AddrPort
	}{
		{"nothing listens", func(t *testing.T, _ *env) netip.AddrPort {
			u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			require.NoError(t, err)
			addr := u.LocalAddr().(*net.UDPAddr).AddrPort()
			require.NoError(t, u.Close())
			return addr
		}},
		{"answers are forged", func(t *testing.T, e *env) netip.AddrPort {
			f := e.responder(slowParams)
			f.script(answer(reply{forge: forgeWrongKey}))
			return f.addr
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			a := e.responder(slowParams)
			cfg := e.config(a)
			cfg.JoinTimeout = 300 * time.Millisecond
			s := e.join(cfg)
			peer := e.dial(e.config(a))
			conn := s.current()
			target := tc.target(t, e)

			a.tell(t, conn.LocalAddr(), &protocol.MigrateTo{Addr: target, Deadline: 10 * time.Second})
			ev := nextEvent(t, s)
			require.Equal(t, EventMigrateFailed, ev.Kind)
			require.Equal(t, a.addr, ev.From)
			require.Equal(t, target, ev.To)
			require.ErrorIs(t, ev.Err, ErrJoinTimeout)
			require.Same(t, conn, s.current(), "the old Conn goes on")
			require.NoError(t, conn.Err())
			require.Empty(t, a.leaves())
			talk(t, s, peer)
			st := s.Stats()
			require.Equal(t, uint64(1), st.MigrationsFailed)
			require.Zero(t, st.Migrations)
		})
	}
}

// Malformed session-control packets from the forwarder are counted and
// change nothing.
func TestSessionMalformedControl(t *testing.T) {
	e := newEnv(t)
	r := e.responder(slowParams)
	s := e.join(e.config(r))
	peer := e.dial(e.config(r))
	conn := s.current()
	r.raw(t, conn.LocalAddr(), []byte{0x86, 0xcc, 0, 2, 0, 0, 0, 0, 'C', 'R', 'L', 'Y'}) // MigrateTo without a body
	r.raw(t, conn.LocalAddr(), []byte{0x9f, 0xcc, 0, 2, 0, 0, 0, 0, 'C', 'R', 'L', 'Y'}) // reserved subtype 31
	eventually(t, func() bool { return s.Stats().Conn.ControlMalformed == 2 }, "counted")
	talk(t, s, peer)
	require.Empty(t, s.Events())
	require.Same(t, conn, s.current())
	st := s.Stats()
	require.Zero(t, st.RejoinNudges+st.Migrations+st.MigrationsFailed+st.ControlIgnored)
	require.NoError(t, s.Err())
}

// Join fails as Dial does, leaving nothing behind.
func TestJoinFails(t *testing.T) {
	e := newEnv(t)
	r := e.responder(fastParams)
	r.script(refuse(protocol.CodeForbidden))
	_, err := Join(testContext(t), e.config(r))
	require.ErrorIs(t, err, ErrJoinRejected)
	var je *JoinError
	require.True(t, errors.As(err, &je))
	_, err = Join(testContext(t), Config{})
	require.ErrorIs(t, err, ErrConfig)
}

// A MigrateTo whose target does not take the device falls back to the
// other configured forwarders, never the draining one, still
// make-before-break.
func TestSessionMigrateFallsBack(t *testing.T) {
	e := newEnv(t)
	a, c := e.responder(slowParams), e.responder(slowParams)
	cfg := e.config(a, c)
	cfg.JoinTimeout = 300 * time.Millisecond
	s := e.joinOn(cfg, a, a, c)
	u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	dead := u.LocalAddr().(*net.UDPAddr).AddrPort()
	require.NoError(t, u.Close())
	local := s.current().LocalAddr()

	a.tell(t, local, &protocol.MigrateTo{Addr: dead, Deadline: 10 * time.Second})
	ev := nextEvent(t, s)
	require.Equal(t, EventMigrated, ev.Kind)
	require.Equal(t, a.addr, ev.From)
	require.Equal(t, c.addr, ev.To)
	eventually(t, func() bool { return len(a.leaves()) == 1 }, "the draining forwarder is left")
	for _, q := range a.all(netip.AddrPort{}) {
		require.Equal(t, local, q.from, "no new join on the draining forwarder")
	}
	require.Equal(t, uint64(1), s.Stats().Migrations)
}
