package forwarder_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/calltest"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// Replayed cluster traffic (issue 17 item 3), over real sockets and a real
// NATS server: what a party on the internal network captured and sends
// again changes nothing, and is counted.

// trunkTap sits in front of a forwarder's trunk (the address it
// advertises), relays every datagram to it and keeps a copy: what an
// attacker on the internal network captures.
type trunkTap struct {
	front, out *net.UDPConn
	backend    netip.AddrPort
	mu         sync.Mutex
	frames     [][]byte
	wg         sync.WaitGroup
}

func newTrunkTap(t *testing.T) *trunkTap {
	t.Helper()
	listen := func() *net.UDPConn {
		c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(calltest.Loopback, 0)))
		require.NoError(t, err)
		return c
	}
	probe := listen() // the port the forwarder's trunk will bind
	tap := &trunkTap{front: listen(), out: listen(), backend: probe.LocalAddr().(*net.UDPAddr).AddrPort()}
	require.NoError(t, probe.Close())
	tap.wg.Add(1)
	go func() {
		defer tap.wg.Done()
		buf := make([]byte, 2048)
		for {
			n, _, err := tap.front.ReadFromUDPAddrPort(buf)
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err != nil {
				continue
			}
			tap.mu.Lock()
			if len(tap.frames) < 5000 {
				tap.frames = append(tap.frames, append([]byte(nil), buf[:n]...))
			}
			tap.mu.Unlock()
			_, _ = tap.out.WriteToUDPAddrPort(buf[:n], tap.backend)
		}
	}()
	t.Cleanup(func() { _ = tap.front.Close(); _ = tap.out.Close(); tap.wg.Wait() })
	return tap
}

func (tap *trunkTap) addr() netip.AddrPort { return tap.front.LocalAddr().(*net.UDPAddr).AddrPort() }

func (tap *trunkTap) captured() [][]byte {
	tap.mu.Lock()
	defer tap.mu.Unlock()
	return append([][]byte(nil), tap.frames...)
}

// Captured trunk frames sent again to the forwarder they were meant for,
// from another address, are dropped by its replay window and counted;
// none reaches a device, and the call goes on.
func TestTrunkReplayedFramesDropped(t *testing.T) {
	e := newClusterEnv(t)
	a := e.start(t, "fwd-a")
	tap := newTrunkTap(t)
	b := e.startWith(t, "fwd-b", func(c *forwarder.Config) {
		c.Cluster.TrunkListen, c.Cluster.TrunkAdvertise = tap.backend.String(), tap.addr()
	})
	_, m1, m2, stop := e.callAcross(t, a, b)
	testenv.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if n := len(tap.captured()); n < 100 {
			return fmt.Errorf("%d frames captured", n)
		}
		return nil
	})
	close(stop)
	// Silence: wait until m2 has had everything m1 sent.
	last := -1
	testenv.CheckFor(t, 5*time.Second, 100*time.Millisecond, func() error {
		if n := m2.Count(m1.SSRC); n != last {
			last = n
			return fmt.Errorf("m2 still receiving (%d from m1)", n)
		}
		return nil
	})
	frames := tap.captured()
	heard, out := m2.Count(m1.SSRC), b.f.Stats().PacketsOut
	replays0 := b.f.Stats().Drops[forwarder.DropTrunkReplay]

	attacker, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(calltest.Loopback, 0)))
	require.NoError(t, err)
	defer attacker.Close()
	for _, f := range frames {
		_, err := attacker.WriteToUDPAddrPort(f, b.f.TrunkAddr())
		require.NoError(t, err)
	}
	testenv.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if d := b.f.Stats().Drops[forwarder.DropTrunkReplay] - replays0; d != uint64(len(frames)) {
			return fmt.Errorf("%d of %d replayed frames dropped as replays", d, len(frames))
		}
		return nil
	})
	require.Equal(t, heard, m2.Count(m1.SSRC), "no replayed packet reached the device")
	require.Less(t, b.f.Stats().PacketsOut-out, uint64(len(frames))/10,
		"the replayed frames were not fanned out (what went out is the forwarder's own: keepalives, reports)")
	t.Logf("%d captured frames replayed: %d dropped as replays, %d more packets from m1 at m2",
		len(frames), b.f.Stats().Drops[forwarder.DropTrunkReplay]-replays0, m2.Count(m1.SSRC)-heard)

	stop = make(chan struct{})
	defer close(stop)
	talk(t, []*member{m1, m2}, stop)
	allHearAll(t, []*member{m1, m2}, time.Now(), 5*time.Second)
}

