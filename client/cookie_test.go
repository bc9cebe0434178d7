package client

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// The address check costs a join exactly one round trip: the cookie-less
// join is answered 401+cookie, the repeat (a new transaction) carries the
// socket's own cookie and is admitted; keepalives then carry it too.
func TestJoinCookieOneRoundTrip(t *testing.T) {
	e := newEnv(t)
	r := e.responder(protocol.SessionParams{KeepaliveInterval: 50 * time.Millisecond, IdleTimeout: 2 * time.Second})
	c := e.dial(e.config(r))
	local := c.LocalAddr()
	cookie := r.cookie(local)

	got := transactions(r.all(local))
	require.GreaterOrEqual(t, len(got), 2)
	require.True(t, got[0].challenged)
	require.Empty(t, got[0].cookie, "a new socket has no cookie")
	require.False(t, got[1].challenged)
	require.Equal(t, cookie, got[1].cookie, "the repeat echoes this socket's cookie")
	require.NotEqual(t, got[0].tid, got[1].tid, "the repeat is a new transaction")
	for _, q := range r.all(netip.AddrPort{}) {
		require.Equal(t, local, q.from, "one socket only")
	}
	require.Equal(t, uint64(1), c.Stats().CookieRetries)

	eventually(t, func() bool { return len(r.from(local)) >= 4 }, "keepalives arrive")
	for _, q := range r.from(local)[1:4] {
		require.Equal(t, cookie, q.cookie, "keepalives carry the latest cookie")
	}
	require.Len(t, transactions(r.challenges(netip.AddrPort{})), 1, "exactly one extra round trip")
	require.NoError(t, c.Err())
}

// A forwarder that asks for the cookie on keepalives too (here after it
// rotated its secret): the keepalive's 401+cookie does not end the session;
// the device takes the new cookie and resends at once.
func TestKeepaliveCookieRotationKeepsSession(t *testing.T) {
	e := newEnv(t)
	const interval = 400 * time.Millisecond
	r := e.responder(protocol.SessionParams{KeepaliveInterval: interval, IdleTimeout: 5 * time.Second})
	r.set(func(r *responder) { r.cookieAlways = true })
	c := e.dial(e.config(r))
	local := c.LocalAddr()
	old := r.cookie(local)

	// Transactions from the rotation on: a late retransmission of the join
	// (same transaction, sent before its answer was read) may meet the
	// rotation too; it is not the keepalive this test is about.
	before := len(transactions(r.all(local)))
	since := func() []request { return transactions(r.all(local))[before:] }
	r.rotate()
	fresh := r.cookie(local)
	require.NotEqual(t, old, fresh)
	eventually(t, func() bool { return len(refusedOnly(since())) == 1 }, "a keepalive meets the rotation")
	eventually(t, func() bool {
		got := since()
		return !got[len(got)-1].challenged
	}, "the keepalive is resent")

	got := since()
	i := 0
	for i = len(got) - 1; !got[i].challenged; i-- {
	}
	require.Equal(t, old, got[i].cookie, "the keepalive carried the old cookie")
	resent := got[i+1]
	require.False(t, resent.challenged)
	require.Equal(t, fresh, resent.cookie)
	require.NotEqual(t, got[i].tid, resent.tid)
	// Resent at once, because of the 401, not at the next tick: the resend
	// is counted as a cookie retry (the join's was the first). No clock.
	require.Equal(t, uint64(2), c.Stats().CookieRetries, "the keepalive was resent for the 401")

	answered := c.Stats().KeepalivesAnswered
	eventually(t, func() bool { return c.Stats().KeepalivesAnswered > answered+1 }, "keepalives keep being answered")
	require.NoError(t, c.Err())
	require.Len(t, refusedOnly(since()), 1, "the new cookie is used from then on")
	for _, q := range since()[i+1:] {
		require.Equal(t, fresh, q.cookie)
	}
}

// refusedOnly returns the requests among qs that the address check refused.
func refusedOnly(qs []request) []request {
	var out []request
	for _, q := range qs {
		if q.challenged {
			out = append(out, q)
		}
	}
	return out
}

// A forwarder that answers every keepalive 401+cookie: the device resends at
// most maxCookieRounds times between keepalive ticks instead of spinning, and
// the idle timeout, not the 401, ends the session.
func TestKeepaliveEndlessCookieIsBounded(t *testing.T) {
	e := newEnv(t)
	const interval, idle = 50 * time.Millisecond, 500 * time.Millisecond
	r := e.responder(protocol.SessionParams{KeepaliveInterval: interval, IdleTimeout: idle})
	c := e.dial(e.config(r))
	local := c.LocalAddr()
	before := len(r.all(local))
	start := time.Now()
	r.set(func(r *responder) { r.challengeAll = true })
	select {
	case <-c.Done():
	case <-time.After(20 * time.Second): // a liveness net, 40 times the idle timeout
		t.Fatal("session not ended by the idle timeout")
	}
	require.ErrorIs(t, c.Err(), ErrSessionLost)
	// The allowance grows with the time measured: a slow machine loosens
	// it, never breaks it.
	ticks := int(time.Since(start)/interval) + 2
	sent := len(r.all(local)) - before
	require.LessOrEqual(t, sent, ticks*(1+maxCookieRounds), "bounded resends per keepalive")
	require.GreaterOrEqual(t, sent, 1+maxCookieRounds, "but the device did resend")
}

