package forwarder

import (
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// udpCall is a two-member UDP call kept busy while bad input arrives: a
// sends, b must hear every packet.
type udpCall struct {
	t    *testing.T
	call protocol.ID
	a, b *rawDevice
	seq  uint16
}

func newUDPCall(t *testing.T, r *testRelay) *udpCall {
	call := protocol.NewID()
	a := newRawDevice(t, r.f.Addr(), r.token(t, call, protocol.NewID(), protocol.ClassGroup, 8))
	b := newRawDevice(t, r.f.Addr(), r.token(t, call, protocol.NewID(), protocol.ClassGroup, 8))
	a.join()
	b.join()
	_ = b.conn.SetReadBuffer(8 << 20)
	return &udpCall{t: t, call: call, a: a, b: b}
}

// exchange sends n packets and requires b to hear each of them.
func (c *udpCall) exchange(n int) {
	c.t.Helper()
	want := map[uint16]bool{}
	for range n {
		c.seq++
		want[c.seq] = true
		c.a.send(rtpPacket(7, c.seq, make([]byte, 160)))
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(want) > 0 && time.Now().Before(deadline) {
		b, ok := c.b.recv(time.Until(deadline))
		if ok && len(b) >= 12 && b[0] >= 128 && b[0] < 192 {
			delete(want, uint16(b[2])<<8|uint16(b[3]))
		}
	}
	require.Empty(c.t, want, "the call in progress lost packets")
}

// waitFor polls cond until it holds or a generous deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// closedByPeer: the forwarder closed c (a read ends in EOF or reset).
func closedByPeer(c net.Conn) bool {
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var b [64]byte
	for {
		if _, err := c.Read(b[:]); err != nil {
			return !isTimeout(err)
		}
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// TestStreamBadInput: zero and oversized length prefixes, a slowloris, a
// half-open TLS handshake, a connection that never joins and connections
// over the per-address bound are each closed (or refused) and counted,
// while a UDP call in progress loses nothing.
func TestStreamBadInput(t *testing.T) {
	r, _ := startStreamRelay(t, func(c *Config) {
		c.Stream.PerIP, c.Stream.HandshakeTimeout, c.Stream.JoinTimeout = 3, 300*time.Millisecond, 800*time.Millisecond
	})
	call := newUDPCall(t, r)
	tcp, tlsAddr := r.f.StreamAddrs()
	closed := func(why int) uint64 { return r.f.Stats().Stream.Closed[why] }
	dial := func(addr string) net.Conn {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		t.Cleanup(func() { _ = c.Close() })
		return c
	}

	for _, prefix := range [][]byte{{0, 0}, {0x05, 0xdd}, {0xff, 0xff}} {
		c := dial(tcp.String())
		_, err := c.Write(append(prefix, make([]byte, 64)...))
		require.NoError(t, err)
		require.True(t, closedByPeer(c), "prefix %x: connection not closed", prefix)
		call.exchange(50)
	}
	waitFor(t, "3 framing closes", func() bool { return closed(closeFraming) == 3 })

	// Slowloris: a frame's bytes one by one, never complete in time.
	slow := dial(tcp.String())
	go func() {
		for _, b := range []byte{0, 200, 1, 2, 3, 4, 5, 6, 7, 8} {
			if _, err := slow.Write([]byte{b}); err != nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	require.True(t, closedByPeer(slow), "slowloris not closed")
	call.exchange(50)

	// Half-open TLS: connected, no ClientHello.
	half := dial(tlsAddr.String())
	require.True(t, closedByPeer(half), "half-open TLS not closed")
	waitFor(t, "a handshake close", func() bool { return closed(closeHandshake) == 1 })

	// A connection that keeps sending media but never joins.
	idle := dial(tcp.String())
	stop := make(chan struct{})
	go func() {
		f, _ := protocol.AppendFrame(nil, rtpPacket(99, 1, make([]byte, 20)))
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if _, err := idle.Write(f); err != nil {
				return
			}
		}
	}()
	require.True(t, closedByPeer(idle), "a connection that never joined was not closed")
	close(stop)
	waitFor(t, "slow closes", func() bool { return closed(closeSlow) == 2 })
	call.exchange(50)

	// Over the per-address bound: refused at once.
	before := r.f.Stats().Stream.Refused
	for range 3 {
		dial(tcp.String())
	}
	over := dial(tcp.String())
	require.True(t, closedByPeer(over), "a connection over the per-address bound was kept")
	waitFor(t, "a refusal", func() bool { return r.f.Stats().Stream.Refused == before+1 })
	call.exchange(50)
}

// TestStreamMemberThatNeverReads: a TCP member that stops reading backs up
// its own queue only: its packets are dropped oldest first and counted,
// its connection is closed once writes stall for WriteTimeout, and a UDP
// member of the same call hears every packet meanwhile.
func TestStreamMemberThatNeverReads(t *testing.T) {
	r, _ := startStreamRelay(t, func(c *Config) {
		c.Stream.WriteTimeout = 500 * time.Millisecond
		c.Police.GroupBps = 1 << 30 // the sender's bursts here are the test's, not the policer's
	})
	call := newUDPCall(t, r)
	deaf := newStreamDevice(t, r, nil, r.token(t, call.call, protocol.NewID(), protocol.ClassGroup, 8))
	_ = deaf.conn.(*net.TCPConn).SetReadBuffer(4096)
	deaf.join()
	// From now on deaf reads nothing. The connection closes once writes have
	// stalled for WriteTimeout, a time, so the exchange goes on until then
	// (bounded in time and in count), however fast the packets went.
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; i < 4000 && time.Now().Before(deadline) && r.f.Stats().Stream.Closed[closeWriteStalled] == 0; i++ {
		call.exchange(100)
	}
	s := r.f.Stats().Stream
	require.Equal(t, uint64(1), s.Closed[closeWriteStalled], "the deaf member's connection was not closed")
	require.NotZero(t, s.QueueDrops[0]+s.QueueDrops[1], "a backed-up leg dropped nothing")
	call.exchange(100)
}
