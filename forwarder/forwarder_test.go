package forwarder

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// TestCallsAreIsolated: a 5-person call and two one-to-one calls on one
// forwarder; every packet reaches exactly the other members of its call,
// byte-exact, and nobody else. The relay's own RTCP feedback to senders
// (REMB on its feedback tick) may come between the media, and is skipped.
func TestCallsAreIsolated(t *testing.T) {
	r := startRelay(t, nil)
	type member struct {
		d    *rawDevice
		call int
		ssrc uint32
	}
	sizes := []int{5, 2, 2}
	var members []member
	for ci, n := range sizes {
		call := protocol.NewID()
		class := protocol.ClassGroup
		if n == 2 {
			class = protocol.ClassOneToOne
		}
		for j := 0; j < n; j++ {
			d := newRawDevice(t, r.f.Addr(), r.token(t, call, protocol.NewID(), class, uint16(n)))
			d.join()
			members = append(members, member{d: d, call: ci, ssrc: uint32(1000*ci + j + 1)})
		}
	}
	const perSender = 20
	for seq := 0; seq < perSender; seq++ {
		for _, m := range members {
			m.d.send(rtpPacket(m.ssrc, uint16(seq), []byte(fmt.Sprintf("ssrc=%d seq=%d opaque", m.ssrc, seq))))
		}
	}
	// Each member must get exactly (call size - 1) * perSender packets, all
	// from its own call, none of its own, each byte-exact.
	for _, m := range members {
		want := (sizes[m.call] - 1) * perSender
		got := 0
		for got < want {
			b, ok := m.d.recv(3 * time.Second)
			require.True(t, ok, "member of call %d got %d of %d packets", m.call, got, want)
			if stun.IsMessage(b) || isRTCP(b) {
				continue // the relay's own feedback (REMB to senders) or STUN, not media
			}
			ssrc := uint32(b[8])<<24 | uint32(b[9])<<16 | uint32(b[10])<<8 | uint32(b[11])
			require.NotEqual(t, m.ssrc, ssrc, "own packet echoed")
			require.Equal(t, m.call, int(ssrc/1000), "packet leaked across calls")
			seq := uint16(b[2])<<8 | uint16(b[3])
			require.True(t, bytes.Equal(b, rtpPacket(ssrc, seq, []byte(fmt.Sprintf("ssrc=%d seq=%d opaque", ssrc, seq)))), "not byte-exact")
			got++
		}
		// Nothing more of the media: in the next 100 ms only the relay's own
		// RTCP feedback (its reports to senders, on its feedback tick) or
		// STUN may come.
		for quiet := time.Now().Add(100 * time.Millisecond); time.Now().Before(quiet); {
			b, ok := m.d.recv(time.Until(quiet))
			if ok && !stun.IsMessage(b) && !isRTCP(b) {
				t.Fatalf("member of call %d got more than its call's packets: % x", m.call, b[:min(len(b), 16)])
			}
		}
	}
	st := r.f.Stats()
	require.Equal(t, 9, st.Sessions)
	require.Equal(t, 3, st.Calls)
	require.Zero(t, st.TotalDrops())
}

func TestJoinRefusals(t *testing.T) {
	r := startRelay(t, func(c *Config) { c.MaxSessions = 3 })
	other := startRelay(t, nil) // signs with a key r does not trust
	call := protocol.NewID()

	expired, err := protocol.SignToken(r.priv, protocol.Token{CallID: call, ParticipantID: protocol.NewID(),
		Class: protocol.ClassGroup, MaxSize: 5, Expiry: time.Now().Add(-time.Minute)})
	require.NoError(t, err)
	resp := newRawDevice(t, r.f.Addr(), expired).bind(false)
	require.Equal(t, protocol.CodeUnauthorized, resp.Code)

	forged := other.token(t, call, protocol.NewID(), protocol.ClassGroup, 5)
	resp = newRawDevice(t, r.f.Addr(), forged).bind(false)
	require.Equal(t, protocol.CodeUnauthorized, resp.Code)

	// A one-to-one call admits two; the third is refused 403.
	oneToOne := protocol.NewID()
	for i := 0; i < 2; i++ {
		newRawDevice(t, r.f.Addr(), r.token(t, oneToOne, protocol.NewID(), protocol.ClassOneToOne, 2)).join()
	}
	resp = newRawDevice(t, r.f.Addr(), r.token(t, oneToOne, protocol.NewID(), protocol.ClassOneToOne, 2)).bind(false)
	require.Equal(t, protocol.CodeForbidden, resp.Code)

	// A socket already in a call cannot join another with it.
	d := newRawDevice(t, r.f.Addr(), r.token(t, call, protocol.NewID(), protocol.ClassGroup, 5))
	d.join()
	d.token = r.token(t, protocol.NewID(), protocol.NewID(), protocol.ClassGroup, 5)
	require.Equal(t, protocol.CodeForbidden, d.bind(false).Code)

	// Capacity (3 sessions now): 508 with a retry-after.
	resp = newRawDevice(t, r.f.Addr(), r.token(t, call, protocol.NewID(), protocol.ClassGroup, 5)).bind(false)
	require.Equal(t, protocol.CodeInsufficientCapacity, resp.Code)
	require.Positive(t, resp.RetryAfter)
	require.Equal(t, 3, r.f.Stats().Sessions)
}

