package client

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

func TestDialMultiConnectKeepsFirstAndLeavesLoser(t *testing.T) {
	for _, tc := range []struct {
		name       string
		loserDelay time.Duration // the loser accepts this much later
		rotate     bool          // the loser rotates its cookie secret once it has accepted
	}{
		{"loser accepts later", 200 * time.Millisecond, false},
		{"both accept at once", 0, false},
		{"loser's cookie rotated before the leave", 200 * time.Millisecond, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			a, b := e.responder(fastParams), e.responder(fastParams)
			// Both admit the join before either answers it (each join takes
			// the address check's round trip first, so otherwise the loser
			// might still be at its 401 when the winner is chosen, and then
			// never join at all).
			both := make(chan struct{})
			var arrived atomic.Int32
			rendezvous := func() {
				if arrived.Add(1) == 2 {
					close(both)
				}
				select {
				case <-both:
				case <-time.After(3 * time.Second):
				}
			}
			rb := reply{delay: tc.loserDelay}
			if tc.rotate {
				var once sync.Once
				rb.first = func() { once.Do(b.rotate) } // the leave's cookie is now stale
			}
			for r, rp := range map[*responder]reply{a: {}, b: rb} {
				var once sync.Once
				r.script(func(int, protocol.JoinRequest) []reply {
					once.Do(rendezvous)
					return []reply{rp}
				})
			}
			cfg := e.config(a, b)
			cfg.LoserGrace = 3 * time.Second // Close cuts it short
			c := e.dial(cfg)
			winner, loser := a, b
			if c.Forwarder() == b.addr {
				require.Zero(t, tc.loserDelay, "the delayed forwarder must not win")
				winner, loser = b, a
			}
			require.Equal(t, winner.addr, c.Forwarder())
			require.Equal(t, c.LocalAddr(), c.MappedAddr())

			eventually(t, func() bool { return len(loser.leaves()) == 1 }, "the loser that accepted gets a leave")
			join := loser.from(netip.AddrPort{})[0]
			require.Equal(t, join.from, loser.leaves()[0].from, "the leave comes from the socket that joined")
			require.Empty(t, winner.leaves(), "the winner keeps its session")
			if tc.loserDelay == 0 { // delayed answers to retransmissions would re-add it
				eventually(t, func() bool { return !loser.session(participant(t, cfg)).IsValid() }, "the loser freed the session")
			}
			if !tc.rotate {
				for _, r := range []*responder{a, b} {
					q := r.from(netip.AddrPort{})[0]
					require.Equal(t, r.cookie(q.from), q.cookie, "each socket echoes its own cookie")
				}
			}
			if tc.rotate {
				all := loser.allLeaves()
				require.Len(t, all, 2, "the stale-cookie leave is challenged, then repeated")
				require.True(t, all[0].challenged)
				require.Equal(t, loser.cookie(join.from), all[1].cookie)
			} else {
				require.Len(t, loser.allLeaves(), 1, "the join's cookie is still good for the leave")
				require.Equal(t, join.cookie, loser.leaves()[0].cookie)
			}
		})
	}
}

func TestDialSilentCandidate(t *testing.T) {
	e := newEnv(t)
	dead, live := e.responder(fastParams), e.responder(fastParams)
	dead.script(silent)
	live.script(func(n int, _ protocol.JoinRequest) []reply {
		if n < 2 {
			return nil // lose the first two copies: retransmission must carry the join
		}
		return []reply{{}}
	})
	c := e.dial(e.config(dead, live))
	require.Equal(t, live.addr, c.Forwarder())

	got := live.from(netip.AddrPort{})
	require.GreaterOrEqual(t, len(got), 3)
	for _, q := range got[1:3] {
		require.Equal(t, got[0].tid, q.tid, "a retransmission repeats the transaction")
	}
	require.GreaterOrEqual(t, got[1].at.Sub(got[0].at), 10*time.Millisecond, "retransmissions wait (20 ms configured; half of it allows for scheduling on a loaded machine)")
	eventually(t, func() bool { return len(dead.from(netip.AddrPort{})) >= 2 }, "the silent one was tried and retried too")
	require.Empty(t, dead.leaves(), "no leave to a forwarder that never accepted")
}

