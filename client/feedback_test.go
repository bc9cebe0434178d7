package client

import (
	"sync"
	"testing"
	"time"

	"github.com/pion/rtcp"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// rtcpSink records what a Feedback writes, after a round trip through
// pion/rtcp's encoder and decoder: what it sends must parse.
type rtcpSink struct {
	mu  sync.Mutex
	got [][]rtcp.Packet // one entry per datagram
}

func (k *rtcpSink) WriteRTCP(pkts ...rtcp.Packet) error {
	b, err := rtcp.Marshal(pkts)
	if err != nil {
		return err
	}
	parsed, err := rtcp.Unmarshal(b)
	if err != nil {
		return err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.got = append(k.got, parsed)
	return nil
}

func (k *rtcpSink) take() [][]rtcp.Packet {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := k.got
	k.got = nil
	return out
}

// nacked returns the sequence numbers NACKed for ssrc in dgs.
func nacked(dgs [][]rtcp.Packet, ssrc uint32) []uint16 {
	var out []uint16
	for _, dg := range dgs {
		for _, p := range dg {
			if n, ok := p.(*rtcp.TransportLayerNack); ok && n.MediaSSRC == ssrc {
				for _, pair := range n.Nacks {
					out = append(out, pair.PacketList()...)
				}
			}
		}
	}
	return out
}

func count[T rtcp.Packet](dgs [][]rtcp.Packet) int {
	n := 0
	for _, dg := range dgs {
		for _, p := range dg {
			if _, ok := p.(T); ok {
				n++
			}
		}
	}
	return n
}

// rtpPkt builds an RTP packet of size bytes, with the video frame
// extension if vf is set and abs-send-time if abs is.
func rtpPkt(t testing.TB, ssrc uint32, seq uint16, size int, vf *protocol.VideoFrame, abs *time.Time) []byte {
	t.Helper()
	h := protocol.RTPHeaderFields{PayloadType: 96, SequenceNumber: seq, Timestamp: uint32(seq) * 3000, SSRC: ssrc}
	if vf != nil {
		b, err := vf.Byte()
		require.NoError(t, err)
		h.Extensions[0] = protocol.RTPExtension{ID: protocol.DefaultVideoFrameExtensionID, Data: []byte{b}}
	}
	if abs != nil {
		d := protocol.AbsSendTimeBytes(protocol.AbsSendTime(*abs))
		h.Extensions[1] = protocol.RTPExtension{ID: protocol.DefaultAbsSendTimeExtensionID, Data: d[:]}
	}
	b := make([]byte, max(size, h.MarshalSize()+1))
	_, err := h.MarshalTo(b)
	require.NoError(t, err)
	return b
}

// tickEvery runs f's timer logic every 5ms from from to to.
func tickEvery(f *Feedback, from, to time.Time) {
	for at := from; !at.After(to); at = at.Add(5 * time.Millisecond) {
		f.tick(at)
	}
}

// Packets in order, or reordered within the wait, are never NACKed; a gap
// is NACKed after the wait, up to three times about a round trip apart, and
// given up after a second; a packet that arrives after its NACK counts as
// recovered.
func TestFeedbackNACKsGapsOnly(t *testing.T) {
	sink := &rtcpSink{}
	f := newFeedback(sink, FeedbackConfig{SSRC: 7}, t0)
	const ssrc = 0x1111
	obs := func(seq uint16, at time.Time) bool { return f.ObserveRTP(rtpPkt(t, ssrc, seq, 200, nil, nil), at) }

	for i := range 50 {
		seq := uint16(100 + i) //nolint:gosec // small
		switch i {             // 120 and 121 swapped, 5ms apart
		case 20:
			seq = 121
		case 21:
			seq = 120
		}
		require.True(t, obs(seq, ms(2*i)))
		f.tick(ms(2*i + 1))
	}
	tickEvery(f, ms(100), ms(1500))
	dgs := sink.take()
	require.Empty(t, nacked(dgs, ssrc), "no gap, no NACK")
	require.Positive(t, count[*rtcp.ReceiverReport](dgs))

	at := ms(2000)
	require.True(t, obs(150, at))
	require.True(t, obs(151, at))
	require.True(t, obs(154, at)) // 152, 153 missing
	tickEvery(f, at, at.Add(10*time.Millisecond))
	require.Empty(t, nacked(sink.take(), ssrc), "within the reordering wait")
	f.tick(at.Add(15 * time.Millisecond))
	dgs = sink.take()
	require.Equal(t, []uint16{152, 153}, nacked(dgs, ssrc))
	nack := dgs[0][0].(*rtcp.TransportLayerNack)
	require.Equal(t, uint32(7), nack.SenderSSRC)

	require.True(t, obs(153, at.Add(40*time.Millisecond)), "the retransmission")
	var tries []time.Duration
	for d := 20 * time.Millisecond; d <= 1500*time.Millisecond; d += 5 * time.Millisecond {
		f.tick(at.Add(d))
		if len(nacked(sink.take(), ssrc)) > 0 {
			tries = append(tries, d)
		}
	}
	require.Equal(t, []time.Duration{115 * time.Millisecond, 215 * time.Millisecond}, tries, "152 twice more, 100ms apart")

	st, ok := f.Stats().Stream(ssrc)
	require.True(t, ok)
	require.Equal(t, uint64(54), st.Packets)
	require.Equal(t, uint64(3), st.Missing, "120 (reordered), 152, 153")
	require.Equal(t, uint64(1), st.Recovered)
	require.Equal(t, uint64(1), st.Unrecovered)
	require.Equal(t, uint64(1), st.Lost)
	require.Equal(t, uint64(4), st.NACKed)
	require.Zero(t, st.Pending)
	require.Equal(t, uint64(1), st.Reordered, "120 came before its NACK was due")
	require.Equal(t, uint16(154), st.HighestSeq)
	require.False(t, st.Video)
	require.Zero(t, st.PLIs, "audio gets no PLI")
	require.Equal(t, uint64(3), f.Stats().NACKs)
}

func TestFeedbackDropsDuplicates(t *testing.T) {
	sink := &rtcpSink{}
	f := newFeedback(sink, FeedbackConfig{}, t0)
	p := rtpPkt(t, 0x22, 9, 300, nil, nil)
	require.True(t, f.ObserveRTP(p, ms(0)))
	require.False(t, f.ObserveRTP(p, ms(1)))
	require.True(t, f.ObserveRTP(rtpPkt(t, 0x22, 10, 300, nil, nil), ms(2)))
	require.False(t, f.ObserveRTP(p, ms(3)))
	require.True(t, f.ObserveRTP([]byte{0x80, 1, 2}, ms(4)), "garbage is for the decryption to judge")
	require.True(t, f.Observe(&Packet{Kind: protocol.KindRTCP, Data: marshalRTCP(t, &rtcp.ReceiverReport{SSRC: 1})}))
	st, _ := f.Stats().Stream(0x22)
	require.Equal(t, uint64(2), st.Packets)
	require.Equal(t, uint64(600), st.Bytes)
	require.Equal(t, uint64(2), st.Duplicates)
	require.Len(t, f.Stats().Streams, 1)
}

// Every ReportInterval, one compound packet: a receiver report with the
// loss of each stream heard lately, then a REMB naming them.
func TestFeedbackReportsAndREMB(t *testing.T) {
	sink := &rtcpSink{}
	f := newFeedback(sink, FeedbackConfig{SSRC: 7}, t0)
	const audio, video = 0xAA, 0xBB
	var vseq, aseq uint16 = 1000, 50
	for i := range 1000 { // 1s: audio every 20ms, video every 5ms (every 10th lost)
		at := ms(i)
		if i%20 == 0 {
			f.ObserveRTP(rtpPkt(t, audio, aseq, 100, nil, &at), at)
			aseq++
		}
		if i%5 == 0 {
			if vseq%10 != 0 {
				vf := protocol.VideoFrame{Key: i == 0, Start: true, End: true, Layers: 1}
				f.ObserveRTP(rtpPkt(t, video, vseq, 1000, &vf, &at), at)
			}
			vseq++
		}
		f.tick(at)
	}
	var reports []*rtcp.ReceiverReport
	for _, dg := range sink.take() {
		rr, ok := dg[0].(*rtcp.ReceiverReport)
		if !ok {
			continue
		}
		require.Equal(t, uint32(7), rr.SSRC)
		remb, ok := dg[1].(*rtcp.ReceiverEstimatedMaximumBitrate)
		require.True(t, ok, "the REMB follows the report in the same datagram")
		require.ElementsMatch(t, []uint32{audio, video}, remb.SSRCs)
		require.Positive(t, remb.Bitrate)
		require.Equal(t, uint32(7), remb.SenderSSRC)
		reports = append(reports, rr)
	}
	require.Len(t, reports, 4, "at 200, 400, 600 and 800ms")
	for _, rr := range reports[1:] {
		require.Len(t, rr.Reports, 2)
		for _, b := range rr.Reports {
			switch b.SSRC {
			case audio:
				require.Zero(t, b.FractionLost)
			case video:
				require.InDelta(t, 256/10, int(b.FractionLost), 4, "10%% lost")
			}
		}
	}
	st := f.Stats()
	require.Equal(t, uint64(4), st.Reports)
	require.Positive(t, st.REMB)
	require.Positive(t, st.IncomingBps)

	// Streams that went quiet are no longer reported; with none, nothing
	// is sent.
	tickEvery(f, ms(3000), ms(3500))
	require.Zero(t, count[*rtcp.ReceiverReport](sink.take()))
}

// A video stream that has not shown a key frame gets a PLI at once and
// then every KeyFrameRequestInterval until one comes; a packet given up
// asks for one too.
func TestFeedbackPLI(t *testing.T) {
	sink := &rtcpSink{}
	f := newFeedback(sink, FeedbackConfig{}, t0)
	const ssrc = 0xCC
	delta := protocol.VideoFrame{Start: true, End: true, Layer: 1, Layers: 2}
	key := protocol.VideoFrame{Key: true, Start: true, End: true, Layer: 1, Layers: 2}
	var plis []time.Duration
	seq := uint16(1)
	for i := range 1000 {
		at := ms(i)
		if i%10 == 0 {
			vf := delta
			if i == 700 {
				vf = key
			}
			f.ObserveRTP(rtpPkt(t, ssrc, seq, 500, &vf, nil), at)
			seq++
		}
		f.tick(at)
		if count[*rtcp.PictureLossIndication](sink.take()) > 0 {
			plis = append(plis, time.Duration(i)*time.Millisecond)
		}
	}
	require.Equal(t, []time.Duration{0, 300 * time.Millisecond, 600 * time.Millisecond}, plis)
	st, _ := f.Stats().Stream(ssrc)
	require.True(t, st.Video)
	require.Equal(t, uint8(1), st.Layer)
	require.Equal(t, uint8(2), st.Layers)
	require.Equal(t, uint64(1), st.KeyFrames)
	require.Equal(t, uint64(3), st.PLIs)

	// A lost packet given up breaks a frame for good: one more PLI.
	f.ObserveRTP(rtpPkt(t, ssrc, seq+1, 500, &delta, nil), ms(1000))
	tickEvery(f, ms(1000), ms(2100))
	require.Equal(t, 1, count[*rtcp.PictureLossIndication](sink.take()))
}

// Observing a packet allocates nothing once the stream is known.
func TestFeedbackObserveNoAllocs(t *testing.T) {
	f := newFeedback(&rtcpSink{}, FeedbackConfig{}, t0)
	at := t0
	vf := protocol.VideoFrame{Start: true, End: true, Layers: 1}
	pkts := make([][]byte, 64)
	for i := range pkts {
		pkts[i] = rtpPkt(t, 0x33, uint16(i), 1000, &vf, &at) //nolint:gosec // small
	}
	seq := 0
	observe := func() {
		p := pkts[seq%len(pkts)]
		p[2], p[3] = byte(seq>>8), byte(seq)
		f.ObserveRTP(p, at)
		seq++
		at = at.Add(time.Millisecond)
	}
	for range 100 {
		observe()
	}
	require.Zero(t, testing.AllocsPerRun(1000, observe))
}

func TestFeedbackBoundsStreams(t *testing.T) {
	f := newFeedback(&rtcpSink{}, FeedbackConfig{}, t0)
	for i := range 2 * maxStreams {
		f.ObserveRTP(rtpPkt(t, uint32(i+1), 1, 100, nil, nil), ms(i)) //nolint:gosec // small
	}
	st := f.Stats()
	require.Len(t, st.Streams, maxStreams)
	_, ok := st.Stream(1)
	require.False(t, ok, "the stalest was forgotten")
	_, ok = st.Stream(2 * maxStreams)
	require.True(t, ok)
}

// observe consumes c's Media until c ends: each packet goes to fb (if set;
// duplicates are dropped there), then to each (if set). The test's cleanup
// closes c, waits for the consumer, and closes fb.
func observe(t *testing.T, c *Conn, fb *Feedback, each func(*Packet)) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for p := range c.Media() {
			if (fb == nil || fb.Observe(p)) && each != nil {
				each(p)
			}
			p.Release()
		}
	}()
	t.Cleanup(func() {
		_ = c.Close()
		<-done
		if fb != nil {
			fb.Close()
		}
	})
}

