package forwarder_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/calltest"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// A member moved to another forwarder (an operator's or the conductor's
// move: MigrateTo, make-before-break, protocol/README.md 5.7) is heard by
// every listener from its first packet on the new forwarder, whichever
// forwarder the listener is on. The member's old path is slow (that is why
// it is moved: its RTT jumped), so the leave it sends to the old forwarder
// when it switches arrives there well after its first packets do over the
// trunk from the new one; those packets must not be lost in between.

// slowPath relays one device's datagrams to a forwarder delay late (the
// forwarder's answers come back at once), from an address of its own: the
// forwarder sees the device at that address.
type slowPath struct {
	front, up *net.UDPConn
	delay     time.Duration
	dead      atomic.Bool // drop what the device sends: its link is down
	dev       atomic.Pointer[netip.AddrPort]
	q         chan delayed
	stop      chan struct{}
	wg        sync.WaitGroup
}

type delayed struct {
	at time.Time
	b  []byte
}

func newSlowPath(t *testing.T, backend netip.AddrPort, delay time.Duration) *slowPath {
	t.Helper()
	front, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(calltest.Loopback, 0)))
	require.NoError(t, err)
	up, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(backend))
	require.NoError(t, err)
	p := &slowPath{front: front, up: up, delay: delay, q: make(chan delayed, 4096), stop: make(chan struct{})}
	p.wg.Add(3)
	go p.read()
	go p.write()
	go p.back()
	t.Cleanup(func() {
		close(p.stop)
		_ = front.Close()
		_ = up.Close()
		p.wg.Wait()
	})
	return p
}

func (p *slowPath) addr() netip.AddrPort { return p.front.LocalAddr().(*net.UDPAddr).AddrPort() }

// read queues what the device sends, in order, each to go out delay later.
func (p *slowPath) read() {
	defer p.wg.Done()
	defer close(p.q)
	buf := make([]byte, 2048)
	for {
		n, dev, err := p.front.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		p.dev.Store(&dev)
		if p.dead.Load() {
			continue
		}
		select {
		case p.q <- delayed{time.Now().Add(p.delay), append([]byte(nil), buf[:n]...)}:
		default: // over 4096 in flight: never at 50 packets a second
		}
	}
}

// write sends the queued datagrams when they are due: a link's latency,
// not a synchronisation.
func (p *slowPath) write() {
	defer p.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for d := range p.q {
		timer.Reset(time.Until(d.at))
		select {
		case <-p.stop:
			return
		case <-timer.C:
		}
		_, _ = p.up.Write(d.b)
	}
}

