package forwarder

import (
	"bytes"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/rtcp"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// adaptCall is a 3-member group call of raw devices on one forwarder:
// devs[0] sends video, devs[1] and devs[2] receive it.
func adaptCall(t *testing.T) (*testRelay, []*rawDevice, []protocol.ID) {
	t.Helper()
	r := startRelay(t, nil)
	call := protocol.NewID()
	var devs []*rawDevice
	var ids []protocol.ID
	for range 3 {
		id := protocol.NewID()
		d := newRawDevice(t, r.f.Addr(), r.token(t, call, id, protocol.ClassGroup, 8))
		d.join()
		devs = append(devs, d)
		ids = append(ids, id)
	}
	return r, devs, ids
}

// media returns the RTP and RTCP d receives within wait, skipping STUN. It
// is for what must not come: a window that a loaded machine can only make
// miss a late packet, never fail. What must come is awaited (awaitRTP,
// awaitRTCP).
func (d *rawDevice) media(wait time.Duration) [][]byte {
	var out [][]byte
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		b, ok := d.recv(time.Until(deadline))
		if ok && protocol.Classify(b) != protocol.KindSTUN {
			out = append(out, b)
		}
	}
	return out
}

// awaitRTP returns the next n RTP packets d receives (STUN and RTCP
// skipped), waiting for them with a 10 s deadline.
func (d *rawDevice) awaitRTP(n int) [][]byte {
	d.t.Helper()
	var out [][]byte
	deadline := time.Now().Add(10 * time.Second)
	for len(out) < n && time.Now().Before(deadline) {
		b, ok := d.recv(time.Until(deadline))
		if ok && protocol.Classify(b) == protocol.KindRTP {
			out = append(out, b)
		}
	}
	require.Len(d.t, out, n, "RTP packets within 10 s")
	return out
}

// awaitRTCP waits (10 s deadline) for an RTCP packet that holds a packet
// match accepts, skipping everything else.
func (d *rawDevice) awaitRTCP(match func(rtcp.Packet) bool) {
	d.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		b, ok := d.recv(time.Until(deadline))
		if !ok || protocol.Classify(b) != protocol.KindRTCP {
			continue
		}
		pkts, err := rtcp.Unmarshal(b)
		if err != nil {
			continue
		}
		for _, p := range pkts {
			if match(p) {
				return
			}
		}
	}
	d.t.Fatal("the RTCP awaited did not come within 10 s")
}

// drain returns what reached d before a marker d sends itself now: every
// datagram already queued for it, without guessing how long to wait.
func (d *rawDevice) drain() [][]byte {
	d.t.Helper()
	marker := []byte("drain marker " + d.addr().String())
	_, err := d.conn.WriteToUDPAddrPort(marker, d.addr())
	require.NoError(d.t, err)
	var out [][]byte
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		b, ok := d.recv(time.Until(deadline))
		if !ok {
			continue
		}
		if bytes.Equal(b, marker) {
			return out
		}
		if protocol.Classify(b) != protocol.KindSTUN {
			out = append(out, b)
		}
	}
	d.t.Fatal("the drain marker did not come back within 10 s")
	return nil
}

// until returns what d receives (STUN skipped) before marker, a datagram
// that comes after those in question on the same path, waiting for it with
// a 10 s deadline: a fence instead of a window.
func (d *rawDevice) until(marker []byte) [][]byte {
	d.t.Helper()
	var out [][]byte
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		b, ok := d.recv(time.Until(deadline))
		if !ok {
			continue
		}
		if bytes.Equal(b, marker) {
			return out
		}
		if protocol.Classify(b) != protocol.KindSTUN {
			out = append(out, b)
		}
	}
	d.t.Fatal("the fence did not come within 10 s")
	return nil
}

// rxPair is the video pair from sender tx in the routes published for the
// receiver at rx (nil: rx is not subscribed to tx, or not routed yet).
func (f *Forwarder) rxPair(rx netip.AddrPort, tx protocol.ID) *pair {
	if rte := f.routes.Load().bySrc[rx]; rte != nil {
		return rte.rxPairs[tx]
	}
	return nil
}

// stats polls the forwarder's Stats until ok accepts them (10 s deadline).
func (r *testRelay) stats(t *testing.T, what string, ok func(Stats) bool) Stats {
	t.Helper()
	var s Stats
	testenv.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if s = r.f.Stats(); !ok(s) {
			return fmt.Errorf("%s: not yet", what)
		}
		return nil
	})
	return s
}

