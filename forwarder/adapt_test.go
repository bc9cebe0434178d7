package forwarder

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/rtcp"
	"github.com/stretchr/testify/require"

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

// media returns the RTP and RTCP d receives within d, skipping STUN.
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
	require.Len(t, rtpOnly(devs[1].media(300*time.Millisecond)), 40)
	require.Len(t, rtpOnly(devs[2].media(100*time.Millisecond)), 40)
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
	devs[1].media(200 * time.Millisecond)
	devs[2].media(100 * time.Millisecond)

	// devs[1] lost 45 and 47..49: one NACK (pid 45, bitmask 0b1110).
	nack, err := (&rtcp.TransportLayerNack{SenderSSRC: 1, MediaSSRC: ssrc,
		Nacks: []rtcp.NackPair{{PacketID: 45, LostPackets: 0b1110}}}).Marshal()
	require.NoError(t, err)
	devs[1].send(nack)
	devs[1].send(nack) // a repeat at once is a duplicate: nothing more is resent
	got := rtpOnly(devs[1].media(300 * time.Millisecond))
	require.Len(t, got, 4)
	for i, seq := range []int{45, 47, 48, 49} {
		require.True(t, bytes.Equal(sent[seq-41], got[i]), "retransmission of %d is byte-exact", seq)
	}
	// Nobody else hears of it: not the other receiver, not the sender.
	require.Empty(t, len(rtpOnly(devs[2].media(100*time.Millisecond))))
	for _, p := range devs[0].media(100 * time.Millisecond) {
		require.NotEqual(t, byte(205), p[1], "the sender never sees a receiver's NACK")
	}
	s := r.f.Stats()
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
	// Before any Subscription, everyone gets video (the default policy).
	burst(true)
	require.Len(t, rtpOnly(devs[1].media(200*time.Millisecond)), 5)
	require.Len(t, rtpOnly(devs[2].media(50*time.Millisecond)), 5)

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
	require.Eventually(t, func() bool { return r.f.Stats().Subscriptions == 2 }, 2*time.Second, 5*time.Millisecond)
	time.Sleep(50 * time.Millisecond) // the routes are published after the control goroutine's batch
	burst(false)
	require.Empty(t, rtpOnly(devs[1].media(200*time.Millisecond)), "not subscribed: no video")
	require.Len(t, rtpOnly(devs[2].media(50*time.Millisecond)), 5)

	// An older sequence is ignored; a newer one applies.
	sub(devs[1], 0xFFFF, ids[0]) // older than 1 in serial arithmetic
	sub(devs[2], 2)
	require.Eventually(t, func() bool { return r.f.Stats().Subscriptions == 3 }, 2*time.Second, 5*time.Millisecond)
	require.EqualValues(t, 1, r.f.Stats().SubsRejected)
	time.Sleep(50 * time.Millisecond)
	burst(true)
	require.Empty(t, rtpOnly(devs[1].media(200*time.Millisecond)))
	require.Empty(t, rtpOnly(devs[2].media(50*time.Millisecond)))

	// Audio needs no subscription.
	devs[0].send(audioPacket)
	require.Len(t, rtpOnly(devs[1].media(200*time.Millisecond)), 1)
	require.Len(t, rtpOnly(devs[2].media(50*time.Millisecond)), 1)

	// A forged relay instruction from a device goes nowhere.
	forged, err := protocol.MarshalRelayApp(0, &protocol.Rejoin{})
	require.NoError(t, err)
	devs[1].send(forged)
	require.Empty(t, len(devs[2].media(100*time.Millisecond)))
	require.Positive(t, r.f.Stats().Drops[DropRelayControl])
}