// A "member left" notice captured on the call's subject and replayed every
// 100 ms, after the member came back to the same forwarder, is ignored and
// counted by the other forwarder: the member's media keeps reaching the
// call.
func TestReplayedLeftNoticeSilencesNobody(t *testing.T) {
	e := newClusterEnv(t)
	a, b := e.start(t, "fwd-a"), e.start(t, "fwd-b")
	call := protocol.NewID()
	m1 := e.join(t, call, 6, 1, a.f.Addr())
	tok2, p2 := e.token(t, call, 6)
	m2 := calltest.Join(t, tok2, 2, b.f.Addr())
	stop := make(chan struct{})
	talk(t, []*member{m1, m2}, stop)
	allHearAll(t, []*member{m1, m2}, time.Now(), 5*time.Second)

	nc, err := nats.Connect(e.nats.ClientURL())
	require.NoError(t, err)
	defer nc.Close()
	subject := protocol.CallSubject("callrelay", call)
	sub, err := nc.SubscribeSync(subject)
	require.NoError(t, err)
	require.NoError(t, nc.Flush())
	close(stop)
	require.NoError(t, m2.S.Close()) // leaves fwd-b: it says so on the call's subject
	var captured []byte
	deadline := time.Now().Add(5 * time.Second)
	for captured == nil {
		msg, err := sub.NextMsg(time.Until(deadline))
		require.NoError(t, err, "no left notice seen")
		var n protocol.MemberNotice
		if n.Unmarshal(msg.Data, e.key) == nil && n.Op == protocol.MemberLeft && n.Participant == p2 {
			captured = msg.Data
		}
	}
	require.NoError(t, sub.Unsubscribe())

	// The same participant comes back to fwd-b.
	m2 = calltest.Join(t, tok2, 2, b.f.Addr())
	stop = make(chan struct{})
	defer close(stop)
	talk(t, []*member{m1, m2}, stop)
	allHearAll(t, []*member{m1, m2}, time.Now(), 5*time.Second)

	ignored0 := a.f.Stats().Notices.Ignored
	heard0, begin := m2.Count(m1.SSRC), time.Now()
	const replays = 30
	tick := time.NewTicker(100 * time.Millisecond)
	for i := 0; i < replays; i++ {
		require.NoError(t, nc.Publish(subject, captured))
		<-tick.C
	}
	tick.Stop()
	heard, elapsed := m2.Count(m1.SSRC)-heard0, time.Since(begin)
	testenv.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if d := a.f.Stats().Notices.Ignored - ignored0; d < replays {
			return fmt.Errorf("fwd-a ignored %d of %d replayed notices", d, replays)
		}
		return nil
	})
	sent := int(elapsed / (20 * time.Millisecond))
	t.Logf("replayed left notice %d times over %v: m2 heard %d of about %d packets from m1; fwd-a ignored %d notices",
		replays, elapsed.Round(time.Millisecond), heard, sent, a.f.Stats().Notices.Ignored-ignored0)
	require.GreaterOrEqual(t, heard, sent*8/10, "m1 kept reaching m2 through the replays (a loaded machine may delay a few)")
	allHearAll(t, []*member{m1, m2}, time.Now(), 5*time.Second)
}

