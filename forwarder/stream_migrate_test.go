package forwarder_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// A member on TCP or TLS moved by a drain (issue 19; protocol/README.md
// 5.7 and 7.2), over real sockets: two forwarders of a cluster with TCP and
// TLS listeners; a device that cannot use UDP (its forwarders' UDP
// addresses answer nothing) joins fwd-a over TCP or TLS; a UDP member of
// the call is on fwd-b. fwd-a drains: its MigrateTo names fwd-b's listener
// of the device's transport, and the device joins there over that
// transport, make-before-break. RTP flows both ways all along, every packet
// byte-exact; the gap is measured from the RTP sequence numbers.

// migrateDevice joins over its stream listeners only: fwdA and fwdB stand
// for the forwarders' UDP addresses, which answer nothing.
func migrateDevice(t *testing.T, token []byte, fwdA netip.AddrPort, streams map[netip.AddrPort]client.StreamEndpoints,
	tlsCfg *tls.Config) *client.Session {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := client.Join(ctx, client.Config{Forwarders: []netip.AddrPort{fwdA}, Token: token, LocalAddr: loopback,
		Streams: streams, TLSConfig: tlsCfg, UDPHeadStart: 50 * time.Millisecond,
		FailoverAfter: 20 * time.Second, RejoinTimeout: 20 * time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// rtpFlow sends numbered RTP packets every 10 ms (at most 3000, 30 s) and
// checks what the other side receives.
type rtpFlow struct {
	ssrc uint32
	mu   sync.Mutex
	sent int
	got  map[uint16]time.Time // by sequence number, first arrival
	bad  int                  // received with the flow's SSRC but not byte-exact
}

func (f *rtpFlow) packet(seq uint16) []byte {
	p := []byte{0x80, 111, byte(seq >> 8), byte(seq), 0, 0, 0, 1, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(p[8:], f.ssrc)
	return append(p, bytes.Repeat([]byte{byte(seq), byte(f.ssrc)}, 40+int(seq%20))...)
}

func (f *rtpFlow) send(write func([]byte) error, stop <-chan struct{}) {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for seq := uint16(0); seq < 3000; seq++ {
		_ = write(f.packet(seq)) // a write refused while the Session swaps is a loss the gap shows
		f.mu.Lock()
		f.sent++
		f.mu.Unlock()
		select {
		case <-stop:
			return
		case <-tick.C:
		}
	}
}

func (f *rtpFlow) receive(media <-chan *client.Packet, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case p := <-media:
			if p.Kind == protocol.KindRTP && len(p.Data) >= 12 && binary.BigEndian.Uint32(p.Data[8:]) == f.ssrc {
				seq := binary.BigEndian.Uint16(p.Data[2:])
				f.mu.Lock()
				if !bytes.Equal(p.Data, f.packet(seq)) {
					f.bad++
				} else if _, dup := f.got[seq]; !dup {
					f.got[seq] = p.Received
				}
				f.mu.Unlock()
			}
			p.Release()
		}
	}
}

// heardSince reports whether a packet sent at or after seq arrived.
func (f *rtpFlow) heardSince(seq int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for s := range f.got {
		if int(s) >= seq {
			return true
		}
	}
	return false
}

func (f *rtpFlow) sentSoFar() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sent
}

// gap is what the receiver missed: packets lost in all, the longest run of
// consecutive sequence numbers missing, and the longest silence between
// arrivals.
func (f *rtpFlow) gap() (lost, run int, silence time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var at []time.Time
	cur := 0
	for seq := 0; seq < f.sent; seq++ {
		when, ok := f.got[uint16(seq)]
		if !ok {
			lost, cur = lost+1, cur+1
			run = max(run, cur)
			continue
		}
		cur = 0
		at = append(at, when)
	}
	slices.SortFunc(at, func(a, b time.Time) int { return a.Compare(b) })
	for i := 1; i < len(at); i++ {
		silence = max(silence, at[i].Sub(at[i-1]))
	}
	return lost, run, silence
}

// TestStreamMemberMovesOnDrain: the device follows fwd-a's drain to
// fwd-b over its own transport (EventMigrated, not a failover), and the
// call is heard byte-exact both ways across the move.
func TestStreamMemberMovesOnDrain(t *testing.T) {
	e := newClusterEnv(t)
	for _, via := range []client.Transport{client.TransportTCP, client.TransportTLS} {
		t.Run(via.String(), func(t *testing.T) { streamMemberMoves(t, e, via, true, drainMove) })
	}
}

// TestStreamMemberMovedByOperator: the same over TLS, moved by an
// operator's signed admin command (callrelay admin move) instead of a
// drain; a conductor's PlacementMove takes the same path (adminMoves).
func TestStreamMemberMovedByOperator(t *testing.T) {
	streamMemberMoves(t, newClusterEnv(t), client.TransportTLS, true, adminMove)
}

// A move: how the test makes fwd-a move participant p of call to fwd-b.
type moveFunc func(t *testing.T, e *clusterEnv, a, b *clusterNode, call, p protocol.ID)

func drainMove(_ *testing.T, _ *clusterEnv, a, _ *clusterNode, _, _ protocol.ID) { a.f.Drain() }

// adminMove sends fwd-a the admin command an operator's CLI sends, over
// NATS, signed with the cluster key, and requires a 200.
func adminMove(t *testing.T, e *clusterEnv, a, b *clusterNode, call, p protocol.ID) {
	args, err := json.Marshal(protocol.AdminArgs{Call: call.String(), Participant: p.String(), To: b.id})
	require.NoError(t, err)
	cmd := protocol.AdminCommand{At: time.Now(), Op: protocol.AdminOpMove, Target: a.id, Actor: "test", Args: args}
	_, err = rand.Read(cmd.Nonce[:])
	require.NoError(t, err)
	raw, err := protocol.MarshalAdminCommand(&cmd, e.key)
	require.NoError(t, err)
	nc, err := nats.Connect(e.nats.ClientURL())
	require.NoError(t, err)
	defer nc.Close()
	msg, err := nc.Request(protocol.AdminSubject(forwarder.Default().Cluster.Subject, a.id), raw, 5*time.Second)
	require.NoError(t, err)
	reply, err := protocol.UnmarshalAdminReply(msg.Data, e.key)
	require.NoError(t, err)
	require.Equal(t, uint16(200), reply.Status, "%s", reply.Body)
}

// TestStreamMemberMoveFallsBackToUDP: fwd-b has no TCP or TLS listener, so
// fwd-a's MigrateTo names its UDP address (counted as a fallback); a device
// whose UDP works after all follows it over UDP.
func TestStreamMemberMoveFallsBackToUDP(t *testing.T) {
	streamMemberMoves(t, newClusterEnv(t), client.TransportTCP, false, drainMove)
}

func streamMemberMoves(t *testing.T, e *clusterEnv, via client.Transport, bStreams bool, move moveFunc) {
	a, b, roots := movePair(t, e, via, bStreams)
	// The device's forwarders, as it knows them: dead UDP addresses (UDP
	// never answers) and their listeners.
	udpA, udpB := deadUDP(t), deadUDP(t)
	aTCP, aTLS := a.f.StreamAddrs()
	bTCP, bTLS := b.f.StreamAddrs()
	streams := map[netip.AddrPort]client.StreamEndpoints{udpA: {TCP: aTCP}, udpB: {TCP: bTCP}}
	if via == client.TransportTLS {
		streams = map[netip.AddrPort]client.StreamEndpoints{udpA: {TLS: aTLS}, udpB: {TLS: bTLS}}
	}
	call := protocol.NewID()
	tok, who := e.token(t, call, 4)
	dev := migrateDevice(t, tok, udpA, streams, &tls.Config{RootCAs: roots, ServerName: "callrelay.test"})
	require.Equal(t, via, dev.Transport())
	tokPeer, _ := e.token(t, call, 4)
	peer := dial(t, tokPeer, b.f.Addr())
	fl := startFlows(t, dev, peer)
	fl.heardAfter(t, 0, "before the move")

	move(t, e, a, b, call, who)
	ev := awaitMigrated(t, dev)
	wantVia, wantTo := via, udpB
	if !bStreams {
		wantVia, wantTo = client.TransportUDP, b.f.Addr()
	}
	require.Equal(t, wantVia, ev.Transport, "%+v", ev)
	require.Equal(t, wantTo, ev.To, "the forwarder the device knows fwd-b's listener for")
	require.Equal(t, wantVia, dev.Transport())

	// A second of media after the move, then let what is in flight land.
	fl.heardAfter(t, max(fl.up.sentSoFar(), fl.down.sentSoFar())+100, "after the move")
	fl.finish()
	upLost, upRun, upSilence := fl.up.gap()
	downLost, downRun, downSilence := fl.down.gap()
	t.Logf("%s member moved over %s in %v: device->peer lost %d of %d (longest run %d, silence %v); peer->device lost %d of %d (longest run %d, silence %v)",
		via, ev.Transport, ev.Took.Round(time.Millisecond), upLost, fl.up.sent, upRun, upSilence.Round(time.Millisecond),
		downLost, fl.down.sent, downRun, downSilence.Round(time.Millisecond))
	require.Zero(t, fl.up.bad+fl.down.bad, "packets not byte-exact")
	st := dev.Stats()
	require.Zero(t, st.Failovers, "moved by the MigrateTo, not by a failover")
	require.Equal(t, uint64(1), st.Migrations)
	// Make-before-break: well under a second of packets (10 ms each) lost
	// each way; a device that could not follow would lose the drain
	// deadline's worth, or fail over.
	require.Less(t, upRun, 100, "device->peer")
	require.Less(t, downRun, 100, "peer->device")
	checkMoveCounters(t, a, b, via, bStreams)
}

// movePair starts fwd-a with TCP and TLS listeners and fwd-b with them
// (bStreams) or without, and waits until each hears the other.
func movePair(t *testing.T, e *clusterEnv, via client.Transport, bStreams bool) (a, b *clusterNode, roots *x509.CertPool) {
	mod, roots := withStreams(t, "127.0.0.1")
	a = e.startWith(t, "fwd-a-"+via.String(), mod)
	bMod := mod
	if !bStreams {
		bMod = nil
	}
	b = e.startWith(t, "fwd-b-"+via.String(), bMod)
	testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if a.f.Stats().Peers < 1 || b.f.Stats().Peers < 1 {
			return fmt.Errorf("peers: a %d, b %d", a.f.Stats().Peers, b.f.Stats().Peers)
		}
		return nil
	})
	return a, b, roots
}