func TestReceiverPLIReachesTheSenderAndREMBIsRead(t *testing.T) {
	r, devs, _ := adaptCall(t)
	const ssrc = 0xabc
	devs[0].send(videoPacket(ssrc, 1, protocol.VideoFrame{Key: true, Start: true, Layers: 1}))
	devs[1].media(200 * time.Millisecond)
	devs[2].media(50 * time.Millisecond)
	pli, err := (&rtcp.PictureLossIndication{SenderSSRC: 9, MediaSSRC: ssrc}).Marshal()
	require.NoError(t, err)
	remb, err := (&rtcp.ReceiverEstimatedMaximumBitrate{SenderSSRC: 9, Bitrate: 345_000, SSRCs: []uint32{ssrc}}).Marshal()
	require.NoError(t, err)
	devs[1].send(append(pli, remb...))
	var gotPLI bool
	for _, p := range devs[0].media(500 * time.Millisecond) {
		pkts, err := rtcp.Unmarshal(p)
		if err != nil {
			continue
		}
		for _, pk := range pkts {
			if x, ok := pk.(*rtcp.PictureLossIndication); ok && x.MediaSSRC == ssrc {
				gotPLI = true
			}
		}
	}
	require.True(t, gotPLI, "the relay asks the sender for a key frame")
	require.Empty(t, len(devs[2].media(50*time.Millisecond)), "feedback is not forwarded to other receivers")
	require.EqualValues(t, 1, r.f.Stats().KeyRequests)
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
	devs[1].media(200 * time.Millisecond)
	devs[2].media(50 * time.Millisecond)
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
	require.Empty(t, len(rtpOnly(devs[1].media(200*time.Millisecond))))
	require.Empty(t, len(devs[2].media(50*time.Millisecond)), "nothing reaches the other members")
	s := r.f.Stats()
	require.EqualValues(t, 3, s.Drops[DropMalformed]-before.Drops[DropMalformed])
	require.EqualValues(t, 1, s.SubsRejected-before.SubsRejected)
	require.EqualValues(t, 1, s.NackOutcomes[nackMiss]-before.NackOutcomes[nackMiss])

	// The call goes on: video still flows to both receivers.
	devs[0].send(videoPacket(ssrc, 6, protocol.VideoFrame{Start: true, Layers: 1}))
	require.Len(t, rtpOnly(devs[1].media(200*time.Millisecond)), 1)
	require.Len(t, rtpOnly(devs[2].media(50*time.Millisecond)), 1)
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
	time.Sleep(100 * time.Millisecond) // the control goroutine sets the budget from it
	var pairs []rtcp.NackPair
	for p := uint16(2); p <= 101; p += 17 {
		pairs = append(pairs, rtcp.NackPair{PacketID: p, LostPackets: 0xFFFF})
	}
	flood, err := (&rtcp.TransportLayerNack{MediaSSRC: ssrc, Nacks: pairs}).Marshal()
	require.NoError(t, err)
	start := time.Now()
	for range 50 { // 50 floods of 100 packets, 20 ms apart: 1 s
		devs[1].send(flood)
		time.Sleep(20 * time.Millisecond)
	}
	devs[1].media(200 * time.Millisecond)
	elapsed := time.Since(start).Seconds()
	l, _ := legOf(r.f, devs[1].addr())
	// 200 kbit/s for the elapsed time, plus the 100 ms burst allowance.
	bound := 200_000.0/8*elapsed + 200_000.0/8/10 + 3*maxDatagram
	t.Logf("flood of %d NACKed packets in %.2f s: %d bytes resent, bound %.0f", 50*100, elapsed, l.ResentBytes, bound)
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
	got := rtpOnly(devs[1].media(300 * time.Millisecond))
	require.Len(t, got, 10, "the default policy: the lowest layer only")
	for _, ssrc := range []uint32{high, low} {
		nack, err := (&rtcp.TransportLayerNack{MediaSSRC: ssrc, Nacks: []rtcp.NackPair{{PacketID: 5}}}).Marshal()
		require.NoError(t, err)
		devs[1].send(nack)
	}
	got = rtpOnly(devs[1].media(300 * time.Millisecond))
	require.Len(t, got, 1)
	require.Equal(t, byte(low), got[0][11], "only the low layer's packet is resent")
	s := r.f.Stats()
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

	probes := func(d *rawDevice, wait time.Duration) (n, bytes int) {
		for _, p := range rtpOnly(d.media(wait)) {
			var h protocol.RTPHeader
			if h.Parse(p) == nil && h.SSRC == protocol.RelayProbeSSRC {
				n++
				bytes += len(p)
			}
		}
		return n, bytes
	}
	n, b := probes(devs[1], 1200*time.Millisecond)
	t.Logf("%d probes, %d bytes in 1.2 s", n, b)
	require.Positive(t, n, "the held-down receiver is probed")
	// 1.5 x 400 kbit/s for at most ~1 s of the window: about 75 kB.
	require.InDelta(t, 75_000, b, 40_000)
	require.EqualValues(t, 1, r.f.Stats().Probes)

	// Its REMB falls: the probe stops at once.
	remb(200_000)
	time.Sleep(100 * time.Millisecond)
	devs[1].media(50 * time.Millisecond)
	n, _ = probes(devs[1], 500*time.Millisecond)
	require.Zero(t, n, "no probe after the REMB fell")
	n, _ = probes(devs[2], 50*time.Millisecond)
	require.Zero(t, n, "a receiver that is not held down is not probed")
}