// A dead forwarder's last heartbeat, captured and replayed every 100 ms,
// does not keep it alive: the other forwarder takes it for dead as if
// nothing were replayed, and counts the replays. A heartbeat made long
// ago (an old capture, sealed here with the cluster key as an attacker
// could not) is not taken either.
func TestReplayedHeartbeatKeepsNoDeadPeerAlive(t *testing.T) {
	e := newClusterEnv(t)
	a, b := e.start(t, "fwd-a"), e.start(t, "fwd-b")
	nc, err := nats.Connect(e.nats.ClientURL())
	require.NoError(t, err)
	defer nc.Close()
	sub, err := nc.SubscribeSync(protocol.ForwardersSubject("callrelay"))
	require.NoError(t, err)
	require.NoError(t, nc.Flush())
	var last []byte
	deadline := time.Now().Add(5 * time.Second)
	for last == nil {
		msg, err := sub.NextMsg(time.Until(deadline))
		require.NoError(t, err, "no heartbeat of fwd-b seen")
		var an protocol.ForwarderAnnounce
		if an.Unmarshal(msg.Data, e.key) == nil && an.ID == "fwd-b" {
			last = msg.Data
		}
	}
	testenv.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if p := a.f.Stats().Peers; p != 1 {
			return fmt.Errorf("%d peers", p)
		}
		return nil
	})
	b.stop()
	// fwd-b's very last heartbeat: the newest seen once it has stopped
	// (fwd-a's go on, every 100 ms).
	for quiet := time.Now(); time.Since(quiet) < 500*time.Millisecond; {
		msg, err := sub.NextMsg(500 * time.Millisecond)
		if errors.Is(err, nats.ErrTimeout) {
			break
		}
		require.NoError(t, err)
		var an protocol.ForwarderAnnounce
		if an.Unmarshal(msg.Data, e.key) == nil && an.ID == "fwd-b" {
			last, quiet = msg.Data, time.Now()
		}
	}
	require.NoError(t, sub.Unsubscribe())
	stale0 := a.f.Stats().Freshness.HeartbeatsStale
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			_ = nc.Publish(protocol.ForwardersSubject("callrelay"), last)
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	defer func() { close(done); wg.Wait() }()
	testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		s := a.f.Stats()
		if s.Peers != 0 || s.Freshness.HeartbeatsStale-stale0 < 3 {
			return fmt.Errorf("%d peers alive while fwd-b is dead; %d replays dropped", s.Peers, s.Freshness.HeartbeatsStale-stale0)
		}
		return nil
	})

	old, err := (&protocol.ForwarderAnnounce{ID: "fwd-z", Media: netip.MustParseAddrPort("127.0.0.1:3478"),
		Trunk: netip.MustParseAddrPort("127.0.0.1:7000"), Seq: 1, Started: time.Now().Add(-time.Hour),
		At: time.Now().Add(-time.Minute)}).Marshal(nil, e.key)
	require.NoError(t, err)
	old0 := a.f.Stats().Freshness.HeartbeatsOld
	require.NoError(t, nc.Publish(protocol.ForwardersSubject("callrelay"), old))
	testenv.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if d := a.f.Stats().Freshness.HeartbeatsOld - old0; d != 1 {
			return fmt.Errorf("%d old heartbeats dropped", d)
		}
		return nil
	})
	require.Zero(t, a.f.Stats().Peers, "a minute-old heartbeat brings no forwarder to life")
}

// Messages of a type that does not belong on a subject are dropped and
// counted by type of subject; load reports on the forwarders' subject are
// authenticated, and a forged one counted as a bad message.
func TestClusterMessageWrongSubject(t *testing.T) {
	e := newClusterEnv(t)
	a, b := e.start(t, "fwd-a"), e.start(t, "fwd-b")
	call, m1, m2, stop := e.callAcross(t, a, b)
	defer close(stop)
	nc, err := nats.Connect(e.nats.ClientURL())
	require.NoError(t, err)
	defer nc.Close()
	notice, err := (&protocol.MemberNotice{Op: protocol.MemberLeft, Call: call, Participant: protocol.NewID(),
		Forwarder: "fwd-b", At: time.Now()}).Marshal(nil, e.key)
	require.NoError(t, err)
	report, err := (&protocol.LoadReport{Forwarder: "fwd-b", Started: time.Now(), At: time.Now(), Seq: 1}).Marshal(nil, e.key)
	require.NoError(t, err)
	other, err := protocol.NewClusterKey()
	require.NoError(t, err)
	forgedReport, err := (&protocol.LoadReport{Forwarder: "fwd-b", Started: time.Now(), At: time.Now(), Seq: 2}).Marshal(nil, other)
	require.NoError(t, err)
	before := a.f.Stats()
	require.NoError(t, nc.Publish(protocol.ForwardersSubject("callrelay"), notice)) // a notice where heartbeats go
	require.NoError(t, nc.Publish(protocol.CallSubject("callrelay", call), report)) // a load report on a call's subject
	require.NoError(t, nc.Publish(protocol.ForwardersSubject("callrelay"), forgedReport))
	require.NoError(t, nc.Flush())
	testenv.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		s := a.f.Stats()
		wrong := s.Freshness.WrongType
		if wrong[0]-before.Freshness.WrongType[0] != 1 || wrong[1]-before.Freshness.WrongType[1] != 1 || s.ClusterBad-before.ClusterBad < 1 {
			return fmt.Errorf("wrong type %v (before %v), bad %d (before %d)", wrong, before.Freshness.WrongType, s.ClusterBad, before.ClusterBad)
		}
		return nil
	})
	allHearAll(t, []*member{m1, m2}, time.Now(), 5*time.Second)
}