func TestDialFollowsTryAlternate(t *testing.T) {
	e := newEnv(t)
	busy, alt := e.responder(fastParams), e.responder(fastParams)
	busy.script(answer(reply{err: &protocol.JoinError{Code: protocol.CodeTryAlternate, Reason: "draining", Alternate: alt.addr}}))
	c := e.dial(e.config(busy))
	require.Equal(t, alt.addr, c.Forwarder())
	require.Len(t, transactions(busy.from(netip.AddrPort{})), 1, "one join to busy (its retransmissions are the same join)")
}

// The responders record every datagram, and a join is retransmitted 20 ms
// after it was sent (env.config) until its answer is read: on a loaded
// machine the 300 can take longer, and the same join then reaches the same
// forwarder twice (same transaction id; RFC 8489 retransmission, not a new
// try). "Tried once" is therefore one transaction, and "never tried" no
// datagram at all.
func TestDialTryAlternateIsBounded(t *testing.T) {
	to := func(r *responder) func(int, protocol.JoinRequest) []reply {
		return answer(reply{err: &protocol.JoinError{Code: protocol.CodeTryAlternate, Reason: "go away", Alternate: r.addr}})
	}
	t.Run("loop", func(t *testing.T) {
		e := newEnv(t)
		a, b := e.responder(fastParams), e.responder(fastParams)
		a.script(to(b))
		b.script(to(a))
		_, err := Dial(testContext(t), e.config(a))
		require.ErrorIs(t, err, ErrJoinRejected)
		require.NotErrorIs(t, err, ErrJoinTimeout, "a loop ends at once, not at the timeout")
		var je *JoinError
		require.ErrorAs(t, err, &je)
		require.Equal(t, protocol.CodeTryAlternate, je.Code)
		require.Len(t, transactions(a.from(netip.AddrPort{})), 1, "never back to an address already tried")
	})
	t.Run("chain", func(t *testing.T) {
		e := newEnv(t)
		rs := []*responder{e.responder(fastParams), e.responder(fastParams), e.responder(fastParams), e.responder(fastParams)}
		for i := range 3 {
			rs[i].script(to(rs[i+1]))
		}
		cfg := e.config(rs[0])
		cfg.MaxAlternates = 2
		_, err := Dial(testContext(t), cfg)
		require.ErrorIs(t, err, ErrJoinRejected)
		require.Len(t, transactions(rs[2].from(netip.AddrPort{})), 1, "the second alternate is tried once")
		require.Empty(t, rs[3].all(netip.AddrPort{}), "the third alternate is beyond MaxAlternates: not one datagram")
	})
	// Negative follows none, through Join as through Dial: Join defaults
	// the config and Dial defaults it again, which once turned "none"
	// into the default of 4.
	t.Run("none", func(t *testing.T) {
		e := newEnv(t)
		a, b := e.responder(fastParams), e.responder(fastParams)
		a.script(to(b))
		cfg := e.config(a)
		cfg.MaxAlternates = -1
		_, err := Join(testContext(t), cfg)
		var je *JoinError
		require.ErrorAs(t, err, &je)
		require.Equal(t, protocol.CodeTryAlternate, je.Code)
		require.Equal(t, b.addr, je.Alternate, "the refusal names the alternate, for the caller to decide")
		require.Empty(t, b.all(netip.AddrPort{}), "not followed: not one datagram")
	})
}