// back relays the forwarder's answers to the device at once.
func (p *slowPath) back() {
	defer p.wg.Done()
	buf := make([]byte, 2048)
	for {
		n, err := p.up.Read(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if dev := p.dev.Load(); err == nil && dev != nil {
			_, _ = p.front.WriteToUDPAddrPort(buf[:n], *dev)
		}
	}
}

// seqLog is, per SSRC, the sequence numbers that arrived at one listener
// and when the first copy of each did.
type seqLog struct {
	mu  sync.Mutex
	got map[uint32]map[uint16]time.Time
}

func listen(t *testing.T, token []byte, fwd netip.AddrPort) *seqLog {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := client.Join(ctx, client.Config{Forwarders: []netip.AddrPort{fwd}, Token: token, LocalAddr: loopback,
		FailoverAfter: 5 * time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	l := &seqLog{got: map[uint32]map[uint16]time.Time{}}
	go func() {
		for p := range s.Media() {
			if p.Kind == protocol.KindRTP && len(p.Data) >= 12 {
				ssrc, seq := binary.BigEndian.Uint32(p.Data[8:]), binary.BigEndian.Uint16(p.Data[2:])
				l.mu.Lock()
				if l.got[ssrc] == nil {
					l.got[ssrc] = map[uint16]time.Time{}
				}
				if _, dup := l.got[ssrc][seq]; !dup {
					l.got[ssrc][seq] = time.Now()
				}
				l.mu.Unlock()
			}
			p.Release()
		}
	}()
	return l
}

func (l *seqLog) has(ssrc uint32, seq uint16) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.got[ssrc][seq]
	return ok
}

// gapBefore is how long the listener had heard nothing newer of ssrc when
// seq came: from the latest arrival, before seq's, of the 100 packets
// before it.
func (l *seqLog) gapBefore(ssrc uint32, seq uint16) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	at, ok := l.got[ssrc][seq]
	if !ok {
		return -1
	}
	var last time.Time
	for d := uint16(1); d <= 100; d++ {
		if a, ok := l.got[ssrc][seq-d]; ok && a.Before(at) && a.After(last) {
			last = a
		}
	}
	return at.Sub(last)
}

// mover sends, every 20 ms, one audio packet (RFC 6464 level: speech) and
// one other RTP packet (no audio level: video, as the relay reads it) with
// the same sequence number, and notes which forwarder its Session was on
// just before each pair was written.
type mover struct {
	s          *client.Session
	audio, vid uint32
	mu         sync.Mutex
	on         []netip.AddrPort // by sequence number
}

func (m *mover) run(stop <-chan struct{}) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for seq := uint16(0); seq < 3000; seq++ { // at most 60 s
		on := m.s.Forwarder()
		_ = m.s.WriteRTP(calltest.AudioRTP(m.audio, seq, true))
		_ = m.s.WriteRTP(calltest.RTP(m.vid, seq))
		m.mu.Lock()
		m.on = append(m.on, on)
		m.mu.Unlock()
		select {
		case <-stop:
			return
		case <-tick.C:
		}
	}
}

func (m *mover) sent() []netip.AddrPort {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]netip.AddrPort(nil), m.on...)
}

// moveCall is the call the move tests make: participant P talks on fwd-a
// through a slowPath of the given delay, listener LA on fwd-a, listener LC
// on fwd-c; fwd-b is where P will go.
type moveCall struct {
	e       *clusterEnv
	a, b, c *clusterNode
	call, p protocol.ID
	la, lc  *seqLog
	slow    *slowPath
	s       *client.Session
	m       *mover
}

func newMoveCall(t *testing.T, delay time.Duration) *moveCall {
	t.Helper()
	e := newClusterEnv(t)
	mc := &moveCall{e: e, a: e.start(t, "fwd-a"), b: e.start(t, "fwd-b"), c: e.start(t, "fwd-c"), call: protocol.NewID()}
	tokLA, _ := e.token(t, mc.call, 6)
	tokLC, _ := e.token(t, mc.call, 6)
	tokP, p := e.token(t, mc.call, 6)
	mc.p = p
	mc.la, mc.lc = listen(t, tokLA, mc.a.f.Addr()), listen(t, tokLC, mc.c.f.Addr())

	mc.slow = newSlowPath(t, mc.a.f.Addr(), delay)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	s, err := client.Join(ctx, client.Config{Forwarders: []netip.AddrPort{mc.slow.addr()}, Token: tokP, LocalAddr: loopback,
		FailoverAfter: 5 * time.Second, RejoinTimeout: 10 * time.Second})
	cancel()
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	mc.s, mc.m = s, &mover{s: s, audio: 0xa0d10, vid: 0x71de0}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { defer close(done); mc.m.run(stop) }()
	t.Cleanup(func() { close(stop); <-done })
	return mc
}

// heardEverywhere waits until both listeners hear the packet of both kinds
// P sent 400 ms ago (fwd-c has learned P's placement on fwd-a by then),
// and returns the packet after it.
func (mc *moveCall) heardEverywhere(t *testing.T) int {
	t.Helper()
	var from int
	m := mc.m
	testenv.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		n := len(m.sent()) - 21
		for _, l := range []*seqLog{mc.la, mc.lc} {
			for _, ssrc := range []uint32{m.audio, m.vid} {
				if n < 0 || !l.has(ssrc, uint16(n)) {
					return fmt.Errorf("packet %d of %#x not heard everywhere yet", n, ssrc)
				}
			}
		}
		from = n + 1
		return nil
	})
	return from
}