// onRTCP passes the RTCP datagrams to f.
func onRTCP(f func([]byte)) func(*Packet) {
	return func(p *Packet) {
		if p.Kind == protocol.KindRTCP {
			f(p.Data)
		}
	}
}

// rtcpLog collects the RTCP datagrams a Conn receives, parsed by
// pion/rtcp.
type rtcpLog struct {
	mu  sync.Mutex
	dgs [][]rtcp.Packet
	bad int
}

func (l *rtcpLog) add(b []byte) {
	pkts, err := rtcp.Unmarshal(b)
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.bad++
		return
	}
	l.dgs = append(l.dgs, pkts)
}

func (l *rtcpLog) all() [][]rtcp.Packet {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([][]rtcp.Packet(nil), l.dgs...)
}

// Over real loopback sockets, with the test's stand-in relay (the
// forwarder, being reworked concurrently, is covered by its own tests):
// the receiver NACKs a gap, counts the retransmission as recovered, drops
// a duplicate, and sends RR+REMB compounds periodically; the sender sees
// them all parse with pion/rtcp.
func TestFeedbackOverLoopback(t *testing.T) {
	e := newEnv(t)
	r := e.responder(slowParams)
	x, y := e.dial(e.config(r)), e.dial(e.config(r))
	var got rtcpLog
	observe(t, x, nil, onRTCP(got.add))
	fb := NewFeedback(y, FeedbackConfig{SSRC: 0x77})
	observe(t, y, fb, nil)

	const ssrc = 0x5150
	send := func(seq uint16) {
		now := time.Now()
		require.NoError(t, x.WriteRTP(rtpPkt(t, ssrc, seq, 600, nil, &now)))
	}
	for seq := uint16(1); seq <= 40; seq++ {
		if seq == 20 || seq == 21 {
			continue
		}
		send(seq)
		if seq == 30 {
			send(seq) // a duplicate
		}
		time.Sleep(2 * time.Millisecond)
	}
	eventually(t, func() bool { return len(nacked(got.all(), ssrc)) >= 2 }, "a NACK for 20 and 21")
	require.Equal(t, []uint16{20, 21}, nacked(got.all(), ssrc)[:2])
	send(20) // the relay's retransmission; 21 stays lost
	for seq := uint16(41); seq <= 60; seq++ {
		send(seq)
		time.Sleep(2 * time.Millisecond)
	}
	eventually(t, func() bool {
		st, _ := fb.Stats().Stream(ssrc)
		return st.Recovered == 1 && st.Unrecovered == 1
	}, "20 recovered, 21 given up")
	st, _ := fb.Stats().Stream(ssrc)
	require.Equal(t, uint64(59), st.Packets)
	require.Equal(t, uint64(1), st.Duplicates)
	require.Equal(t, uint64(59*600), st.Bytes)
	require.Equal(t, uint64(1), st.Lost)

	var rembs []*rtcp.ReceiverEstimatedMaximumBitrate
	for _, dg := range got.all() {
		if rr, ok := dg[0].(*rtcp.ReceiverReport); ok {
			require.Equal(t, uint32(0x77), rr.SSRC)
			require.Equal(t, uint32(ssrc), rr.Reports[0].SSRC)
			rembs = append(rembs, dg[1].(*rtcp.ReceiverEstimatedMaximumBitrate))
		}
	}
	require.GreaterOrEqual(t, len(rembs), 2, "RR+REMB every 200ms while the stream is heard")
	require.Equal(t, []uint32{ssrc}, rembs[0].SSRCs)
	require.Zero(t, got.bad, "everything the Feedback sent parses")
}