// flows are the two RTP flows of a test call: up from the device to the
// peer, down from the peer to the device.
type flows struct {
	up, down           *rtpFlow
	stopSend, stopRecv chan struct{}
	sendOnce, recvOnce sync.Once
	wg                 sync.WaitGroup
}

func startFlows(t *testing.T, dev *client.Session, peer *client.Conn) *flows {
	fl := &flows{up: &rtpFlow{ssrc: 0xa, got: map[uint16]time.Time{}}, down: &rtpFlow{ssrc: 0xb, got: map[uint16]time.Time{}},
		stopSend: make(chan struct{}), stopRecv: make(chan struct{})}
	for _, fn := range []func(){
		func() { fl.up.send(dev.WriteRTP, fl.stopSend) }, func() { fl.down.send(peer.WriteRTP, fl.stopSend) },
		func() { fl.up.receive(peer.Media(), fl.stopRecv) }, func() { fl.down.receive(dev.Media(), fl.stopRecv) },
	} {
		fl.wg.Add(1)
		go func() { defer fl.wg.Done(); fn() }()
	}
	t.Cleanup(func() {
		fl.sendOnce.Do(func() { close(fl.stopSend) })
		fl.recvOnce.Do(func() { close(fl.stopRecv) })
		fl.wg.Wait()
	})
	return fl
}

