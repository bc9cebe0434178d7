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

// seqLog is, per SSRC, the sequence numbers that arrived at one listener.
type seqLog struct {
	mu  sync.Mutex
	got map[uint32]map[uint16]bool
}

func listen(t *testing.T, token []byte, fwd netip.AddrPort) *seqLog {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := client.Join(ctx, client.Config{Forwarders: []netip.AddrPort{fwd}, Token: token, LocalAddr: loopback,
		FailoverAfter: 5 * time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	l := &seqLog{got: map[uint32]map[uint16]bool{}}
	go func() {
		for p := range s.Media() {
			if p.Kind == protocol.KindRTP && len(p.Data) >= 12 {
				ssrc, seq := binary.BigEndian.Uint32(p.Data[8:]), binary.BigEndian.Uint16(p.Data[2:])
				l.mu.Lock()
				if l.got[ssrc] == nil {
					l.got[ssrc] = map[uint16]bool{}
				}
				l.got[ssrc][seq] = true
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
	return l.got[ssrc][seq]
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
	e := newClusterEnv(t)
	a, b, c := e.start(t, "fwd-a"), e.start(t, "fwd-b"), e.start(t, "fwd-c")
	call := protocol.NewID()
	tokLA, _ := e.token(t, call, 6)
	tokLC, _ := e.token(t, call, 6)
	tokP, p := e.token(t, call, 6)
	la, lc := listen(t, tokLA, a.f.Addr()), listen(t, tokLC, c.f.Addr())

	slow := newSlowPath(t, a.f.Addr(), 150*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	s, err := client.Join(ctx, client.Config{Forwarders: []netip.AddrPort{slow.addr()}, Token: tokP, LocalAddr: loopback,
		FailoverAfter: 5 * time.Second, RejoinTimeout: 10 * time.Second})
	cancel()
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	m := &mover{s: s, audio: 0xa0d10, vid: 0x71de0}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { defer close(done); m.run(stop) }()
	t.Cleanup(func() { close(stop); <-done })

	// Counting starts once both listeners hear the packet of both kinds P
	// sent 400 ms ago (fwd-c has learned P's placement on fwd-a by then).
	var from int
	testenv.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		n := len(m.sent()) - 21
		for _, l := range []*seqLog{la, lc} {
			for _, ssrc := range []uint32{m.audio, m.vid} {
				if n < 0 || !l.has(ssrc, uint16(n)) {
					return fmt.Errorf("packet %d of %#x not heard everywhere yet", n, ssrc)
				}
			}
		}
		from = n + 1
		return nil
	})

	adminMove(t, e, a, b, call, p)
	var switched int
	testenv.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		on := m.sent()
		for i := from; i < len(on); i++ {
			if on[i] == b.f.Addr() {
				switched = i
				return nil
			}
		}
		return fmt.Errorf("P still on %v", s.Forwarder())
	})
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
}