// Whatever arrives, Observe and HandleRTCP neither panic nor stop
// working: a good packet after the garbage is still counted.
func FuzzFeedbackObserve(f *testing.F) {
	at := t0
	vf := protocol.VideoFrame{Key: true, Start: true, Layers: 2, Layer: 1}
	f.Add(rtpPkt(f, 1, 7, 50, &vf, &at))
	f.Add(rtpPkt(f, 1, 7, 20, nil, nil))
	f.Add(marshalRTCP(f, &rtcp.ReceiverReport{SSRC: 3}, &rtcp.SenderReport{SSRC: 1, NTPTime: 1 << 40}))
	f.Add(marshalRTCP(f, &rtcp.PictureLossIndication{MediaSSRC: 0xA0}, &rtcp.ReceiverEstimatedMaximumBitrate{Bitrate: 1e5}))
	f.Add([]byte{0x80, 0xc9, 0xff, 0xff})
	f.Add([]byte{0x90, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xbe, 0xde, 0, 1, 0x20, 0xff, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		sink := &rtcpSink{}
		fb := newFeedback(sink, FeedbackConfig{}, t0)
		v, err := newVideoSender(&rtpSink{}, VideoConfig{SSRCs: [3]uint32{0xA0, 0xA1, 0xA2}}, t0)
		require.NoError(t, err)
		for i, kind := range []protocol.PacketKind{protocol.KindRTP, protocol.KindRTCP} {
			fb.Observe(&Packet{Kind: kind, Data: b, Received: ms(i)})
			v.HandleRTCP(b)
		}
		tickEvery(fb, ms(0), ms(1200))
		v.tick(ms(1))
		require.True(t, fb.ObserveRTP(rtpPkt(t, 0xFEED, 1, 100, nil, nil), ms(1300)))
		st, ok := fb.Stats().Stream(0xFEED)
		require.True(t, ok)
		require.Equal(t, uint64(1), st.Packets)
	})
}