func rtpOnly(pkts [][]byte) [][]byte {
	var out [][]byte
	for _, p := range pkts {
		if protocol.Classify(p) == protocol.KindRTP {
			out = append(out, p)
		}
	}
	return out
}

func TestNackAnsweredOnTheLossyLegOnly(t *testing.T) {
	r, devs, _ := adaptCall(t)
	const ssrc = 0x5ead
	var sent [][]byte
	for seq := uint16(1); seq <= 40; seq++ {
		p := videoPacket(ssrc, seq, protocol.VideoFrame{Key: seq == 1, Start: true, End: true, Layers: 1})
		sent = append(sent, p)
		devs[0].send(p)
	}
	devs[1].awaitRTP(40)
	devs[2].awaitRTP(40)
	// Let the control goroutine make the sender's cache... it is made
	// after the first packet, so packets before it are not held: send
	// more once it exists.
	require.Eventually(t, func() bool { return r.f.senderCached(ssrc) }, 2*time.Second, 10*time.Millisecond)
	sent = sent[:0]
	for seq := uint16(41); seq <= 80; seq++ {
		p := videoPacket(ssrc, seq, protocol.VideoFrame{Start: true, End: true, Layers: 1})
		sent = append(sent, p)
		devs[0].send(p)
	}
	devs[1].awaitRTP(40)
	devs[2].awaitRTP(40)

	// devs[1] lost 45 and 47..49: one NACK (pid 45, bitmask 0b1110).
	nack, err := (&rtcp.TransportLayerNack{SenderSSRC: 1, MediaSSRC: ssrc,
		Nacks: []rtcp.NackPair{{PacketID: 45, LostPackets: 0b1110}}}).Marshal()
	require.NoError(t, err)
	devs[1].send(nack)
	devs[1].send(nack) // a repeat at once is a duplicate: nothing more is resent
	got := devs[1].awaitRTP(4)
	for i, seq := range []int{45, 47, 48, 49} {
		require.True(t, bytes.Equal(sent[seq-41], got[i]), "retransmission of %d is byte-exact", seq)
	}
	// Both NACKs taken: the reader published its counts after sending
	// what they asked for, so anything more is already queued for the
	// devices, and a drain sees it.
	s := r.stats(t, "both NACKs counted", func(s Stats) bool { return s.Nacked >= 8 })
	require.Empty(t, rtpOnly(devs[1].drain()), "the repeat resent nothing")
	// Nobody else hears of it: not the other receiver, not the sender.
	require.Empty(t, rtpOnly(devs[2].drain()))
	for _, p := range devs[0].drain() {
		require.NotEqual(t, byte(205), p[1], "the sender never sees a receiver's NACK")
	}
	require.EqualValues(t, 8, s.Nacked)
	require.EqualValues(t, 4, s.NackOutcomes[nackSent])
	require.EqualValues(t, 4, s.NackOutcomes[nackBounded])
	require.Zero(t, s.Drops[DropMalformed])
}

