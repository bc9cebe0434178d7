package forwarder_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/rtcp"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/linkem"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// The NACK flood of issue 17: a member whose REMB claims 10 Gbit/s NACKs
// every packet it gets, again and again, while another receiver behind a
// lossy link (10% of its downlink lost, linkem) recovers its losses by NACK
// (client.Feedback). Everything is real: the forwarder, the client library,
// UDP on loopback.
//
// The lossy receiver's recovery (recovered / (recovered + given up)) is
// measured twice in the same test, on two video streams of 500 packets:
// without the attacker (the baseline), then with it. With one resend count
// per packet shared by every receiver the attacker used up each packet's
// resends before the lossy receiver asked (recovery fell from 100% to
// 0%); now each receiver has its own, and what the attacker is resent is
// bounded by its share of what it was sent.
func TestNackFloodCostsOnlyTheFlooder(t *testing.T) {
	r := runRelay(t, nil)
	call := protocol.NewID()
	sender := joinVideo(t, r.f.Addr(), r.mint(t, call, protocol.ClassGroup, 8), false, nil)
	link, err := linkem.New(r.f.Addr(), linkem.Profile{}, linkem.Profile{Loss: 0.1, Delay: 10 * time.Millisecond}, 17)
	require.NoError(t, err)
	t.Cleanup(func() { _ = link.Close() })
	lossy := joinVideo(t, link.Addr(), r.mint(t, call, protocol.ClassGroup, 8), true, nil)
	flooder := &nackFlooder{}
	attacker := joinVideo(t, r.f.Addr(), r.mint(t, call, protocol.ClassGroup, 8), false, flooder.observe)
	attackerAddr := attacker.conn.MappedAddr()

	// A first stream warms the legs up (estimates, budgets, shares): both
	// measured windows then start from a call in progress.
	lossy.window(t, sender, 150)
	baseline := lossy.window(t, sender, 500)
	stop := flooder.run(t, attacker.conn)
	nackBytes0 := attacker.conn.Stats().BytesSent
	attackerLeg0 := legAt(t, r.f, attackerAddr)
	attacked := lossy.window(t, sender, 500)
	stop()
	nackBytes := attacker.conn.Stats().BytesSent - nackBytes0
	leg := legAt(t, r.f, attackerAddr)
	resent := leg.ResentBytes - attackerLeg0.ResentBytes
	media := (leg.SentBytes - leg.ResentBytes) - (attackerLeg0.SentBytes - attackerLeg0.ResentBytes)

	t.Logf("lossy receiver without the attacker: %s", baseline)
	t.Logf("lossy receiver with it:              %s", attacked)
	totalMedia := leg.SentBytes - leg.ResentBytes
	t.Logf("attacker: %d NACK rounds, %d bytes of NACK and REMB sent; %d bytes resent to it (%.3f per NACK byte) during %d bytes of media; since it joined %d resent against %d of media (%.3f)",
		flooder.rounds.Load(), nackBytes, resent, float64(resent)/float64(max(nackBytes, 1)), media,
		leg.ResentBytes, totalMedia, float64(leg.ResentBytes)/float64(max(totalMedia, 1)))
	s := r.f.Stats()
	t.Logf("relay: NACK outcomes %v (resent, not cached, bounded, over budget, over share)", s.NackOutcomes)

	require.GreaterOrEqual(t, baseline.lost(), uint64(20), "the link lost enough to measure")
	require.GreaterOrEqual(t, attacked.lost(), uint64(20))
	require.GreaterOrEqual(t, baseline.ratio(), 0.85, "the baseline recovers")
	require.GreaterOrEqual(t, attacked.ratio(), baseline.ratio()-0.1, "the attacker costs the lossy receiver (almost) nothing")
	require.Positive(t, flooder.rounds.Load())
	require.Positive(t, resent, "the attacker gets its share")
	require.LessOrEqual(t, float64(leg.ResentBytes), 0.25*float64(totalMedia), "and never more than a quarter of what it was sent")
	require.Positive(t, s.NackOutcomes[4], "its excess counted as over_share")
}

// videoMember is a device of these tests: a client Conn, optionally a
// receiver feedback, and the video camera it may run.
type videoMember struct {
	conn *client.Conn
	fb   *client.Feedback
	mu   sync.Mutex
	cam  *client.VideoSender
	done chan struct{}
}

// joinVideo joins through fwd and reads everything it receives: to its
// feedback (with feedback), its camera, and observe.
func joinVideo(t *testing.T, fwd netip.AddrPort, token []byte, feedback bool, observe func(*client.Packet)) *videoMember {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, client.Config{Forwarders: []netip.AddrPort{fwd}, Token: token, LocalAddr: loopback})
	require.NoError(t, err)
	m := &videoMember{conn: c, done: make(chan struct{})}
	if feedback {
		m.fb = client.NewFeedback(c, client.FeedbackConfig{SSRC: 0x1055})
	}
	go func() {
		defer close(m.done)
		for p := range c.Media() {
			if m.fb != nil && !m.fb.Observe(p) {
				p.Release() // a duplicate
				continue
			}
			m.mu.Lock()
			if m.cam != nil && p.Kind == protocol.KindRTCP {
				m.cam.HandleRTCP(p.Data)
			}
			m.mu.Unlock()
			if observe != nil {
				observe(p)
			}
			p.Release()
		}
	}()
	t.Cleanup(func() {
		m.stopCamera()
		if m.fb != nil {
			m.fb.Close()
		}
		_ = c.Close()
		<-m.done
	})
	return m
}