func TestDrainSendsToAlternate(t *testing.T) {
	alt := startRelay(t, nil)
	r := startRelay(t, func(c *Config) { c.Alternate = alt.f.Addr() })
	call := protocol.NewID()
	in := newRawDevice(t, r.f.Addr(), r.token(t, call, protocol.NewID(), protocol.ClassGroup, 5))
	in.join()
	r.f.Drain()
	resp := newRawDevice(t, r.f.Addr(), r.token(t, call, protocol.NewID(), protocol.ClassGroup, 5)).bind(false)
	require.Equal(t, protocol.CodeTryAlternate, resp.Code)
	require.Equal(t, alt.f.Addr(), resp.Alternate)
	// The member already here keeps its session.
	require.True(t, in.bind(false).OK)
}

// TestAddressChange: a new source address takes over a session only after an
// authenticated Binding from it; media alone from the new address is dropped.
func TestAddressChange(t *testing.T) {
	r := startRelay(t, nil)
	call := protocol.NewID()
	a := newRawDevice(t, r.f.Addr(), r.token(t, call, protocol.NewID(), protocol.ClassOneToOne, 2))
	b := newRawDevice(t, r.f.Addr(), r.token(t, call, protocol.NewID(), protocol.ClassOneToOne, 2))
	a.join()
	b.join()

	moved := newRawDevice(t, r.f.Addr(), a.token) // a's device, now on "cellular"
	moved.send(rtpPacket(1, 1, []byte("before bind")))
	_, got := b.recv(200 * time.Millisecond)
	require.False(t, got, "media from an unauthenticated address was forwarded")
	require.EqualValues(t, 1, r.f.Stats().Drops[DropUnknownSource])
	// The device's own relay message (a subscription) from there too: it
	// is from an unknown source, not a forged relay instruction.
	sub, err := protocol.MarshalRelayApp(0, &protocol.Subscription{Sequence: 1})
	require.NoError(t, err)
	moved.send(sub)
	r.stats(t, "the subscription counted as from an unknown source", func(s Stats) bool { return s.Drops[DropUnknownSource] == 2 })
	require.Zero(t, r.f.Stats().Drops[DropRelayControl])

	moved.join()
	moved.send(rtpPacket(1, 2, []byte("after bind")))
	p, ok := b.recv(2 * time.Second)
	require.True(t, ok)
	require.Equal(t, rtpPacket(1, 2, []byte("after bind")), p)
	b.send(rtpPacket(2, 1, []byte("reply")))
	p, ok = moved.recv(2 * time.Second)
	require.True(t, ok)
	require.Equal(t, rtpPacket(2, 1, []byte("reply")), p)
	require.EqualValues(t, 1, r.f.Stats().AddressChanges)

	// The old address is no longer a member.
	a.send(rtpPacket(1, 3, []byte("stale")))
	_, got = b.recv(200 * time.Millisecond)
	require.False(t, got)
}

func TestLeaveAndIdleTimeout(t *testing.T) {
	r := startRelay(t, func(c *Config) { c.KeepaliveInterval = 50 * time.Millisecond; c.IdleTimeout = 300 * time.Millisecond })
	call := protocol.NewID()
	a := newRawDevice(t, r.f.Addr(), r.token(t, call, protocol.NewID(), protocol.ClassGroup, 3))
	b := newRawDevice(t, r.f.Addr(), r.token(t, call, protocol.NewID(), protocol.ClassGroup, 3))
	c := newRawDevice(t, r.f.Addr(), r.token(t, call, protocol.NewID(), protocol.ClassGroup, 3))
	a.join()
	b.join()
	c.join()
	require.Equal(t, 3, r.f.Stats().Sessions)

	// A leave from another address (a multi-connect loser's socket) is
	// answered but does not end the session.
	stray := newRawDevice(t, r.f.Addr(), a.token)
	require.True(t, stray.bind(true).OK)
	require.Equal(t, 3, r.f.Stats().Sessions)
	require.True(t, a.bind(true).OK, "leave refused")
	require.Equal(t, 2, r.f.Stats().Sessions)

	// b keeps alive, c falls silent and is forgotten.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		tk := time.NewTicker(50 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
				m, _ := protocol.BuildJoinRequest(b.token, protocol.JoinOptions{})
				_, _ = b.conn.WriteToUDPAddrPort(m.Raw, b.relay)
			}
		}
	}()
	testenv.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if s := r.f.Stats().Sessions; s != 1 {
			return fmt.Errorf("%d sessions, want 1", s)
		}
		return nil
	})
}

// isRTCP: an RTCP packet (RFC 5761 4: packet type 192-223 where RTP has
// marker and payload type).
func isRTCP(b []byte) bool { return len(b) >= 8 && b[0]>>6 == 2 && b[1] >= 192 && b[1] <= 223 }