func TestDialRetryAfterInsufficientCapacity(t *testing.T) {
	e := newEnv(t)
	r := e.responder(fastParams)
	const retryAfter = 150 * time.Millisecond
	var mu sync.Mutex
	var first *[stun.TransactionIDSize]byte
	r.script(func(_ int, req protocol.JoinRequest) []reply {
		mu.Lock()
		defer mu.Unlock()
		if first == nil {
			first = &req.TransactionID
		}
		if *first == req.TransactionID { // every copy of the first transaction
			return []reply{{err: &protocol.JoinError{Code: protocol.CodeInsufficientCapacity, Reason: "throttled", RetryAfter: retryAfter}}}
		}
		return []reply{{}}
	})
	c := e.dial(e.config(r))
	require.Equal(t, r.addr, c.Forwarder())

	// The refused join, the retry, and perhaps already the first keepalive,
	// one entry per transaction: the refused join may have been
	// retransmitted (same transaction) before its 508 was read.
	got := transactions(r.from(netip.AddrPort{}))
	require.GreaterOrEqual(t, len(got), 2, "the retry is a new transaction")
	require.LessOrEqual(t, len(got), 3)
	wait := got[1].at.Sub(got[0].at)
	require.GreaterOrEqual(t, wait, retryAfter, "never before retry-after")
	// At most 20 % later than retry-after is retryDelay's promise
	// (TestRetryDelayJitter); here the timer and a loaded machine may add
	// any delay.
}

// The wait after a 508 is its retry-after plus up to a fifth more, spread
// so that refused devices do not come back at once; capped by
// MaxRetryAfter, and a second when the forwarder gave none.
func TestRetryDelayJitter(t *testing.T) {
	d := &dialer{cfg: Config{MaxRetryAfter: 10 * time.Second}}
	const ra = 500 * time.Millisecond
	lo, hi := time.Hour, time.Duration(0)
	for range 2000 {
		w := d.retryDelay(ra)
		lo, hi = min(lo, w), max(hi, w)
	}
	require.GreaterOrEqual(t, lo, ra)
	require.LessOrEqual(t, hi, ra*6/5)
	require.Greater(t, hi-lo, ra/10, "the jitter spreads over most of its fifth")
	w := d.retryDelay(time.Minute)
	require.True(t, w >= 10*time.Second && w <= 12*time.Second, "capped by MaxRetryAfter: %v", w)
	w = d.retryDelay(0)
	require.True(t, w >= time.Second && w <= 1200*time.Millisecond, "none given: a second: %v", w)
}

func TestDialRetryAfterPastDeadlineFailsAtOnce(t *testing.T) {
	e := newEnv(t)
	r := e.responder(fastParams)
	r.script(answer(reply{err: &protocol.JoinError{Code: protocol.CodeInsufficientCapacity, Reason: "throttled", RetryAfter: 2 * time.Hour}}))
	cfg := e.config(r)
	cfg.JoinTimeout = time.Hour
	cfg.MaxRetryAfter = 3 * time.Hour
	// The deadline is an hour away and the retry-after two: Dial gives up
	// at once, while its context is still alive. No clock needed.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var err error
	returns(t, "Dial (a retry-after past the deadline fails at once)", func() { _, err = Dial(ctx, cfg) })
	require.NoError(t, ctx.Err())
	require.ErrorIs(t, err, ErrJoinTimeout)
	var je *JoinError
	require.ErrorAs(t, err, &je)
	require.Equal(t, protocol.CodeInsufficientCapacity, je.Code)
	require.Equal(t, 2*time.Hour, je.RetryAfter)
}

func TestDialRefusedEverywhere(t *testing.T) {
	for _, tc := range []struct {
		name string
		code stun.ErrorCode
	}{
		{"400 bad request", protocol.CodeBadRequest},
		{"401 unauthorized (wrong signing key)", protocol.CodeUnauthorized},
		{"403 forbidden", protocol.CodeForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			var a, b *responder
			if tc.code == protocol.CodeUnauthorized {
				// Forwarders that trust another signing key: CheckJoin's own 401.
				other := newEnv(t)
				a, b = other.responder(fastParams), other.responder(fastParams)
			} else {
				a, b = e.responder(fastParams), e.responder(fastParams)
				a.script(refuse(tc.code))
				b.script(refuse(tc.code))
			}
			_, err := Dial(testContext(t), e.config(a, b))
			require.ErrorIs(t, err, ErrJoinRejected)
			var je *JoinError
			require.ErrorAs(t, err, &je)
			require.Equal(t, tc.code, je.Code)
			require.Contains(t, []netip.AddrPort{a.addr, b.addr}, je.Forwarder)
			var all multiError
			require.ErrorAs(t, err, &all)
			require.Len(t, all, 2, "one refusal per forwarder: %v", err)
			for _, r := range []*responder{a, b} {
				// One per transaction: a copy retransmitted while the answer
				// was on its way is the same request.
				require.Len(t, transactions(r.challenges(netip.AddrPort{})), 1, "the address check first")
				require.Len(t, transactions(r.from(netip.AddrPort{})), 1, "then one refused join, not retried")
			}
		})
	}
}