func BenchmarkFeedbackObserveRTP(b *testing.B) {
	fb := newFeedback(&rtcpSink{}, FeedbackConfig{}, t0)
	at := t0
	vf := protocol.VideoFrame{Start: true, End: true, Layers: 1}
	pkt := rtpPkt(b, 0x33, 0, 1100, &vf, &at)
	b.ReportAllocs()
	start := time.Now()
	for i := 0; b.Loop(); i++ {
		pkt[2], pkt[3] = byte(i>>8), byte(i)
		if i%100 == 99 {
			continue // a 1% loss keeps the NACK bookkeeping busy
		}
		fb.ObserveRTP(pkt, at)
		at = at.Add(100 * time.Microsecond)
		if i%200 == 0 {
			fb.tick(at)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "packets/s")
}

// The relay's probes (SSRC 0) feed the estimator and are dropped: never
// NACKed, never delivered.
func TestFeedbackTakesRelayProbes(t *testing.T) {
	sink := &rtcpSink{}
	f := newFeedback(sink, FeedbackConfig{SSRC: 7}, t0)
	for i, seq := range []uint16{1, 2, 5, 6} { // a gap: 3 and 4 lost
		p, err := protocol.AppendRelayProbe(nil, seq, protocol.AbsSendTime(ms(i)), protocol.DefaultAbsSendTimeExtensionID, 1000)
		require.NoError(t, err)
		require.False(t, f.ObserveRTP(p, ms(i)), "a probe is not for the application")
	}
	st, ok := f.Stats().Stream(protocol.RelayProbeSSRC)
	require.True(t, ok)
	require.Equal(t, uint64(4), st.Packets)
	require.Zero(t, st.NACKed)
	require.Zero(t, st.Missing)
}

// Gaps the relay makes on purpose are not NACKed: a long one in audio (a
// silence it held back), one in video that ends at a key frame's first
// packet (it switched this receiver to the layer there), one longer than a
// frame burst. A short one is.
func TestFeedbackSkipsTheRelaysGaps(t *testing.T) {
	sink := &rtcpSink{}
	f := newFeedback(sink, FeedbackConfig{SSRC: 7}, t0)
	const audio, video = 0xa, 0xb
	delta := &protocol.VideoFrame{Start: true, Layers: 1}
	key := &protocol.VideoFrame{Key: true, Start: true, Layers: 1}
	at := ms(0)
	obs := func(ssrc uint32, seq uint16, vf *protocol.VideoFrame) {
		require.True(t, f.ObserveRTP(rtpPkt(t, ssrc, seq, 200, vf, nil), at))
		at = at.Add(time.Millisecond)
	}
	obs(audio, 1, nil)
	obs(audio, 60, nil) // 58 held back
	obs(video, 1, key)
	obs(video, 30, key)    // 28 skipped up to a key frame
	obs(video, 200, delta) // 169: longer than any burst
	obs(video, 203, delta) // 201, 202: lost
	obs(audio, 63, nil)    // 61, 62: lost
	tickEvery(f, at, at.Add(50*time.Millisecond))
	dgs := sink.take()
	require.Equal(t, []uint16{61, 62}, nacked(dgs, audio))
	require.Equal(t, []uint16{201, 202}, nacked(dgs, video))
	sa, _ := f.Stats().Stream(audio)
	sv, _ := f.Stats().Stream(video)
	require.Equal(t, uint64(58), sa.Skipped)
	require.Equal(t, uint64(28+169), sv.Skipped)
	require.Zero(t, f.Stats().LossFraction, "skipped gaps are not loss to the estimator")
}

// transportSink is an rtcpSink that says which transport it writes on, as
// a Conn or Session does.
type transportSink struct {
	rtcpSink
	mu sync.Mutex
	t  Transport
}

func (k *transportSink) Transport() Transport {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.t
}

// On TCP or TLS no NACK is sent (protocol/README.md section 9 rule 3): a
// gap is given up as unrecovered; back on UDP, gaps are NACKed again.
func TestFeedbackNoNACKsOverStreams(t *testing.T) {
	sink := &transportSink{t: TransportTCP}
	f := newFeedback(sink, FeedbackConfig{SSRC: 7}, t0)
	const ssrc = 0x2222
	obs := func(seq uint16, at time.Time) { require.True(t, f.ObserveRTP(rtpPkt(t, ssrc, seq, 200, nil, nil), at)) }
	obs(10, ms(0))
	obs(13, ms(1)) // 11, 12 missing
	tickEvery(f, ms(0), ms(1500))
	dgs := sink.take()
	require.Empty(t, nacked(dgs, ssrc), "no NACK over TCP")
	require.Positive(t, count[*rtcp.ReceiverReport](dgs), "reports still go")
	st, ok := f.Stats().Stream(ssrc)
	require.True(t, ok)
	require.Equal(t, uint64(2), st.Unrecovered)
	require.Zero(t, st.NACKed)
	require.Zero(t, f.Stats().NACKs)

	sink.mu.Lock()
	sink.t = TransportUDP
	sink.mu.Unlock()
	obs(14, ms(1600))
	obs(16, ms(1601)) // 15 missing
	tickEvery(f, ms(1600), ms(1700))
	require.Equal(t, []uint16{15}, nacked(sink.take(), ssrc), "NACKed on UDP")
}