func TestSubscriptionsChooseWhoGetsVideo(t *testing.T) {
	r, devs, ids := adaptCall(t)
	const ssrc = 0x71de0
	seq := uint16(0)
	burst := func(key bool) {
		for range 5 {
			seq++
			devs[0].send(videoPacket(ssrc, seq, protocol.VideoFrame{Key: key, Start: true, End: true, Layers: 1}))
		}
	}
	// Audio from the same sender, forwarded to everyone after what came
	// before it on the sender's flow, fences each burst: what a receiver
	// gets before it is all the burst gave it.
	fences := uint16(0x2000)
	fence := func() []byte {
		fences++
		f := withSeq(fences)
		devs[0].send(f)
		return f
	}
	// Before any Subscription, everyone gets video (the default policy).
	burst(true)
	f := fence()
	require.Len(t, rtpOnly(devs[1].until(f)), 5)
	require.Len(t, rtpOnly(devs[2].until(f)), 5)

	// devs[1] subscribes to nobody, devs[2] to devs[0].
	sub := func(d *rawDevice, seq uint16, who ...protocol.ID) {
		s := protocol.Subscription{Sequence: seq}
		for _, id := range who {
			s.Videos = append(s.Videos, protocol.VideoSubscription{Participant: id, MaxHeight: 720})
		}
		b, err := protocol.MarshalRelayApp(1, &s)
		require.NoError(t, err)
		d.send(b)
	}
	sub(devs[1], 1)
	sub(devs[2], 1, ids[0])
	r.stats(t, "2 subscriptions", func(s Stats) bool { return s.Subscriptions == 2 })
	// The routes are published after the control goroutine's batch: wait
	// for the ones that carry them (devs[2] keeps its pair).
	testenv.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if r.f.rxPair(devs[1].addr(), ids[0]) != nil {
			return fmt.Errorf("devs[1]'s subscription not in the routes yet")
		}
		return nil
	})
	require.NotNil(t, r.f.rxPair(devs[2].addr(), ids[0]))
	burst(false)
	f = fence()
	require.Empty(t, rtpOnly(devs[1].until(f)), "not subscribed: no video")
	require.Len(t, rtpOnly(devs[2].until(f)), 5)

	// An older sequence is ignored; a newer one applies.
	sub(devs[1], 0xFFFF, ids[0]) // older than 1 in serial arithmetic
	sub(devs[2], 2)
	r.stats(t, "3 subscriptions, 1 rejected", func(s Stats) bool { return s.Subscriptions == 3 && s.SubsRejected == 1 })
	testenv.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if r.f.rxPair(devs[2].addr(), ids[0]) != nil {
			return fmt.Errorf("devs[2]'s new subscription not in the routes yet")
		}
		return nil
	})
	require.Nil(t, r.f.rxPair(devs[1].addr(), ids[0]), "the older sequence changed nothing")
	burst(true)
	// Audio needs no subscription: the fence itself comes through.
	f = fence()
	require.Empty(t, rtpOnly(devs[1].until(f)))
	require.Empty(t, rtpOnly(devs[2].until(f)))

	// A forged relay instruction from a device goes nowhere: devs[1]'s
	// audio after it reaches devs[2], with nothing before it.
	forged, err := protocol.MarshalRelayApp(0, &protocol.Rejoin{})
	require.NoError(t, err)
	devs[1].send(forged)
	after := withSeq(0x3000)
	devs[1].send(after)
	require.Empty(t, devs[2].until(after))
	r.stats(t, "the forged instruction counted", func(s Stats) bool { return s.Drops[DropRelayControl] > 0 })
}

func TestReceiverPLIReachesTheSenderAndREMBIsRead(t *testing.T) {
	r, devs, _ := adaptCall(t)
	const ssrc = 0xabc
	devs[0].send(videoPacket(ssrc, 1, protocol.VideoFrame{Key: true, Start: true, Layers: 1}))
	devs[1].awaitRTP(1)
	devs[2].awaitRTP(1)
	pli, err := (&rtcp.PictureLossIndication{SenderSSRC: 9, MediaSSRC: ssrc}).Marshal()
	require.NoError(t, err)
	remb, err := (&rtcp.ReceiverEstimatedMaximumBitrate{SenderSSRC: 9, Bitrate: 345_000, SSRCs: []uint32{ssrc}}).Marshal()
	require.NoError(t, err)
	devs[1].send(append(pli, remb...))
	after := withSeq(0x3000) // devs[1]'s audio, after its feedback on the same flow
	devs[1].send(after)
	// The relay asks the sender for a key frame.
	devs[0].awaitRTCP(func(p rtcp.Packet) bool {
		x, ok := p.(*rtcp.PictureLossIndication)
		return ok && x.MediaSSRC == ssrc
	})
	require.Empty(t, devs[2].until(after), "feedback is not forwarded to other receivers")
	r.stats(t, "the key request counted", func(s Stats) bool { return s.KeyRequests == 1 })
	require.Equal(t, uint64(345_000), r.f.downlinkOf(devs[1].addr()))
}

// senderCached reports whether the sender of ssrc has its NACK cache yet.
func (f *Forwarder) senderCached(ssrc uint32) bool {
	for _, rte := range f.routes.Load().bySrc {
		if rte.media != nil && rte.media.slotOf(ssrc) >= 0 && rte.media.cache.Load() != nil {
			return true
		}
	}
	return false
}

