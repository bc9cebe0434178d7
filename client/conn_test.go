package client

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/rtcp"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// recv waits for the next packet on c, or fails the test.
func recv(t *testing.T, c *Conn) *Packet {
	t.Helper()
	select {
	case p, ok := <-c.Media():
		require.True(t, ok, "media channel closed: %v", c.Err())
		return p
	case <-time.After(3 * time.Second):
		t.Fatal("no media within 3s")
		return nil
	}
}

func participant(t *testing.T, cfg Config) protocol.ID {
	tok, err := protocol.DecodeToken(cfg.Token)
	require.NoError(t, err)
	return tok.ParticipantID
}

func TestConnMediaBothWays(t *testing.T) {
	e := newEnv(t)
	r := e.responder(fastParams)
	x, y := e.dial(e.config(r)), e.dial(e.config(r))

	key := NewMediaKey()
	snd, err := NewSender(SenderConfig{SSRC: 0x1234, PayloadType: 111, Key: key})
	require.NoError(t, err)
	rcv := NewReceiver()
	require.NoError(t, rcv.AddSender(0x1234, key))

	for i := range 5 {
		plain := []byte{'o', 'p', 'u', 's', byte(i)}
		pkt, err := snd.Seal(nil, Sample{Payload: plain, Timestamp: uint32(960 * i), AudioLevel: AudioLevel{Level: 30, Voice: true}})
		require.NoError(t, err)
		require.NoError(t, x.WriteRTP(pkt))
		p := recv(t, y)
		require.Equal(t, protocol.KindRTP, p.Kind)
		require.Equal(t, pkt, p.Data, "relayed byte-exact")
		got, err := rcv.Open(nil, p.Data, nil)
		require.NoError(t, err)
		require.Equal(t, plain, got)
		p.Release()
	}

	pli := &rtcp.PictureLossIndication{SenderSSRC: 1, MediaSSRC: 0x1234}
	require.NoError(t, y.WriteRTCP(pli))
	p := recv(t, x)
	require.Equal(t, protocol.KindRTCP, p.Kind)
	pkts, err := rtcp.Unmarshal(p.Data)
	require.NoError(t, err)
	require.Equal(t, []rtcp.Packet{pli}, pkts)
	p.Release()

	require.ErrorIs(t, x.WriteRTP([]byte{0, 1, 2}), ErrNotMedia)
	sx, sy := x.Stats(), y.Stats()
	require.Equal(t, uint64(5), sx.PacketsSent)
	require.Equal(t, uint64(1), sx.PacketsReceived)
	require.Equal(t, uint64(5), sy.PacketsReceived)
	require.Zero(t, sy.MediaDropped)
}

func TestConnSlowConsumerDropsNotBlocks(t *testing.T) {
	e := newEnv(t)
	r := e.responder(fastParams)
	cfg := e.config(r)
	cfg.MediaQueue = 4
	x, y := e.dial(e.config(r)), e.dial(cfg)

	const sent = 40
	pkt := []byte{0x80, 111, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 'x'}
	for range sent {
		require.NoError(t, x.WriteRTP(pkt))
	}
	// PacketsReceived is counted before the reader queues or drops the
	// packet: wait for both counters, or the last drop can be missed.
	eventually(t, func() bool {
		st := y.Stats()
		return st.PacketsReceived == sent && st.MediaDropped+uint64(len(y.Media())) == sent
	}, "every packet reaches the reader and is queued or dropped")
	require.Equal(t, uint64(sent-4), y.Stats().MediaDropped)
	require.Len(t, y.Media(), 4)

	// The reader kept running: keepalives still work, new media still flows
	// once the consumer catches up.
	for range 4 {
		recv(t, y).Release()
	}
	require.NoError(t, x.WriteRTP(pkt))
	recv(t, y).Release()
}

