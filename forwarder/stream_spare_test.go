package forwarder_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/linkem"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// A Session's spare leg (client/transport_session.go, protocol/README.md
// section 9 rule 7) over loopback, without root: the device's UDP path to
// the forwarder runs through a linkem link the test darkens (every
// datagram dropped both ways) and lights again; its TCP path goes to the
// forwarder's TCP listener, directly or through a listener that holds the
// connection without forwarding it. The netns tests measure the gap on a
// real firewall.

// spareDevice joins the forwarder over link (UDP) with tcp as its TCP
// listener: FailoverAfter long enough that only the spare leg can move it
// within the test, SuspectAfter 100ms. The join itself is over UDP: TCP
// joins the race only after UDPHeadStart, set past the join's deadline (a
// starved test process can take longer than the default 250 ms to join).
//
// With 100 ms keepalives and SuspectAfter 100ms, UDP is suspect once an
// answer is 50 ms late, which a starved test process makes happen while
// the link is still up: a spare opens, and is closed when UDP answers
// (SpareLegsClosed) or, if its join is answered first, carries the move
// before the link goes dark. The tests count spares by that invariant
// (every spare but the one that moved was closed), not as exactly one.
func spareDevice(t *testing.T, link *linkem.Link, tcp netip.AddrPort, token []byte, key ed25519.PrivateKey) *client.Session {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := client.Join(ctx, client.Config{Forwarders: []netip.AddrPort{link.Addr()}, Token: token, DeviceKey: key, LocalAddr: loopback,
		Streams:      map[netip.AddrPort]client.StreamEndpoints{link.Addr(): {TCP: tcp}},
		UDPHeadStart: time.Minute, SuspectAfter: 100 * time.Millisecond, FailoverAfter: 20 * time.Second, RejoinTimeout: 10 * time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	require.Equal(t, client.TransportUDP, s.Transport())
	return s
}

// spareRelay is a forwarder with a TCP listener, 100ms keepalives.
func spareRelay(t *testing.T) *relay {
	return runRelay(t, func(c *forwarder.Config) {
		c.Stream.TCPListen = "127.0.0.1:0"
		c.KeepaliveInterval = 100 * time.Millisecond
	})
}

// talkBothWays: a packet from s reaches peer and one from peer reaches s,
// byte-exact, retried every 20ms for up to 10s (a path may still be moving).
func talkBothWays(t *testing.T, s *client.Session, peer *client.Conn, seq uint16) {
	t.Helper()
	up := append([]byte{0x80, 111, byte(seq >> 8), byte(seq), 0, 0, 0, 1, 0, 0, 0, 0xd}, bytes.Repeat([]byte{byte(seq)}, 90)...)
	down := append([]byte{0x80, 111, byte(seq >> 8), byte(seq), 0, 0, 0, 1, 0, 0, 0, 0xe}, bytes.Repeat([]byte{^byte(seq)}, 70)...)
	var heardUp, heardDown bool
	testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if !heardUp {
			require.NoError(t, s.WriteRTP(up))
		}
		if !heardDown {
			require.NoError(t, peer.WriteRTP(down))
		}
		heardUp = heardUp || drainFor(peer.Media(), up)
		heardDown = heardDown || drainFor(s.Media(), down)
		if !heardUp || !heardDown {
			return fmt.Errorf("seq %d: peer heard the device %v, the device heard the peer %v", seq, heardUp, heardDown)
		}
		return nil
	})
}

// drainFor reads what is queued on ch and reports whether want was among it.
func drainFor(ch <-chan *client.Packet, want []byte) bool {
	found := false
	for {
		select {
		case p := <-ch:
			found = found || bytes.Equal(p.Data, want)
			p.Release()
		default:
			return found
		}
	}
}

// TestSpareLegMovesOffFailingUDP: UDP goes dark mid-call; the Session opens
// a TCP leg to the same forwarder while UDP is still its path and moves to
// it (EventTransport, not a failover), then talks byte-exact both ways.
// With a version 2 token the spare's join carries a device proof (a new
// path of a device-bound session, protocol/README.md 2.2).
func TestSpareLegMovesOffFailingUDP(t *testing.T) {
	for _, v2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("v2=%v", v2), func(t *testing.T) { spareLegMoves(t, v2) })
	}
}

func spareLegMoves(t *testing.T, v2 bool) {
	r := spareRelay(t)
	tcp, _ := r.f.StreamAddrs()
	link, err := linkem.New(r.f.Addr(), linkem.Profile{}, linkem.Profile{}, 1)
	require.NoError(t, err)
	t.Cleanup(func() { _ = link.Close() })
	call := protocol.NewID()
	peer := dial(t, r.mint(t, call, protocol.ClassGroup, 4), r.f.Addr())
	token, key := r.mint(t, call, protocol.ClassGroup, 4), ed25519.PrivateKey(nil)
	if v2 {
		token, key = deviceToken(t, ed25519.PrivateKey(r.priv), call, protocol.NewID(), time.Hour)
	}
	s := spareDevice(t, link, tcp, token, key)
	talkBothWays(t, s, peer, 1)

	link.SetUp(linkem.Profile{Loss: 1})
	link.SetDown(linkem.Profile{Loss: 1})
	select {
	case ev := <-s.Events():
		require.Equal(t, client.EventTransport, ev.Kind, "%+v", ev)
		require.Equal(t, client.TransportTCP, ev.Transport)
		require.Equal(t, link.Addr(), ev.To, "the same forwarder")
	case <-time.After(10 * time.Second):
		t.Fatal("no move to the spare leg")
	}
	require.Equal(t, client.TransportTCP, s.Transport())
	talkBothWays(t, s, peer, 2)
	st := s.Stats()
	require.Equal(t, uint64(1), st.TransportMoves)
	require.Equal(t, uint64(1), st.SpareLegs-st.SpareLegsClosed, "one spare moved, the others closed when UDP answered: %+v", st)
	if st.SpareLegsClosed > 0 {
		t.Logf("%d spare legs closed when UDP answered (suspect while the link was still up: a late answer)", st.SpareLegsClosed)
	}
	require.Zero(t, st.Failovers)
	require.Equal(t, 2, r.f.Stats().Sessions, "the device kept its session: no second one")
}