// downlinkOf is the downlink estimate the receiver at a reported.
func (f *Forwarder) downlinkOf(a netip.AddrPort) uint64 {
	if rte := f.routes.Load().bySrc[a]; rte != nil {
		return rte.media.down.estimate()
	}
	return 0
}

func TestBadFeedbackIsDroppedAndCounted(t *testing.T) {
	r, devs, ids := adaptCall(t)
	const ssrc = 0xf00d
	for seq := uint16(1); seq <= 5; seq++ {
		devs[0].send(videoPacket(ssrc, seq, protocol.VideoFrame{Key: true, Start: true, Layers: 1}))
	}
	devs[1].awaitRTP(5)
	devs[2].awaitRTP(5)
	before := r.f.Stats()

	nack, err := (&rtcp.TransportLayerNack{MediaSSRC: ssrc, Nacks: []rtcp.NackPair{{PacketID: 3}}}).Marshal()
	require.NoError(t, err)
	truncated := append([]byte(nil), nack...)
	truncated[3]++ // the length says one word more than there is
	badSub, err := protocol.MarshalRelayApp(1, &protocol.Subscription{Sequence: 1,
		Videos: []protocol.VideoSubscription{{Participant: ids[0]}}})
	require.NoError(t, err)
	badSub[12] = 3 // count 3, one entry
	for _, b := range [][]byte{
		truncated,
		{0x81, 205, 0, 2, 0, 0, 0, 1, 0, 0}, // shorter than its header
		nack[:len(nack)-1],                  // not a whole word
		badSub,
	} {
		devs[1].send(b)
	}
	// A NACK for a stream nobody sends answers nothing.
	ghost, err := (&rtcp.TransportLayerNack{MediaSSRC: 0x9999, Nacks: []rtcp.NackPair{{PacketID: 1}}}).Marshal()
	require.NoError(t, err)
	devs[1].send(ghost)
	// All counted: the reader publishes its counts after sending what a
	// batch asked for, so a drain sees anything sent.
	s := r.stats(t, "the bad feedback counted", func(s Stats) bool {
		return s.Drops[DropMalformed]-before.Drops[DropMalformed] >= 3 && s.SubsRejected > before.SubsRejected &&
			s.Nacked > before.Nacked
	})
	require.Empty(t, rtpOnly(devs[1].drain()))
	require.Empty(t, devs[2].drain(), "nothing reaches the other members")
	require.EqualValues(t, 3, s.Drops[DropMalformed]-before.Drops[DropMalformed])
	require.EqualValues(t, 1, s.SubsRejected-before.SubsRejected)
	require.EqualValues(t, 1, s.NackOutcomes[nackMiss]-before.NackOutcomes[nackMiss])

	// The call goes on: video still flows to both receivers.
	devs[0].send(videoPacket(ssrc, 6, protocol.VideoFrame{Start: true, Layers: 1}))
	devs[1].awaitRTP(1)
	devs[2].awaitRTP(1)
}