func TestDialIgnoresUnauthenticatedAnswers(t *testing.T) {
	forged := []reply{
		{err: &protocol.JoinError{Code: protocol.CodeUnauthorized, Reason: "forged"}, forge: forgeNoIntegrity},
		{err: &protocol.JoinError{Code: protocol.CodeUnauthorized, Reason: "forged", Cookie: []byte("forged cookie")}, forge: forgeWrongKey},
		{err: &protocol.JoinError{Code: protocol.CodeForbidden, Reason: "forged"}, forge: forgeWrongKey},
		{forge: forgeWrongKey}, // a forged success
	}
	t.Run("then genuine", func(t *testing.T) {
		e := newEnv(t)
		r := e.responder(fastParams)
		r.script(func(n int, _ protocol.JoinRequest) []reply {
			if n == 0 {
				return append(forged, reply{})
			}
			return nil
		})
		c := e.dial(e.config(r))
		require.Equal(t, uint64(len(forged)), c.Stats().Unauthenticated)
	})
	t.Run("only forged", func(t *testing.T) {
		e := newEnv(t)
		r := e.responder(fastParams)
		r.script(answer(forged...))
		cfg := e.config(r)
		cfg.JoinTimeout = 300 * time.Millisecond
		_, err := Dial(testContext(t), cfg)
		require.ErrorIs(t, err, ErrJoinTimeout)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		var je *JoinError
		require.False(t, errors.As(err, &je), "a forged refusal is not a refusal: %v", err)
	})
}

func TestDialConfigErrors(t *testing.T) {
	e := newEnv(t)
	tok, _ := e.token()
	for name, cfg := range map[string]Config{
		"no forwarders": {Token: tok},
		"bad address":   {Token: tok, Forwarders: []netip.AddrPort{{}}},
		"no port":       {Token: tok, Forwarders: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}},
		"bad token":     {Token: []byte("nope"), Forwarders: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:9")}},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Dial(testContext(t), cfg)
			require.ErrorIs(t, err, ErrConfig)
		})
	}
}

func TestDialContextCancelled(t *testing.T) {
	e := newEnv(t)
	r := e.responder(fastParams)
	r.script(silent)
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(50*time.Millisecond, cancel)
	_, err := Dial(ctx, e.config(r))
	require.ErrorIs(t, err, ErrJoinTimeout)
	require.ErrorIs(t, err, context.Canceled)
}

// A 300 Try Alternate is followed only if its MESSAGE-INTEGRITY verifies: a
// forged one naming the attacker's socket is ignored and counted, and
// nothing (no token) is ever sent there.
func TestDialIgnoresForgedTryAlternate(t *testing.T) {
	e := newEnv(t)
	thief, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer thief.Close()
	r := e.responder(fastParams)
	forged := &protocol.JoinError{Code: protocol.CodeTryAlternate, Reason: "forged",
		Alternate: thief.LocalAddr().(*net.UDPAddr).AddrPort()}
	r.script(func(n int, _ protocol.JoinRequest) []reply {
		if n == 0 {
			return []reply{{err: forged, forge: forgeWrongKey}, {err: forged, forge: forgeNoIntegrity}, {}}
		}
		return nil
	})
	c := e.dial(e.config(r))
	require.Equal(t, r.addr, c.Forwarder())
	require.Equal(t, uint64(2), c.Stats().Unauthenticated)
	require.NoError(t, thief.SetReadDeadline(time.Now().Add(200*time.Millisecond)))
	n, _, err := thief.ReadFromUDPAddrPort(make([]byte, 2048))
	require.Error(t, err, "the forged alternate received %d bytes", n)
}