// heardAfter waits until packets numbered seq or later arrived both ways.
func (fl *flows) heardAfter(t *testing.T, seq int, when string) {
	testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if !fl.up.heardSince(seq) || !fl.down.heardSince(seq) {
			return fmt.Errorf("%s: fwd-b's member heard the device %v, the device heard it %v", when, fl.up.heardSince(seq), fl.down.heardSince(seq))
		}
		return nil
	})
}

// finish stops sending, gives the last packets up to 3 s to land (one
// still lost is counted, not fatal), and stops the receivers.
func (fl *flows) finish() {
	fl.sendOnce.Do(func() { close(fl.stopSend) })
	last := max(fl.up.sentSoFar(), fl.down.sentSoFar()) - 1
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end) && !(fl.up.heardSince(last) && fl.down.heardSince(last)); {
		<-time.After(20 * time.Millisecond)
	}
	fl.recvOnce.Do(func() { close(fl.stopRecv) })
	fl.wg.Wait()
}

// checkMoveCounters: fwd-a named fwd-b's listener of the device's
// transport (and the device joined there), or, fwd-b having none, its UDP
// address, counted as a fallback.
func checkMoveCounters(t *testing.T, a, b *clusterNode, via client.Transport, bStreams bool) {
	ss := a.f.Stats().Stream
	idx := forwarder.StreamTCP
	if via == client.TransportTLS {
		idx = forwarder.StreamTLS
	}
	if bStreams {
		require.NotZero(t, ss.MigrateTo[idx], "fwd-a named fwd-b's %s listener", via)
		require.Zero(t, ss.MigrateUDPFallback)
		require.Equal(t, uint64(1), b.f.Stats().Stream.Accepted[idx], "the device joined fwd-b over %s", via)
		return
	}
	require.Zero(t, ss.MigrateTo[idx])
	require.NotZero(t, ss.MigrateUDPFallback, "fwd-b has no listener: its UDP address, counted")
}

// awaitMigrated waits for the Session's EventMigrated; any failover or
// failed migration fails the test.
func awaitMigrated(t *testing.T, s *client.Session) client.SessionEvent {
	t.Helper()
	deadline := time.After(15 * time.Second)
	for {
		select {
		case ev := <-s.Events():
			switch ev.Kind {
			case client.EventMigrated:
				return ev
			case client.EventFailover, client.EventMigrateFailed, client.EventLost:
				t.Fatalf("not a migration: %+v", ev)
			}
		case <-deadline:
			t.Fatal("the device did not move within 15 s of the drain")
		}
	}
}