// TestNackFloodIsBoundedByTheLegsEstimate: a receiver that NACKs every
// packet again and again gets each at most nackMaxResends times, and no
// more retransmitted bytes than its own estimate leaves room for.
func TestNackFloodIsBoundedByTheLegsEstimate(t *testing.T) {
	r, devs, _ := adaptCall(t)
	const ssrc = 0xf1d
	seq := uint16(0)
	send := func(n int) {
		for range n {
			seq++
			devs[0].send(videoPacket(ssrc, seq, protocol.VideoFrame{Key: true, Start: true, Layers: 1}))
		}
	}
	send(1)
	require.Eventually(t, func() bool { return r.f.senderCached(ssrc) }, 2*time.Second, 10*time.Millisecond)
	send(100) // about 110 kB cached
	remb, err := (&rtcp.ReceiverEstimatedMaximumBitrate{Bitrate: 200_000, SSRCs: []uint32{ssrc}}).Marshal()
	require.NoError(t, err)
	devs[1].send(remb)
	// The control goroutine sets the budget from it: 200 kbit/s exactly
	// once a feedback interval passed with no media to devs[1] (the
	// estimate less what it got).
	down := &r.f.routes.Load().bySrc[devs[1].addr()].media.down
	testenv.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if down.estimate() != 200_000 || down.rtxAllow.Load() != 200_000 {
			return fmt.Errorf("estimate %d, retransmission budget %d bit/s", down.estimate(), down.rtxAllow.Load())
		}
		return nil
	})
	var pairs []rtcp.NackPair
	nacked := uint64(0)
	for p := uint16(2); p <= 101; p += 17 {
		pairs = append(pairs, rtcp.NackPair{PacketID: p, LostPackets: 0xFFFF})
		nacked += 17
	}
	flood, err := (&rtcp.TransportLayerNack{MediaSSRC: ssrc, Nacks: pairs}).Marshal()
	require.NoError(t, err)
	before := r.f.Stats().Nacked
	start := time.Now()
	for range 50 { // 50 floods of ~100 packets, 20 ms apart: about 1 s
		devs[1].send(flood)
		// Pacing the flood, not waiting for anything: the bound below
		// grows with the time measured, so a slow machine loosens it.
		time.Sleep(20 * time.Millisecond)
	}
	r.stats(t, "every flood taken", func(s Stats) bool { return s.Nacked-before == 50*nacked })
	elapsed := time.Since(start).Seconds()
	l, _ := legOf(r.f, devs[1].addr())
	// 200 kbit/s for the elapsed time, plus the 100 ms burst allowance.
	bound := 200_000.0/8*elapsed + 200_000.0/8/10 + 3*maxDatagram
	t.Logf("flood of %d NACKed packets in %.2f s: %d bytes resent, bound %.0f", 50*nacked, elapsed, l.ResentBytes, bound)
	require.Positive(t, l.ResentBytes)
	require.LessOrEqual(t, float64(l.ResentBytes), bound)
	s := r.f.Stats()
	require.Positive(t, s.NackOutcomes[nackBudget]+s.NackOutcomes[nackBounded])
	require.LessOrEqual(t, s.NackOutcomes[nackSent], uint64(100*nackMaxResends))
}

func legOf(f *Forwarder, a netip.AddrPort) (Leg, bool) {
	for _, l := range f.Legs() {
		if l.Addr == a {
			return l, true
		}
	}
	return Leg{}, false
}

// A NACK is answered only for what the receiver gets: not for a simulcast
// layer it is not forwarded.
func TestNackOnlyForTheForwardedLayer(t *testing.T) {
	r, devs, _ := adaptCall(t)
	const low, high = 0x10, 0x11
	send := func(seq uint16) {
		devs[0].send(videoPacket(low, seq, protocol.VideoFrame{Key: true, Start: true, Layer: 0, Layers: 2}))
		devs[0].send(videoPacket(high, seq, protocol.VideoFrame{Key: true, Start: true, Layer: 1, Layers: 2}))
	}
	send(1)
	require.Eventually(t, func() bool { return r.f.senderCached(low) }, 2*time.Second, 10*time.Millisecond)
	for seq := uint16(2); seq <= 10; seq++ {
		send(seq)
	}
	// The layers are sent interleaved: a high-layer packet would be among
	// the first ten.
	for i, p := range devs[1].awaitRTP(10) {
		require.Equal(t, byte(low), p[11], "packet %d: the default policy is the lowest layer only", i)
	}
	for _, ssrc := range []uint32{high, low} {
		nack, err := (&rtcp.TransportLayerNack{MediaSSRC: ssrc, Nacks: []rtcp.NackPair{{PacketID: 5}}}).Marshal()
		require.NoError(t, err)
		devs[1].send(nack)
	}
	// Both NACKs counted: what they caused was sent before the counts.
	s := r.stats(t, "both NACKs counted", func(s Stats) bool { return s.NackOutcomes[nackSent]+s.NackOutcomes[nackMiss] >= 2 })
	got := rtpOnly(devs[1].drain())
	require.Len(t, got, 1)
	require.Equal(t, byte(low), got[0][11], "only the low layer's packet is resent")
	require.EqualValues(t, 1, s.NackOutcomes[nackSent])
	require.EqualValues(t, 1, s.NackOutcomes[nackMiss])
}