// switchedAt waits until P writes to fwd-b, and returns its first packet
// there.
func (mc *moveCall) switchedAt(t *testing.T, from int) int {
	t.Helper()
	var switched int
	testenv.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		on := mc.m.sent()
		for i := from; i < len(on); i++ {
			if on[i] == mc.b.f.Addr() {
				switched = i
				return nil
			}
		}
		return fmt.Errorf("P still on %v", mc.s.Forwarder())
	})
	return switched
}

// TestMovedMemberHeardFromItsFirstPacket: participant P talks on fwd-a
// over a path 150 ms slow one way, listener LA on fwd-a, listener LC on
// fwd-c. An operator moves P to fwd-b (fwd-a's MigrateTo; a conductor's
// PlacementMove takes the same path). From the moment the call is heard
// everywhere until 1 s after P's switch, every packet P sent, audio and
// video, reaches both listeners: those sent to fwd-a before the switch,
// and those sent to fwd-b after it (to LA over the trunk back to fwd-a,
// where P's session lasts until its leave arrives the slow way). Before
// syncRemoteSenders counted a member served here as a remote sender too,
// fwd-a dropped that video (DropUnsubscribed: no trunkSender for P) until
// the leave came: LA lost P's first 8 video packets after the switch,
// every run; audio, which needs no pair, passed.
func TestMovedMemberHeardFromItsFirstPacket(t *testing.T) {
	mc := newMoveCall(t, 150*time.Millisecond)
	e, a, b, c, m := mc.e, mc.a, mc.b, mc.c, mc.m
	la, lc, call, p := mc.la, mc.lc, mc.call, mc.p
	from := mc.heardEverywhere(t)

	adminMove(t, e, a, b, call, p)
	switched := mc.switchedAt(t, from)
	testenv.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if n := len(m.sent()); n < switched+50 {
			return fmt.Errorf("%d packets sent since the switch, want 50", n-switched)
		}
		return nil
	})
	on := m.sent()[:switched+50]

	// Every packet in [from, switched+50) reaches both listeners, with a
	// generous deadline for the slow path's last ones.
	testenv.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		var missing []string
		for _, l := range []struct {
			name string
			log  *seqLog
		}{{"LA on fwd-a", la}, {"LC on fwd-c", lc}} {
			for _, k := range []struct {
				name string
				ssrc uint32
			}{{"audio", m.audio}, {"video", m.vid}} {
				var lost []string
				for i := from; i < len(on); i++ {
					if !l.log.has(k.ssrc, uint16(i)) {
						lost = append(lost, fmt.Sprintf("%d (switch%+d)", i, i-switched))
					}
				}
				if len(lost) > 0 {
					missing = append(missing, fmt.Sprintf("%s lost %d %s packets: %s", l.name, len(lost), k.name, strings.Join(lost, ", ")))
				}
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("switch at packet %d (counted from %d); %s; fwd-a's trunk video drops of unknown senders: %d",
				switched, from, strings.Join(missing, "; "), a.f.Stats().Drops[forwarder.DropUnsubscribed])
		}
		return nil
	})
	t.Logf("P switched at packet %d (counted from %d): all %d packets of each kind heard on fwd-a and fwd-c",
		switched, from, len(on)-from)
	checkMoveMeasured(t, m, switched, b, []movedHere{{"fwd-a", a, forwarder.MoveDirectToTrunk, la}, {"fwd-c", c, forwarder.MoveTrunkToTrunk, lc}})
}

type movedHere struct {
	name string
	node *clusterNode
	path int // the path the move takes as this forwarder hears it
	log  *seqLog
}