func TestConnKeepaliveInterval(t *testing.T) {
	e := newEnv(t)
	const interval = 50 * time.Millisecond
	r := e.responder(protocol.SessionParams{KeepaliveInterval: interval, IdleTimeout: 2 * time.Second})
	// Each keepalive gets a forged answer first: ignored and counted.
	r.script(func(n int, _ protocol.JoinRequest) []reply {
		if n == 0 {
			return []reply{{}}
		}
		return []reply{{forge: forgeWrongKey}, {}}
	})
	c := e.dial(e.config(r))
	require.Equal(t, interval, c.Params().KeepaliveInterval)

	const keepalives = 6
	eventually(t, func() bool { return len(r.from(c.LocalAddr())) >= 2+keepalives }, "keepalives arrive")
	got := r.from(c.LocalAddr())[:2+keepalives]
	// The first keepalive goes out at once after the join
	// (TestConnFirstKeepaliveAtOnce), the others at the interval: never
	// faster, and never so slow that the forwarder's idle timeout could
	// pass between two (the exact pace is the timer's; a loaded machine
	// only delays it).
	mean := got[1+keepalives].at.Sub(got[1].at) / keepalives
	require.GreaterOrEqual(t, mean, interval*9/10, "keepalives no faster than the interval")
	for i := 2; i <= 1+keepalives; i++ {
		require.Less(t, got[i].at.Sub(got[i-1].at), c.Params().IdleTimeout, "a gap the idle timeout would end the session in")
	}
	for _, q := range got[1:] {
		require.False(t, q.leave)
		require.NotEqual(t, got[0].tid, q.tid, "each keepalive is a new transaction")
	}
	eventually(t, func() bool {
		s := c.Stats()
		return s.KeepalivesAnswered >= keepalives-1 && s.Unauthenticated >= keepalives-1
	}, "answers counted, forgeries ignored and counted")
	require.NoError(t, c.Err())
	require.Positive(t, c.Stats().RTT)
}

// The first keepalive goes out at once after the join: the forwarder takes
// it as the device's choice among the multi-connect winners. With an hour
// between keepalives, the one that follows the join can only be that one.
func TestConnFirstKeepaliveAtOnce(t *testing.T) {
	e := newEnv(t)
	r := e.responder(protocol.SessionParams{KeepaliveInterval: time.Hour, IdleTimeout: 3 * time.Hour})
	c := e.dial(e.config(r))
	require.Equal(t, time.Hour, c.Params().KeepaliveInterval)
	require.Equal(t, uint64(1), c.Stats().KeepalivesSent, "sent before Dial returned")
	eventually(t, func() bool { return len(transactions(r.from(c.LocalAddr()))) == 2 }, "the join, then a keepalive")
	got := r.from(c.LocalAddr())
	require.False(t, got[1].leave)
	require.NotEqual(t, got[0].tid, got[1].tid)
}

func TestConnSessionLost(t *testing.T) {
	e := newEnv(t)
	r := e.responder(protocol.SessionParams{KeepaliveInterval: 30 * time.Millisecond, IdleTimeout: 150 * time.Millisecond})
	r.script(func(n int, _ protocol.JoinRequest) []reply {
		if n == 0 {
			return []reply{{}}
		}
		return nil // the forwarder died after the join
	})
	c := e.dial(e.config(r))
	select {
	case <-c.Done():
	case <-time.After(3 * time.Second):
		t.Fatal("session not reported lost")
	}
	require.ErrorIs(t, c.Err(), ErrSessionLost)
	require.ErrorIs(t, c.WriteRTP([]byte{0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1}), ErrSessionLost)
	for range c.Media() { // closed once the session ended
	}
	require.NoError(t, c.Close())
}

func TestConnKeepaliveRefusedEndsSession(t *testing.T) {
	e := newEnv(t)
	r := e.responder(protocol.SessionParams{KeepaliveInterval: 30 * time.Millisecond, IdleTimeout: time.Second})
	r.script(func(n int, _ protocol.JoinRequest) []reply {
		if n == 0 {
			return []reply{{}}
		}
		return []reply{{err: &protocol.JoinError{Code: protocol.CodeForbidden, Reason: "removed from call"}}}
	})
	c := e.dial(e.config(r))
	select {
	case <-c.Done():
	case <-time.After(3 * time.Second):
		t.Fatal("refusal did not end the session")
	}
	var je *JoinError
	require.ErrorAs(t, c.Err(), &je)
	require.Equal(t, protocol.CodeForbidden, je.Code)
	require.Equal(t, r.addr, je.Forwarder)
}

func TestConnRebindMovesAddress(t *testing.T) {
	e := newEnv(t)
	r := e.responder(fastParams)
	cfg := e.config(r)
	who := participant(t, cfg)
	x, y := e.dial(cfg), e.dial(e.config(r))
	old := x.LocalAddr()
	require.Equal(t, old, r.session(who))

	require.NoError(t, x.Rebind(testContext(t), netip.MustParseAddr("127.0.0.1")))
	moved := x.LocalAddr()
	require.NotEqual(t, old, moved)
	require.Equal(t, moved, x.MappedAddr(), "the forwarder saw the new address")
	require.Equal(t, moved, r.session(who), "the session moved with an authenticated Binding")
	fromNew := r.from(moved)
	require.NotEmpty(t, fromNew)
	require.False(t, fromNew[0].leave)

	// Media flows both ways on the new socket; the forwarder only relays
	// from (and to) the session's current address.
	pkt := []byte{0x80, 111, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7, 'w', 'a', 'n'}
	require.NoError(t, y.WriteRTP(pkt))
	p := recv(t, x)
	require.Equal(t, pkt, p.Data)
	p.Release()
	require.NoError(t, x.WriteRTP(pkt))
	p = recv(t, y)
	require.Equal(t, pkt, p.Data)
	p.Release()

	// Keepalives now come from the new address.
	require.NoError(t, x.Err())
}