// Close's leave carries the cookie it has; when the forwarder has rotated
// its secret meanwhile, the leave is repeated at once with the new one.
func TestCloseLeaveWithCookie(t *testing.T) {
	for _, rotate := range []bool{false, true} {
		name := map[bool]string{false: "cookie still valid", true: "cookie rotated"}[rotate]
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			r := e.responder(fastParams)
			cfg := e.config(r)
			cfg.LeaveTimeout = time.Hour // only the answer can end Close within the test
			who := participant(t, cfg)
			c := e.dial(cfg)
			local := c.LocalAddr()
			if rotate {
				r.rotate()
			}
			var err error
			returns(t, "Close (the leave was answered, not timed out)", func() { err = c.Close() })
			require.NoError(t, err)

			leaves := transactions(r.leaves())
			require.Len(t, leaves, 1, "the leave passed the address check")
			require.Equal(t, local, leaves[0].from)
			require.Equal(t, r.cookie(local), leaves[0].cookie)
			require.False(t, r.session(who).IsValid(), "the session ended")
			if rotate {
				all := transactions(r.allLeaves())
				require.Len(t, all, 2)
				require.True(t, all[0].challenged)
				require.NotEqual(t, all[0].cookie, all[1].cookie)
				require.NotEqual(t, all[0].tid, all[1].tid)
			} else {
				require.Len(t, transactions(r.allLeaves()), 1)
			}
		})
	}
}

// A 401 without a cookie is still a refusal, even after the address check.
func TestDialUnauthorizedWithoutCookieFails(t *testing.T) {
	e := newEnv(t)
	r := e.responder(fastParams)
	r.script(refuse(protocol.CodeUnauthorized))
	_, err := Dial(testContext(t), e.config(r))
	// ErrJoinRejected, not ErrJoinTimeout: the refusal ended Dial, not the
	// deadline. No clock needed.
	require.ErrorIs(t, err, ErrJoinRejected)
	require.NotErrorIs(t, err, ErrJoinTimeout)
	var je *JoinError
	require.ErrorAs(t, err, &je)
	require.Equal(t, protocol.CodeUnauthorized, je.Code)
	require.Equal(t, "scripted", je.Reason)
	// Transactions, not datagrams: on a loaded machine the join may be
	// retransmitted (same transaction id) before the 401+cookie is read,
	// and the responder challenges every copy.
	challenged := transactions(r.challenges(netip.AddrPort{}))
	require.Len(t, challenged, 1, "one address check")
	admitted := transactions(r.from(netip.AddrPort{}))
	require.Len(t, admitted, 1, "not retried")
	require.NotEqual(t, challenged[0].tid, admitted[0].tid, "the repeat is a new transaction")
	require.Equal(t, r.cookie(admitted[0].from), admitted[0].cookie, "the refused repeat carried the cookie")
}

// A forwarder that never stops asking for a new cookie fails Dial (and
// Rebind) after maxCookieRounds repeats, at once, instead of looping.
func TestEndlessCookieIsBounded(t *testing.T) {
	t.Run("dial", func(t *testing.T) {
		e := newEnv(t)
		r := e.responder(fastParams)
		r.set(func(r *responder) { r.challengeAll = true })
		_, err := Dial(testContext(t), e.config(r))
		require.ErrorIs(t, err, ErrJoinRejected)
		require.NotErrorIs(t, err, ErrJoinTimeout, "refused at once, not at the timeout")
		var je *JoinError
		require.ErrorAs(t, err, &je)
		require.Equal(t, protocol.CodeUnauthorized, je.Code)
		require.Equal(t, r.addr, je.Forwarder)
		require.Equal(t, 1+maxCookieRounds, distinctTIDs(r.all(netip.AddrPort{})))
	})
	t.Run("rebind", func(t *testing.T) {
		e := newEnv(t)
		r := e.responder(fastParams)
		c := e.dial(e.config(r))
		old := c.LocalAddr()
		r.set(func(r *responder) { r.challengeAll = true })
		err := c.Rebind(testContext(t), netip.MustParseAddr("127.0.0.1"))
		var je *JoinError
		require.ErrorAs(t, err, &je)
		require.Equal(t, protocol.CodeUnauthorized, je.Code)
		require.NotErrorIs(t, err, ErrJoinTimeout, "refused at once, not at the timeout")
		require.Equal(t, old, c.LocalAddr(), "the session stays on the old socket")
		require.NoError(t, c.Err())
	})
}

// transactions collapses retransmissions: the first request of each
// transaction (by transaction id), in arrival order. A request may be
// retransmitted before its answer is read (RFC 8489: same transaction id),
// more often on a loaded machine with the tests' 20 ms RetransmitInitial,
// and the responder records and answers every copy; tests that count
// requests count these.
func transactions(qs []request) []request {
	seen := map[[12]byte]bool{}
	var out []request
	for _, q := range qs {
		if !seen[q.tid] {
			seen[q.tid] = true
			out = append(out, q)
		}
	}
	return out
}