func (m *videoMember) startCamera(t *testing.T) [3]uint32 {
	t.Helper()
	var ssrcs [3]uint32
	for i := range ssrcs {
		ssrcs[i] = uint32(time.Now().UnixNano())*2654435761 + uint32(i) | 1
	}
	v, err := client.NewVideoSender(m.conn, client.VideoConfig{SSRCs: ssrcs, Key: client.NewMediaKey(), InitialBitrate: 1_000_000})
	require.NoError(t, err)
	m.mu.Lock()
	m.cam = v
	m.mu.Unlock()
	return v.SSRCs()
}

func (m *videoMember) stopCamera() {
	m.mu.Lock()
	v := m.cam
	m.cam = nil
	m.mu.Unlock()
	if v != nil {
		v.Close()
	}
}

// recovery is one measured stream at the lossy receiver.
type recovery struct{ packets, missing, reordered, recovered, unrecovered uint64 }

func (r recovery) lost() uint64 { return r.recovered + r.unrecovered }

func (r recovery) ratio() float64 { return float64(r.recovered) / float64(max(r.lost(), 1)) }

func (r recovery) String() string {
	return fmt.Sprintf("%d packets, %d missing (%d reordered), %d recovered by NACK, %d given up: recovery %.3f",
		r.packets, r.missing, r.reordered, r.recovered, r.unrecovered, r.ratio())
}

// window has the sender send a new stream until m received n packets of
// it, stops it, and waits until every gap m found in it was recovered or
// given up: the stream's figures are then final.
func (m *videoMember) window(t *testing.T, sender *videoMember, n uint64) recovery {
	t.Helper()
	ssrc := sender.startCamera(t)[0]
	stream := func() client.StreamStats { s, _ := m.fb.Stats().Stream(ssrc); return s }
	testenv.CheckFor(t, time.Minute, 20*time.Millisecond, func() error {
		if got := stream().Packets; got < n {
			return fmt.Errorf("%d of %d packets of the window", got, n)
		}
		return nil
	})
	sender.stopCamera()
	testenv.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		if p := stream().Pending; p != 0 {
			return fmt.Errorf("%d gaps still waited for", p)
		}
		return nil
	})
	s := stream()
	return recovery{packets: s.Packets, missing: s.Missing, reordered: s.Reordered, recovered: s.Recovered, unrecovered: s.Unrecovered}
}

// nackFlooder is the attacker: every 10 ms it NACKs the last 272 sequence
// numbers of every stream it receives, with a REMB of 10 Gbit/s.
type nackFlooder struct {
	mu     sync.Mutex
	high   map[uint32]uint16 // highest sequence number per SSRC
	rounds atomic.Uint64
}

func (f *nackFlooder) observe(p *client.Packet) {
	if p.Kind != protocol.KindRTP || len(p.Data) < 12 {
		return
	}
	ssrc, seq := binary.BigEndian.Uint32(p.Data[8:12]), binary.BigEndian.Uint16(p.Data[2:4])
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.high == nil {
		f.high = map[uint32]uint16{}
	}
	if h, ok := f.high[ssrc]; !ok || int16(seq-h) > 0 {
		f.high[ssrc] = seq
	}
}

// run floods until the returned stop is called.
func (f *nackFlooder) run(t *testing.T, c *client.Conn) (stop func()) {
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tk := time.NewTicker(10 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-quit:
				return
			case <-tk.C:
			}
			pkts := []rtcp.Packet{&rtcp.ReceiverEstimatedMaximumBitrate{SenderSSRC: 0xbad, Bitrate: 10e9}}
			f.mu.Lock()
			for ssrc, h := range f.high {
				nack := &rtcp.TransportLayerNack{SenderSSRC: 0xbad, MediaSSRC: ssrc}
				for i := 15; i >= 0; i-- {
					nack.Nacks = append(nack.Nacks, rtcp.NackPair{PacketID: h - uint16(17*i+16), LostPackets: 0xffff})
				}
				pkts = append(pkts, nack)
			}
			f.mu.Unlock()
			if c.WriteRTCP(pkts...) == nil {
				f.rounds.Add(1)
			}
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { close(quit); <-done }) }
	t.Cleanup(stop)
	return stop
}

// legAt is the forwarder's view of the session at a.
func legAt(t *testing.T, f *forwarder.Forwarder, a netip.AddrPort) forwarder.Leg {
	t.Helper()
	for _, l := range f.Legs() {
		if l.Addr == a {
			return l
		}
	}
	t.Fatalf("no session at %s", a)
	return forwarder.Leg{}
}
