package client

import (
	"net/netip"
	"testing"
	"time"

	"github.com/pion/rtcp"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// slowParams keep the forwarder's keepalive interval and idle timeout far
// beyond any test, so whatever the client sends or does in a test must come
// from what the test did, not from a timer.
var slowParams = protocol.SessionParams{KeepaliveInterval: 30 * time.Second, IdleTimeout: 2 * time.Minute}

func nextControl(t *testing.T, c *Conn) protocol.RelayMessage {
	t.Helper()
	select {
	case m, ok := <-c.Control():
		require.True(t, ok, "control channel closed: %v", c.Err())
		return m
	case <-time.After(3 * time.Second):
		t.Fatal("no control message within 3s")
		return nil
	}
}

// The relay's Rejoin and MigrateTo are taken out of the RTCP the forwarder
// sends, alone or inside a compound packet, and delivered on Control; the
// rest of the datagram, and other CRLY messages, stay on Media. A Rejoin
// makes the Conn send its join (a keepalive) at once, at most once a second.
func TestConnControlMessages(t *testing.T) {
	e := newEnv(t)
	r := e.responder(slowParams)
	c := e.dial(e.config(r))
	local := c.LocalAddr()
	eventually(t, func() bool { return len(transactions(r.from(local))) == 2 }, "the join and the first keepalive")

	r.tell(t, local, &protocol.Rejoin{Reason: protocol.RejoinUnknownAddress})
	require.Equal(t, &protocol.Rejoin{Reason: protocol.RejoinUnknownAddress}, nextControl(t, c))
	eventually(t, func() bool { return len(transactions(r.from(local))) == 3 }, "the nudge sends a keepalive at once")
	require.False(t, transactions(r.from(local))[2].leave)

	mig := &protocol.MigrateTo{Addr: netip.MustParseAddrPort("192.0.2.7:3478"), Deadline: 5 * time.Second}
	r.tell(t, local, mig)
	require.Equal(t, mig, nextControl(t, c))

	// A compound packet: receiver report, Rejoin, PLI. The Rejoin goes to
	// Control (its keepalive rate-limited), the rest to Media, in order.
	rr := &rtcp.ReceiverReport{SSRC: 9}
	pli := &rtcp.PictureLossIndication{SenderSSRC: 9, MediaSSRC: 0x1234}
	nudge, err := protocol.NewRelayApp(0, &protocol.Rejoin{})
	require.NoError(t, err)
	raw, err := rtcp.Marshal([]rtcp.Packet{rr, nudge, pli})
	require.NoError(t, err)
	r.raw(t, local, raw)
	require.Equal(t, &protocol.Rejoin{}, nextControl(t, c))
	p := recv(t, c)
	require.Equal(t, protocol.KindRTCP, p.Kind)
	rest, err := rtcp.Marshal([]rtcp.Packet{rr, pli})
	require.NoError(t, err)
	require.Equal(t, rest, p.Data)
	p.Release()

	// DominantSpeaker is the application's: it stays on Media, byte-exact.
	ds, err := protocol.MarshalRelayApp(0, &protocol.DominantSpeaker{Participant: protocol.NewID(), Epoch: 1, Sequence: 2})
	require.NoError(t, err)
	r.raw(t, local, ds)
	p = recv(t, c)
	require.Equal(t, ds, p.Data)
	p.Release()

	s := c.Stats()
	require.Equal(t, uint64(3), s.ControlReceived)
	require.Equal(t, uint64(2), s.RejoinNudges)
	require.Equal(t, uint64(1), s.NudgesLimited)
	require.Zero(t, s.ControlMalformed)
	require.Len(t, r.from(local), 3, "one keepalive for two nudges within a second")
	require.NoError(t, c.Err())
}

// Malformed session-control packets are counted and dropped: nothing on
// Control or Media, no keepalive, the session unharmed.
func TestConnMalformedControl(t *testing.T) {
	e := newEnv(t)
	r := e.responder(slowParams)
	c := e.dial(e.config(r))
	local := c.LocalAddr()
	eventually(t, func() bool { return len(transactions(r.from(local))) == 2 }, "the join and the first keepalive")

	for _, b := range [][]byte{
		{0x87, 0xcc, 0, 4, 0, 0, 0, 0, 'C', 'R', 'L', 'Y', 1, 0, 0, 0, 0, 0, 0, 0}, // Rejoin, 8-byte body
		{0x80, 0xcc, 0, 2, 0, 0, 0, 0, 'C', 'R', 'L', 'Y'},                         // reserved subtype 0
		{0x86, 0xcc, 0, 5, 0, 0, 0, 0, 'C', 'R', 'L', 'Y', // MigrateTo, family 9
			9, 0, 0x0d, 0x96, 0, 0, 0x03, 0xe8, 127, 0, 0, 1},
		{0x87, 0xcc, 0, 9, 0, 0, 0, 0, 'C', 'R', 'L', 'Y'}, // claims 40 bytes, has 12
	} {
		r.raw(t, local, b)
	}
	eventually(t, func() bool { return c.Stats().ControlMalformed == 4 }, "malformed control counted")
	// A genuine message after them still gets through: the reader is fine.
	r.tell(t, local, &protocol.MigrateTo{Addr: netip.MustParseAddrPort("192.0.2.7:3478")})
	_, ok := nextControl(t, c).(*protocol.MigrateTo)
	require.True(t, ok)

	s := c.Stats()
	require.Equal(t, uint64(5), s.PacketsReceived)
	require.Equal(t, uint64(1), s.ControlReceived)
	require.Zero(t, s.RejoinNudges)
	require.Empty(t, c.Media())
	require.Empty(t, c.Control())
	require.Len(t, r.from(local), 2, "no keepalive sent")
	require.NoError(t, c.Err())
}

// Control is bounded: with nobody reading, messages beyond its capacity are
// dropped and counted, and the reader goes on.
func TestConnControlFullDrops(t *testing.T) {
	e := newEnv(t)
	r := e.responder(slowParams)
	c := e.dial(e.config(r))
	mig := &protocol.MigrateTo{Addr: netip.MustParseAddrPort("192.0.2.7:3478")}
	const sent = controlQueue + 4
	for range sent {
		r.tell(t, c.LocalAddr(), mig)
	}
	eventually(t, func() bool { return c.Stats().ControlReceived == sent }, "every message read")
	require.Equal(t, uint64(4), c.Stats().ControlDropped)
	require.Len(t, c.Control(), controlQueue)
}

// ICMP port unreachable (the forwarder's socket is gone) is reported on
// Unreachable and counted, and does not end the Conn by itself.
func TestConnPortUnreachableHint(t *testing.T) {
	e := newEnv(t)
	r := e.responder(slowParams)
	c := e.dial(e.config(r))
	r.kill()
	pkt := []byte{0x80, 111, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 'x'}
	deadline := time.After(3 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for hinted := false; !hinted; {
		_ = c.WriteRTP(pkt) // may itself fail with ECONNREFUSED
		select {
		case <-c.Unreachable():
			hinted = true
		case <-tick.C:
		case <-deadline:
			t.Fatal("no port-unreachable hint within 3s")
		}
	}
	require.Positive(t, c.Stats().PortUnreachable)
	require.NoError(t, c.Err(), "a hint, not an end")
}

// The reader's look for control messages costs nothing on ordinary RTCP.
func TestTakeControlNoAllocs(t *testing.T) {
	c := &Conn{stats: new(counters)}
	raw, err := rtcp.Marshal([]rtcp.Packet{
		&rtcp.ReceiverReport{SSRC: 9, Reports: []rtcp.ReceptionReport{{SSRC: 0x1234}}},
		&rtcp.TransportLayerNack{SenderSSRC: 9, MediaSSRC: 0x1234, Nacks: []rtcp.NackPair{{PacketID: 7}}},
		&rtcp.PictureLossIndication{SenderSSRC: 9, MediaSSRC: 0x1234},
	})
	require.NoError(t, err)
	buf := append([]byte(nil), raw...)
	allocs := testing.AllocsPerRun(100, func() {
		if got := c.takeControl(buf); len(got) != len(raw) {
			t.Fatal("ordinary RTCP changed")
		}
	})
	require.Zero(t, allocs)
	require.Equal(t, raw, buf)
}

// A MigrateTo reaches Control only if it is the forwarder's
// (protocol/README.md 5.7): it echoes one of the Conn's last requests and
// its MAC verifies under that request's token key. A wrong key or no MAC
// counts as forged; an echo the Conn does not know (guessed, another
// session's, or one of its own requests too old: a captured MigrateTo
// replayed later) as stale. None of them is acted upon.
func TestConnMigrateToAuthentication(t *testing.T) {
	e := newEnv(t)
	r := e.responder(protocol.SessionParams{KeepaliveInterval: 20 * time.Millisecond, IdleTimeout: 5 * time.Second})
	c := e.dial(e.config(r))
	other := e.dial(e.config(r)) // another session, another token
	local := c.LocalAddr()
	eventually(t, func() bool { return len(r.from(local)) >= 2 }, "the join and a keepalive")
	join := transactions(r.from(local))[0]
	target := netip.MustParseAddrPort("192.0.2.7:3478")
	sign := func(echo [12]byte, key []byte) []byte {
		raw, err := protocol.SignMigrateTo(0, &protocol.MigrateTo{Addr: target, Deadline: time.Second, Echo: echo}, key)
		require.NoError(t, err)
		return raw
	}
	captured := sign(join.tid, join.key) // the genuine article, for the join

	r.raw(t, local, sign(join.tid, protocol.IntegrityKey([]byte("another token"))))
	unsigned, err := protocol.MarshalRelayApp(0, &protocol.MigrateTo{Addr: target, Echo: join.tid})
	require.NoError(t, err)
	r.raw(t, local, unsigned)
	r.raw(t, local, sign([12]byte{1, 2, 3}, join.key)) // a guessed echo
	r.raw(t, other.LocalAddr(), captured)              // to another session
	eventually(t, func() bool { return c.Stats().MigrateForged == 2 && c.Stats().MigrateStale == 1 }, "counted")
	eventually(t, func() bool { return other.Stats().MigrateStale == 1 }, "another session's counted")
	require.Empty(t, c.Control())
	require.Empty(t, other.Control())

	r.raw(t, local, captured) // fresh: accepted
	m, ok := nextControl(t, c).(*protocol.MigrateTo)
	require.True(t, ok)
	require.Equal(t, target, m.Addr)

	eventually(t, func() bool { return len(r.from(local)) > keepaliveSlots+1 }, "the join has left the ring")
	r.raw(t, local, captured) // replayed later
	eventually(t, func() bool { return c.Stats().MigrateStale == 2 }, "the replay counted")
	require.Empty(t, c.Control())
	require.Equal(t, uint64(1), c.Stats().ControlReceived)
	require.Zero(t, c.Stats().ControlMalformed)
}
