package client

import (
	"sync"
	"testing"
	"time"

	"github.com/pion/rtcp"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// subLog collects the Subscriptions an observer receives (relayed by the
// test's stand-in relay, which forwards every datagram; the real forwarder
// consumes them, and is covered by its own tests).
type subLog struct {
	mu   sync.Mutex
	subs []gotSub
}

type gotSub struct {
	at  time.Time
	sub protocol.Subscription
}

func (l *subLog) add(b []byte) {
	m, _, err := protocol.ParseRelayApp(b)
	if err != nil {
		return
	}
	if s, ok := m.(*protocol.Subscription); ok {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.subs = append(l.subs, gotSub{at: time.Now(), sub: *s})
	}
}

func (l *subLog) all() []gotSub {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]gotSub(nil), l.subs...)
}

// withSeq returns the subscriptions received with sequence seq.
func (l *subLog) withSeq(seq uint16) []gotSub {
	var out []gotSub
	for _, s := range l.all() {
		if s.sub.Sequence == seq {
			out = append(out, s)
		}
	}
	return out
}

func video(p protocol.ID, h uint16, fps uint8) protocol.VideoSubscription {
	return protocol.VideoSubscription{Participant: p, MaxHeight: h, MaxFrameRate: fps}
}

// Conn.Subscribe sends each new set under the next sequence number,
// refuses a set the format cannot carry, sends the current set again every
// 2s, and at once after an in-place rejoin.
func TestConnSubscribe(t *testing.T) {
	e := newEnv(t)
	r := e.responder(slowParams)
	x, y := e.dial(e.config(r)), e.dial(e.config(r))
	var got subLog
	observe(t, y, nil, onRTCP(got.add))
	a, b := protocol.NewID(), protocol.NewID()

	_, ok := x.Subscription()
	require.False(t, ok)
	require.NoError(t, x.Subscribe([]protocol.VideoSubscription{video(a, 360, 15)}))
	eventually(t, func() bool { return len(got.withSeq(1)) == 1 }, "the first set, sequence 1")
	require.Equal(t, []protocol.VideoSubscription{video(a, 360, 15)}, got.withSeq(1)[0].sub.Videos)

	two := []protocol.VideoSubscription{video(a, 720, 30), video(b, 180, 0)}
	require.NoError(t, x.Subscribe(two))
	sent := time.Now()
	eventually(t, func() bool { return len(got.withSeq(2)) == 1 }, "the second set, sequence 2")
	require.Equal(t, two, got.withSeq(2)[0].sub.Videos)

	var many []protocol.VideoSubscription
	for range protocol.MaxSubscriptions + 1 {
		many = append(many, video(protocol.NewID(), 0, 0))
	}
	require.ErrorIs(t, x.Subscribe(many), protocol.ErrRelayAppInvalid)
	require.ErrorIs(t, x.Subscribe([]protocol.VideoSubscription{video(a, 1, 1), video(a, 2, 2)}), protocol.ErrRelayAppInvalid)
	cur, ok := x.Subscription()
	require.True(t, ok)
	require.Equal(t, uint16(2), cur.Sequence, "a refused set changes nothing")
	require.Equal(t, two, cur.Videos)

	require.Eventually(t, func() bool { return len(got.withSeq(2)) == 2 }, 4*SubscriptionResend, 10*time.Millisecond, "resent")
	// Not before the period (sent is read just after the first went out);
	// how late is the timer's business on a loaded machine.
	require.GreaterOrEqual(t, got.withSeq(2)[1].at.Sub(sent), SubscriptionResend-100*time.Millisecond)
	require.Len(t, got.all(), 3, "nothing else")

	// A Rejoin nudge: the Conn re-sends its join; once the forwarder has
	// answered it, the set goes again, long before the timer.
	sent = got.withSeq(2)[1].at
	r.tell(t, x.LocalAddr(), &protocol.Rejoin{Reason: protocol.RejoinUnknownAddress})
	eventually(t, func() bool { return len(got.withSeq(2)) == 3 }, "resent after the rejoin")
	// Before the timer would have sent it: the one bound that tells the
	// two apart (a loaded machine would need a 2 s round trip to break it).
	require.Less(t, got.withSeq(2)[2].at.Sub(sent), SubscriptionResend)

	require.NoError(t, x.Close())
	require.ErrorIs(t, x.Subscribe(two), ErrClosed)
}

// A Subscriber on a Session sends its set again on the Session's new Conn
// after a failover.
func TestSessionSubscriberFollowsFailover(t *testing.T) {
	e := newEnv(t)
	params := protocol.SessionParams{KeepaliveInterval: 100 * time.Millisecond, IdleTimeout: 10 * time.Second}
	a, b := e.responder(params), e.responder(params)
	cfg := e.config(a, b)
	cfg.FailoverAfter = time.Minute
	s := e.joinOn(cfg, a, a, b)
	y := e.dial(e.config(b))
	var got subLog
	observe(t, y, nil, onRTCP(got.add))
	go func() { // the Session's media is not this test's business
		for p := range s.Media() {
			p.Release()
		}
	}()

	sub := NewSubscriber(s, 0x42)
	t.Cleanup(sub.Close)
	p := protocol.NewID()
	require.NoError(t, sub.Subscribe([]protocol.VideoSubscription{video(p, 360, 30)}))
	a.kill() // port unreachable: the Session fails over to b, where y is
	ev := nextEvent(t, s)
	switched := time.Now()
	require.Equal(t, EventFailover, ev.Kind)
	eventually(t, func() bool { return len(got.withSeq(1)) > 0 }, "the set reaches the new forwarder")
	require.Less(t, got.withSeq(1)[0].at.Sub(switched), SubscriptionResend, "at once, not at the next resend (the period is the bound that tells them apart)")
	// The send is counted once the write has returned, so the set can
	// reach y before Resent counts it ('"0" is not positive' at load 17).
	eventually(t, func() bool { return sub.Stats().Resent > 0 }, "the set on the new Conn counted as a resend")
	st := sub.Stats()
	require.Equal(t, uint16(1), st.Sequence)
	require.Equal(t, uint64(1), st.Sets)
}

// Without a Conn to follow, only the timer resends.
func TestSubscriberResendTimer(t *testing.T) {
	sink := &rtcpSink{}
	s := newSubscriber(sink, 9)
	require.False(t, s.due(t0.Add(time.Hour)), "nothing to send before the first set")
	require.NoError(t, s.Resend())
	require.Empty(t, sink.take())

	require.NoError(t, s.Subscribe(nil))
	require.Len(t, sink.take(), 1)
	sentAt := s.lastSent
	require.False(t, s.due(sentAt.Add(1900*time.Millisecond)))
	require.True(t, s.due(sentAt.Add(2*time.Second)))
	require.NoError(t, s.send(sentAt.Add(2*time.Second), true))
	dgs := sink.take()
	require.Len(t, dgs, 1)
	m, err := protocol.DecodeRelayApp(dgs[0][0].(*rtcp.ApplicationDefined))
	require.NoError(t, err)
	require.Equal(t, uint16(1), m.(*protocol.Subscription).Sequence)
	require.Empty(t, m.(*protocol.Subscription).Videos, "an empty set: no video")
	require.Equal(t, SubscriberStats{Sequence: 1, Sets: 1, Sent: 2, Resent: 1}, s.Stats())
}