func distinctTIDs(qs []request) int {
	seen := map[[12]byte]bool{}
	for _, q := range qs {
		seen[q.tid] = true
	}
	return len(seen)
}

// Rebind: the new socket's join gets 401+cookie first and is repeated with
// the new socket's cookie; keepalives from the new socket then carry that
// cookie, never the old socket's.
func TestRebindWithCookie(t *testing.T) {
	e := newEnv(t)
	r := e.responder(fastParams)
	cfg := e.config(r)
	who := participant(t, cfg)
	c := e.dial(cfg)
	old := c.LocalAddr()

	require.NoError(t, c.Rebind(testContext(t), netip.MustParseAddr("127.0.0.1")))
	moved := c.LocalAddr()
	require.Equal(t, moved, r.session(who))
	got := transactions(r.all(moved))
	require.GreaterOrEqual(t, len(got), 2)
	require.True(t, got[0].challenged)
	require.Empty(t, got[0].cookie, "the old socket's cookie is not offered from the new one")
	require.Equal(t, r.cookie(moved), got[1].cookie)
	require.NotEqual(t, r.cookie(old), r.cookie(moved))
	eventually(t, func() bool { return len(r.from(moved)) >= 2 }, "a keepalive from the new socket")
	for _, q := range r.from(moved) {
		require.Equal(t, r.cookie(moved), q.cookie)
	}
	require.Equal(t, uint64(2), c.Stats().CookieRetries, "one for the join, one for the rebind")
}

// A keepalive in flight from the old socket reaches the forwarder after the
// rebind's join and moves the session back to the old address (it carries
// the old socket's valid cookie). The keepalive Rebind sends at once from
// the new socket moves it forward again, well before the next interval.
func TestRebindKeepaliveRaceFromOldSocket(t *testing.T) {
	e := newEnv(t)
	// An hour between keepalives: any keepalive from the new socket within
	// the test is the one Rebind sends at once.
	r := e.responder(protocol.SessionParams{KeepaliveInterval: time.Hour, IdleTimeout: 3 * time.Hour})
	cfg := e.config(r)
	who := participant(t, cfg)
	c := e.dial(cfg)
	old := c.LocalAddr()
	var once sync.Once
	movedBack := make(chan struct{})
	r.set(func(r *responder) {
		r.after = func(req protocol.JoinRequest, from netip.AddrPort) {
			if from != old && !req.Leave {
				once.Do(func() { // the old keepalive lands just after the rebind's join
					r.mu.Lock()
					r.sessions[who] = old
					r.mu.Unlock()
					close(movedBack)
				})
			}
		}
	})

	require.NoError(t, c.Rebind(testContext(t), netip.MustParseAddr("127.0.0.1")))
	moved := c.LocalAddr()
	select {
	case <-movedBack:
	case <-time.After(10 * time.Second): // a liveness net: Rebind has returned, its join was answered
		t.Fatal("the rebind's join never reached the forwarder")
	}
	eventually(t, func() bool { return r.session(who) == moved && len(r.from(moved)) >= 2 },
		"the keepalive sent at the switch moves the session back to the new address")
	ka := r.from(moved)
	require.False(t, ka[1].leave)
	require.Equal(t, r.cookie(moved), ka[1].cookie, "the keepalive carries the new socket's cookie (a move needs it)")
}

// The same forwarder given twice (or once more as an IPv4-mapped address) is
// one candidate: one socket, one join.
func TestDialDedupesForwarders(t *testing.T) {
	e := newEnv(t)
	r := e.responder(fastParams)
	cfg := e.config(r)
	mapped := netip.AddrPortFrom(netip.AddrFrom16(r.addr.Addr().As16()), r.addr.Port())
	cfg.Forwarders = []netip.AddrPort{r.addr, r.addr, mapped}
	c := e.dial(cfg)
	require.Equal(t, r.addr, c.Forwarder())
	froms := map[netip.AddrPort]bool{}
	for _, q := range r.all(netip.AddrPort{}) {
		froms[q.from] = true
	}
	require.Len(t, froms, 1, "one socket")
	require.Len(t, transactions(r.challenges(netip.AddrPort{})), 1)
	// The join, then the first keepalive (sent before Dial returns).
	eventually(t, func() bool { return len(transactions(r.from(netip.AddrPort{}))) == 2 }, "one join and one keepalive")
	require.Len(t, transactions(r.challenges(netip.AddrPort{})), 1, "one join")
	require.Len(t, cfg.Forwarders, 3, "the caller's slice is left alone")
}

// returns runs f, which only an answer can end (its own timeout is set to
// an hour), and fails the test if f has not returned within a minute. The
// minute is a liveness net, generous on a loaded machine, not a claim of
// speed: the timeout it tells apart is sixty times longer.
func returns(t *testing.T, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatalf("%s: still waiting after a minute", what)
	}
}