// TestProbesForAHeldDownReceiver: a receiver the conductor holds below what
// it subscribed to gets padding probes (RTP, SSRC 0) on top of its media,
// at about 1.5 times its estimate; when its REMB falls, they stop at once.
// Nobody else gets them.
func TestProbesForAHeldDownReceiver(t *testing.T) {
	old := probeAfterHold
	probeAfterHold = 200 * time.Millisecond
	t.Cleanup(func() { probeAfterHold = old })
	r, devs, ids := adaptCall(t)
	remb := func(bps float32) {
		b, err := (&rtcp.ReceiverEstimatedMaximumBitrate{Bitrate: bps, SSRCs: []uint32{1}}).Marshal()
		require.NoError(t, err)
		devs[1].send(b)
	}
	remb(400_000)
	// The conductor's word, as a decision would set it: devs[1] gets at most
	// the low rank of devs[0]'s video.
	require.Eventually(t, func() bool {
		rte := r.f.routes.Load().bySrc[devs[1].addr()]
		if rte == nil || rte.rxPairs[ids[0]] == nil {
			return false
		}
		rte.rxPairs[ids[0]].target.Store(1)
		return true
	}, 2*time.Second, 10*time.Millisecond)

	absID := r.f.cfg.Adapt.AbsSendTimeExtensionID
	_ = devs[1].conn.SetReadBuffer(4 << 20) // a second of probes waits whole for a slow reader
	probes := func(pkts [][]byte) (n int) {
		for _, p := range rtpOnly(pkts) {
			var h protocol.RTPHeader
			if h.Parse(p) == nil && h.SSRC == protocol.RelayProbeSSRC {
				n++
			}
		}
		return n
	}
	// The probe's rate, measured on the relay's own clock: every probe
	// carries the abs-send-time of the tick that sent it, and a tick sends
	// what is due since the one before. So the bytes of ticks 2..K-1 over
	// the time from tick 1 to tick K-1 is the rate, however late the
	// packets are read (tick K may not be read whole yet).
	type tick struct {
		abs   uint32
		bytes int
	}
	var ticks []tick
	span := func() time.Duration {
		if len(ticks) < 3 {
			return 0
		}
		return protocol.AbsSendTimeDelta(ticks[len(ticks)-2].abs, ticks[0].abs)
	}
	deadline := time.Now().Add(10 * time.Second)
	for span() < 600*time.Millisecond && time.Now().Before(deadline) {
		b, ok := devs[1].recv(time.Until(deadline))
		var h protocol.RTPHeader
		if !ok || protocol.Classify(b) != protocol.KindRTP || h.Parse(b) != nil || h.SSRC != protocol.RelayProbeSSRC {
			continue
		}
		abs, has := h.AbsSendTime(absID)
		require.True(t, has, "a probe carries its send time")
		if len(ticks) > 0 && protocol.AbsSendTimeDelta(abs, ticks[len(ticks)-1].abs) > probeFor/2 {
			ticks = ticks[:0] // read so late that this is the next probe: measure that one
		}
		if len(ticks) == 0 || ticks[len(ticks)-1].abs != abs {
			ticks = append(ticks, tick{abs: abs})
		}
		ticks[len(ticks)-1].bytes += len(b)
	}
	require.GreaterOrEqual(t, span(), 600*time.Millisecond, "the held-down receiver is probed: %d ticks", len(ticks))
	sent := 0
	for _, tk := range ticks[1 : len(ticks)-1] {
		sent += tk.bytes
	}
	rate := float64(sent) * 8 / span().Seconds()
	t.Logf("probes over %v of the relay's clock in %d ticks: %.0f bit/s", span(), len(ticks)-1, rate)
	// 1.5 x 400 kbit/s; a tick sends whole probes of 1000 bytes and owes
	// the rest to the next, so the sum is off by less than one probe.
	require.InDelta(t, 600_000, rate, 8*1000/span().Seconds()+1)
	require.Positive(t, r.f.Stats().Probes)

	// Its REMB falls: the probe stops at once. The budget for
	// retransmissions becomes the new estimate exactly once a feedback
	// interval passed with nothing sent to devs[1], probes included (the
	// control goroutine sends them at every tick while probing).
	remb(200_000)
	down := &r.f.routes.Load().bySrc[devs[1].addr()].media.down
	testenv.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if down.estimate() != 200_000 || down.rtxAllow.Load() != 200_000 {
			return fmt.Errorf("estimate %d, budget %d: still probing", down.estimate(), down.rtxAllow.Load())
		}
		return nil
	})
	devs[1].drain() // the probes sent before it stopped
	require.Zero(t, probes(devs[1].media(500*time.Millisecond)), "no probe after the REMB fell")
	require.Zero(t, probes(devs[2].drain()), "a receiver that is not held down is not probed")
}