func TestConnRebindRefusedKeepsSession(t *testing.T) {
	e := newEnv(t)
	r := e.responder(fastParams)
	r.script(func(n int, _ protocol.JoinRequest) []reply {
		if n == 0 {
			return []reply{{}}
		}
		return []reply{{err: &protocol.JoinError{Code: protocol.CodeInsufficientCapacity, Reason: "throttled"}}}
	})
	c := e.dial(e.config(r))
	old := c.LocalAddr()
	err := c.Rebind(testContext(t), netip.Addr{})
	var je *JoinError
	require.ErrorAs(t, err, &je)
	require.Equal(t, protocol.CodeInsufficientCapacity, je.Code)
	require.Equal(t, old, c.LocalAddr())
	require.NoError(t, c.Err())
}

func TestConnCloseSendsLeave(t *testing.T) {
	e := newEnv(t)
	r := e.responder(fastParams)
	cfg := e.config(r)
	cfg.LeaveTimeout = time.Hour // only the answer can end Close within the test
	c := e.dial(cfg)
	local := c.LocalAddr()

	var err error
	returns(t, "Close (an answered leave does not wait out the timeout)", func() { err = c.Close() })
	require.NoError(t, err)
	leaves := r.leaves()
	require.Len(t, leaves, 1)
	require.Equal(t, local, leaves[0].from)
	require.ErrorIs(t, c.Err(), ErrClosed)
	require.ErrorIs(t, c.WriteRaw([]byte{0x80}), ErrClosed)
	_, open := <-c.Media()
	require.False(t, open)
	require.NoError(t, c.Close(), "Close is idempotent")
}

func TestConnCloseUnansweredLeaveIsBounded(t *testing.T) {
	e := newEnv(t)
	r := e.responder(protocol.SessionParams{KeepaliveInterval: time.Second, IdleTimeout: time.Hour})
	r.mu.Lock()
	r.dropLeaves = true
	r.mu.Unlock()
	cfg := e.config(r)
	cfg.LeaveTimeout = 150 * time.Millisecond
	c := e.dial(cfg)

	// Nothing else can end the leave within the test (the session's idle
	// timeout is an hour), so Close returning at all shows that
	// LeaveTimeout bounds it; exactly when is the timer's business.
	start := time.Now()
	var err error
	returns(t, "Close (an unanswered leave ends at LeaveTimeout)", func() { err = c.Close() })
	require.NoError(t, err)
	require.GreaterOrEqual(t, time.Since(start), cfg.LeaveTimeout)
	eventually(t, func() bool { return r.leaveDatagrams() >= 2 }, "the leave is retransmitted while unanswered")
}

func TestConnIgnoresStrayAndForeign(t *testing.T) {
	e := newEnv(t)
	r := e.responder(fastParams)
	x, y := e.dial(e.config(r)), e.dial(e.config(r))

	// From the forwarder's address: a datagram of no known kind, and a STUN
	// success for a transaction the client never started.
	_, err := r.conn.WriteToUDPAddrPort([]byte{0x40, 1, 2, 3}, y.LocalAddr())
	require.NoError(t, err)
	tok, _ := e.token()
	m, err := protocol.BuildJoinRequest(tok, protocol.JoinOptions{})
	require.NoError(t, err)
	req, err := protocol.ParseJoinRequest(m)
	require.NoError(t, err)
	raw, err := protocol.BuildJoinSuccess(req, y.LocalAddr(), fastParams, protocol.IntegrityKey(tok))
	require.NoError(t, err)
	_, err = r.conn.WriteToUDPAddrPort(raw, y.LocalAddr())
	require.NoError(t, err)
	eventually(t, func() bool { return y.Stats().Stray == 2 }, "stray datagrams counted")

	// From anyone else: RTP that the connected socket never lets through.
	foreign, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer foreign.Close()
	_, err = foreign.WriteToUDPAddrPort([]byte{0x80, 111, 0, 1, 0, 0, 0, 0, 0, 0, 0, 66, 'e', 'v', 'i', 'l'}, y.LocalAddr())
	require.NoError(t, err)

	good := []byte{0x80, 111, 0, 2, 0, 0, 0, 0, 0, 0, 0, 7, 'o', 'k'}
	require.NoError(t, x.WriteRTP(good))
	p := recv(t, y)
	require.Equal(t, good, p.Data, "only the forwarder's packet arrives")
	p.Release()
	require.Equal(t, uint64(1), y.Stats().PacketsReceived)
	require.NoError(t, y.Err())
}