// holdListener accepts TCP connections and never answers; it counts them
// and how many the other side closed.
type holdListener struct {
	ln             net.Listener
	opened, closed atomic.Int32
}

func newHoldListener(t *testing.T) *holdListener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	h := &holdListener{ln: ln}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			h.opened.Add(1)
			go func() {
				defer c.Close()
				_, err := io.Copy(io.Discard, c) // until the device closes it
				if err == nil || !errors.Is(err, net.ErrClosed) {
					h.closed.Add(1)
				}
			}()
		}
	}()
	return h
}

func (h *holdListener) addr() netip.AddrPort { return netip.MustParseAddrPort(h.ln.Addr().String()) }

// TestSpareLegClosedWhenUDPRecovers: UDP goes dark long enough for the
// Session to open a spare TCP leg, whose join is never answered (the
// listener holds it); UDP comes back: the spare is closed, the Session
// stays on UDP with its session, and talks both ways.
func TestSpareLegClosedWhenUDPRecovers(t *testing.T) {
	r := spareRelay(t)
	hold := newHoldListener(t)
	link, err := linkem.New(r.f.Addr(), linkem.Profile{}, linkem.Profile{}, 1)
	require.NoError(t, err)
	t.Cleanup(func() { _ = link.Close() })
	call := protocol.NewID()
	peer := dial(t, r.mint(t, call, protocol.ClassGroup, 4), r.f.Addr())
	s := spareDevice(t, link, hold.addr(), r.mint(t, call, protocol.ClassGroup, 4), nil)
	talkBothWays(t, s, peer, 1)

	link.SetUp(linkem.Profile{Loss: 1})
	link.SetDown(linkem.Profile{Loss: 1})
	// One spare open and held (spares opened before the dark were closed
	// when UDP answered, their connections too, if they got one: spareDevice).
	testenv.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		st, opened, closed := s.Stats(), hold.opened.Load(), hold.closed.Load()
		if st.SpareLegs-st.SpareLegsClosed != 1 || opened-closed != 1 {
			return fmt.Errorf("spare legs %d (closed %d), connections %d (closed %d)", st.SpareLegs, st.SpareLegsClosed, opened, closed)
		}
		return nil
	})
	link.SetUp(linkem.Profile{})
	link.SetDown(linkem.Profile{})
	testenv.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		st, opened, closed := s.Stats(), hold.opened.Load(), hold.closed.Load()
		if st.SpareLegsClosed != st.SpareLegs || closed != opened {
			return fmt.Errorf("spare legs %d, closed %d; connections %d, closed by the device %d", st.SpareLegs, st.SpareLegsClosed, opened, closed)
		}
		return nil
	})
	require.Equal(t, client.TransportUDP, s.Transport())
	talkBothWays(t, s, peer, 2)
	st := s.Stats()
	require.Zero(t, st.TransportMoves)
	require.Zero(t, st.Failovers)
	require.Equal(t, 2, r.f.Stats().Sessions)
	select {
	case ev := <-s.Events():
		t.Fatalf("unexpected event %+v", ev)
	default:
	}
}

// TestSpareLegThenFailoverWhenForwarderDies: port unreachable from a
// forwarder with a TCP listener opens a spare leg first (a firewall that
// rejects UDP says the same); when the forwarder process is really gone,
// its listener refuses the spare at once and the Session fails over to
// the other forwarder then, not after FailoverAfter (20 s here).
func TestSpareLegThenFailoverWhenForwarderDies(t *testing.T) {
	e := newClusterEnv(t)
	withTCP := func(c *forwarder.Config) { c.Stream.TCPListen = "127.0.0.1:0" }
	nodes := []*clusterNode{e.startWith(t, "fwd-a", withTCP), e.startWith(t, "fwd-b", withTCP)}
	streams := map[netip.AddrPort]client.StreamEndpoints{}
	for _, n := range nodes {
		tcp, _ := n.f.StreamAddrs()
		streams[n.f.Addr()] = client.StreamEndpoints{TCP: tcp}
	}
	token, _ := e.token(t, protocol.NewID(), 4)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := client.Join(ctx, client.Config{Forwarders: []netip.AddrPort{nodes[0].f.Addr(), nodes[1].f.Addr()}, Token: token,
		LocalAddr: loopback, Streams: streams, SuspectAfter: 5 * time.Second, FailoverAfter: 20 * time.Second, RejoinTimeout: 10 * time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	dead, alive := nodes[0], nodes[1]
	if s.Forwarder() == alive.f.Addr() {
		dead, alive = alive, dead
	}
	dead.stop()
	select {
	case ev := <-s.Events():
		require.Equal(t, client.EventFailover, ev.Kind, "%+v", ev)
		require.Equal(t, alive.f.Addr(), ev.To)
	case <-time.After(10 * time.Second):
		t.Fatal("no failover within 10 s of the forwarder's death")
	}
	st := s.Stats()
	require.Equal(t, uint64(1), st.SpareLegs, "the spare was tried first")
	require.Zero(t, st.TransportMoves)
}