// checkMoveMeasured: every forwarder with listeners of the moved member
// counted its move once, by the path it heard it on, and measured its gap
// (sender_moves.go); the forwarder it moved to, with no listener, none.
// The gaps are logged beside what the listener there heard: the same
// packets, later by the last hop's delay.
func checkMoveMeasured(t *testing.T, m *mover, switched int, to *clusterNode, heard []movedHere) {
	t.Helper()
	for _, h := range heard {
		var want [3]uint64
		want[h.path] = 1
		mv := h.node.f.SenderMoves()
		t.Logf("%s: %+v", h.name, mv)
		require.Equal(t, want, mv.Moves, "%s: moves by path (direct_to_trunk, trunk_to_direct, trunk_to_trunk)", h.name)
		require.Equal(t, uint64(1), mv.Measured, "%s: the move's gap measured", h.name)
		require.Zero(t, mv.Flaps, "%s: flaps", h.name)
		t.Logf("%s measured a gap of %v, %d packets still owed by the old path; its listener's gap before packet %d: %v",
			h.name, mv.LastGap, mv.Skipped, switched, h.log.gapBefore(m.audio, uint16(switched)))
	}
	require.Equal(t, [3]uint64{}, to.f.SenderMoves().Moves, "the forwarder P moved to hears no move")
}

// TestMoveGapMeasuredWhenTheOldPathDies: P's path to fwd-a goes down (it
// drops what P sends; fwd-a's answers still reach P), and 400 ms later an
// operator moves P to fwd-b. The listeners heard nothing from P in between:
// fwd-a and fwd-c each measure that gap on the move, as long as their
// listeners heard it (the old path was 20 ms slow, so the gap is 400 ms
// less that, give or take the moments it took to move).
func TestMoveGapMeasuredWhenTheOldPathDies(t *testing.T) {
	mc := newMoveCall(t, 20*time.Millisecond)
	from := mc.heardEverywhere(t)
	mc.slow.dead.Store(true)
	down := time.Now()
	testenv.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if d := time.Since(down); d < 400*time.Millisecond {
			return fmt.Errorf("the link is down for %v of 400 ms", d) // the outage the test is about, not a synchronisation
		}
		return nil
	})
	adminMove(t, mc.e, mc.a, mc.b, mc.call, mc.p)
	switched := mc.switchedAt(t, from)
	testenv.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		for _, l := range []*seqLog{mc.la, mc.lc} {
			if !l.has(mc.m.audio, uint16(switched)) {
				return fmt.Errorf("P's first packet on fwd-b, %d, not heard everywhere yet", switched)
			}
		}
		return nil
	})
	checkMoveMeasured(t, mc.m, switched, mc.b, []movedHere{
		{"fwd-a", mc.a, forwarder.MoveDirectToTrunk, mc.la}, {"fwd-c", mc.c, forwarder.MoveTrunkToTrunk, mc.lc}})
	for _, n := range []*clusterNode{mc.a, mc.c} {
		// As Prometheus scrapes it (a pedantic registry checks that what the
		// collector describes is what it collects).
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(n.f.Collector())
		mfs, err := reg.Gather()
		require.NoError(t, err)
		var scraped *dto.Histogram
		for _, mf := range mfs {
			if mf.GetName() == "callrelay_forwarder_sender_move_gap_seconds" {
				scraped = mf.GetMetric()[0].GetHistogram()
			}
		}
		require.NotNil(t, scraped, "the gap histogram is exported")
		require.Equal(t, uint64(1), scraped.GetSampleCount())
		mv := n.f.SenderMoves()
		require.InDelta(t, mv.LastGap.Seconds(), scraped.GetSampleSum(), 0.0005)
		// 400 ms down, less the old path's 20 ms: a gap under 300 ms would
		// mean the relay missed the hole its listeners heard.
		require.GreaterOrEqual(t, mv.LastGap, 300*time.Millisecond, "the gap measured on the move")
		require.Greater(t, mv.Skipped, uint64(10), "P's packets lost on the dead path")
	}
}
