package client

import (
	"math"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pion/rtcp"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// rtpSink records the packets a VideoSender writes.
type rtpSink struct {
	mu   sync.Mutex
	pkts []sentPacket
}

// sentPacket is one packet as a receiver (or the relay) reads it.
type sentPacket struct {
	at     time.Time // the frame time it was sent at
	size   int
	ssrc   uint32
	seq    uint16
	ts     uint32
	marker bool
	vf     protocol.VideoFrame
	hasVF  bool
	hasAbs bool
	raw    []byte
}

func (k *rtpSink) WriteRTP(b []byte) error {
	var h protocol.RTPHeader
	if err := h.Parse(b); err != nil {
		return err
	}
	vf, hasVF := h.VideoFrame(protocol.DefaultVideoFrameExtensionID)
	_, hasAbs := h.AbsSendTime(protocol.DefaultAbsSendTimeExtensionID)
	k.mu.Lock()
	defer k.mu.Unlock()
	k.pkts = append(k.pkts, sentPacket{size: len(b), ssrc: h.SSRC, seq: h.SequenceNumber, ts: h.Timestamp,
		marker: h.Marker, vf: vf, hasVF: hasVF, hasAbs: hasAbs, raw: slices.Clone(b)})
	return nil
}

// take returns the packets written since the last take, stamped with at.
func (k *rtpSink) take(at time.Time) []sentPacket {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := k.pkts
	k.pkts = nil
	for i := range out {
		out[i].at = at
	}
	return out
}

// frames groups packets into frames (by SSRC and timestamp, in order).
func frames(pkts []sentPacket) [][]sentPacket {
	var out [][]sentPacket
	open := map[uint32]int{}
	for _, p := range pkts {
		i, ok := open[p.ssrc]
		if !ok || out[i][0].ts != p.ts {
			out = append(out, nil)
			i = len(out) - 1
			open[p.ssrc] = i
		}
		out[i] = append(out[i], p)
	}
	return out
}

// drive runs v's frame clock from start for d with fake time, and returns
// every packet sent.
func drive(v *VideoSender, sink *rtpSink, start time.Time, d time.Duration) []sentPacket {
	step := time.Second / time.Duration(v.cfg.FrameRate)
	var all []sentPacket
	for i := range int((d + step/2) / step) {
		at := start.Add(time.Duration(i) * step)
		v.tick(at)
		all = append(all, sink.take(at)...)
	}
	return all
}

func newTestVideo(t *testing.T, cfg VideoConfig) (*VideoSender, *rtpSink) {
	t.Helper()
	cfg.SSRCs = [3]uint32{0xA0, 0xA1, 0xA2}
	sink := &rtpSink{}
	v, err := newVideoSender(sink, cfg, t0)
	require.NoError(t, err)
	return v, sink
}

// bitrate returns the bits per second of pkts on ssrc over d.
func bitrate(pkts []sentPacket, ssrc uint32, d time.Duration) float64 {
	var n int
	for _, p := range pkts {
		if p.ssrc == ssrc {
			n += p.size
		}
	}
	return float64(n) * 8 / d.Seconds()
}

func requireNear(t *testing.T, want, got, tolerance float64, msg string) {
	t.Helper()
	t.Logf("%s: %.0f bit/s for a target of %.0f (%+.1f%%)", msg, got, want, (got/want-1)*100)
	require.InDelta(t, want, got, want*tolerance, "%s: want %.0f, got %.0f", msg, want, got)
}

func relayMsg(t *testing.T, msgs ...protocol.RelayMessage) []byte {
	t.Helper()
	var pkts []rtcp.Packet
	for _, m := range msgs {
		app, err := protocol.NewRelayApp(0, m)
		require.NoError(t, err)
		pkts = append(pkts, app)
	}
	b, err := rtcp.Marshal(pkts)
	require.NoError(t, err)
	return b
}

func marshalRTCP(t testing.TB, pkts ...rtcp.Packet) []byte {
	t.Helper()
	b, err := rtcp.Marshal(pkts)
	require.NoError(t, err)
	return b
}

// checkFrame checks a frame's extension flags: K on every packet of a key
// frame (and none of a delta), S on the first only, E and the marker on
// the last only, the layer and count as given, payloads within MaxPayload.
func checkFrame(t *testing.T, f []sentPacket, key bool, layer, layers uint8, overhead int) {
	t.Helper()
	for j, p := range f {
		require.True(t, p.hasVF, "video frame extension on every packet")
		require.True(t, p.hasAbs, "abs-send-time on every packet")
		require.Equal(t, key, p.vf.Key, "K on every packet of a key frame only (packet %d)", j)
		require.Equal(t, j == 0, p.vf.Start, "S on the first packet only (packet %d)", j)
		require.Equal(t, j == len(f)-1, p.vf.End, "E on the last packet only (packet %d)", j)
		require.Equal(t, j == len(f)-1, p.marker, "marker on the last packet only (packet %d)", j)
		require.Equal(t, layer, p.vf.Layer)
		require.Equal(t, layers, p.vf.Layers)
		require.LessOrEqual(t, p.size-overhead, 1100, "payload within MaxPayload")
		if j > 0 {
			require.Equal(t, f[j-1].seq+1, p.seq, "consecutive sequence numbers")
		}
	}
}

// The sender starts with one stream and a key frame, flags every packet
// right, sizes key frames at 3..4 deltas, keeps the initial bitrate, and
// sends a key frame every KeyFrameInterval.
func TestVideoSenderSingleStream(t *testing.T) {
	v, sink := newTestVideo(t, VideoConfig{})
	overhead := v.layers[0].overhead
	pkts := drive(v, sink, t0, 8100*time.Millisecond)
	fs := frames(pkts)
	require.Equal(t, 243, len(fs), "8.1s at 30 fps")
	var deltas []int
	var keys []int
	for i, f := range fs {
		require.Equal(t, uint32(0xA0), f[0].ssrc, "a single stream on SSRCs[0]")
		key := i == 0 || i == 120 || i == 240
		checkFrame(t, f, key, 0, 1, overhead)
		size := 0
		for _, p := range f {
			size += p.size
		}
		if key {
			keys = append(keys, size)
		} else if i%120 > 30 { // paid back the last key frame
			deltas = append(deltas, size)
		}
	}
	slices.Sort(deltas)
	median := float64(deltas[len(deltas)/2])
	for _, k := range keys {
		require.InDelta(t, 3.5, float64(k)/median, 0.5, "a key frame is 3..4 deltas")
	}
	for w := range 4 {
		requireNear(t, 600_000, windowRates(pkts, t0.Add(time.Duration(w)*2*time.Second))[0], 0.15, "initial bitrate")
	}
	st := v.Stats()
	require.Equal(t, 1, st.Layers)
	require.Equal(t, uint64(3), st.Layer[0].KeyFrames)
	require.Equal(t, uint64(243), st.Layer[0].Frames)
	require.Equal(t, uint64(len(pkts)), st.Layer[0].Packets)
	require.Equal(t, 720, st.Layer[0].Height)
	require.Equal(t, uint32(600_000), st.Layer[0].Target)
	require.False(t, st.Layer[1].Active)
}

// windowRates returns each layer's bitrate over the 2s (60 frame times)
// from the frame nearest to from.
func windowRates(pkts []sentPacket, from time.Time) [3]float64 {
	var in []sentPacket
	from = from.Add(-time.Second / 60) // half a frame: frame times are not whole nanoseconds
	for _, p := range pkts {
		if !p.at.Before(from) && p.at.Before(from.Add(2*time.Second)) {
			in = append(in, p)
		}
	}
	var out [3]float64
	for i, ssrc := range []uint32{0xA0, 0xA1, 0xA2} {
		out[i] = bitrate(in, ssrc, 2*time.Second)
	}
	return out
}

// SimulcastControl splits into layers that each start with a key frame
// and send their TargetBitrate; a layer target of 0 pauses the layer, which
// restarts with a key frame; S=0 goes back to one stream.
func TestVideoSenderObeysSimulcastAndTargets(t *testing.T) {
	v, sink := newTestVideo(t, VideoConfig{})
	at := t0
	run := func(d time.Duration) []sentPacket {
		pkts := drive(v, sink, at, d)
		at = at.Add(d)
		return pkts
	}
	run(time.Second)

	require.True(t, v.HandleRTCP(relayMsg(t, &protocol.SimulcastControl{Enabled: true, Layers: 2},
		&protocol.TargetBitrate{Total: 1_000_000, LayerCount: 2, Layers: [3]uint32{150_000, 700_000}})))
	split := at
	pkts := run(3 * time.Second)
	fs := frames(pkts)
	require.Equal(t, uint32(0xA0), fs[0][0].ssrc)
	require.Equal(t, uint32(0xA1), fs[1][0].ssrc)
	checkFrame(t, fs[0], true, 0, 2, v.layers[0].overhead) // both layers start with a key frame
	checkFrame(t, fs[1], true, 1, 2, v.layers[1].overhead)
	checkFrame(t, fs[2], false, 0, 2, v.layers[0].overhead)
	r := windowRates(pkts, split.Add(time.Second))
	requireNear(t, 150_000, r[0], 0.15, "low layer")
	requireNear(t, 700_000, r[1], 0.15, "high layer")
	require.Zero(t, r[2])
	st := v.Stats()
	require.Equal(t, 2, st.Layers)
	require.Equal(t, 180, st.Layer[0].Height)
	require.Equal(t, 720, st.Layer[1].Height)
	require.Equal(t, uint32(700_000), st.Layer[1].Target)

	// Pause the high layer, then resume it: it restarts with a key frame.
	require.True(t, v.HandleRTCP(relayMsg(t, &protocol.TargetBitrate{Total: 300_000, LayerCount: 2, Layers: [3]uint32{200_000, 0}})))
	pkts = run(2 * time.Second)
	r = windowRates(pkts, at.Add(-2*time.Second))
	requireNear(t, 200_000, r[0], 0.15, "low layer alone")
	require.Zero(t, r[1], "a layer target of 0 pauses the layer")
	require.False(t, v.Stats().Layer[1].Active)
	require.True(t, v.HandleRTCP(relayMsg(t, &protocol.TargetBitrate{Total: 1_000_000, LayerCount: 2, Layers: [3]uint32{150_000, 500_000}})))
	pkts = run(100 * time.Millisecond)
	for _, f := range frames(pkts) {
		if f[0].ssrc == 0xA1 {
			checkFrame(t, f, true, 1, 2, v.layers[1].overhead)
			break
		}
	}

	// Back to one stream: it uses layer 0's target when given, else the
	// total less audio.
	require.True(t, v.HandleRTCP(relayMsg(t, &protocol.SimulcastControl{Layers: 1},
		&protocol.TargetBitrate{Total: 500_000, LayerCount: 1, Layers: [3]uint32{400_000}})))
	pkts = run(3 * time.Second)
	fs = frames(pkts)
	checkFrame(t, fs[0], true, 0, 1, v.layers[0].overhead)
	require.Equal(t, 90, len(fs), "the high layer stopped")
	requireNear(t, 400_000, windowRates(pkts, at.Add(-2*time.Second))[0], 0.15, "single stream, layer 0's target")
	require.True(t, v.HandleRTCP(relayMsg(t, &protocol.TargetBitrate{Total: 500_000})))
	pkts = run(3 * time.Second)
	requireNear(t, 460_000, windowRates(pkts, at.Add(-2*time.Second))[0], 0.15, "single stream, total less audio")

	// Three layers without per-layer targets share the total.
	require.True(t, v.HandleRTCP(relayMsg(t, &protocol.SimulcastControl{Enabled: true, Layers: 3},
		&protocol.TargetBitrate{Total: 1_240_000})))
	pkts = run(3 * time.Second)
	r = windowRates(pkts, at.Add(-2*time.Second))
	requireNear(t, 100_000, r[0], 0.15, "low of three")
	requireNear(t, 300_000, r[1], 0.15, "middle of three")
	requireNear(t, 800_000, r[2], 0.15, "high of three")
	st = v.Stats()
	require.Equal(t, [3]int{180, 360, 720}, [3]int{st.Layer[0].Height, st.Layer[1].Height, st.Layer[2].Height})
	require.Equal(t, uint64(3), st.SimulcastControls)
	require.Equal(t, uint64(6), st.TargetBitrates)
}

// The relay's REMB caps the total; another member's REMB, relayed, does
// not.
func TestVideoSenderREMBCaps(t *testing.T) {
	v, sink := newTestVideo(t, VideoConfig{})
	require.False(t, v.HandleRTCP(marshalRTCP(t, &rtcp.ReceiverEstimatedMaximumBitrate{SenderSSRC: 5, Bitrate: 100_000, SSRCs: []uint32{0xA0}})))
	require.True(t, v.HandleRTCP(marshalRTCP(t, &rtcp.ReceiverEstimatedMaximumBitrate{Bitrate: 300_000})))
	pkts := drive(v, sink, t0, 3*time.Second)
	requireNear(t, 260_000, windowRates(pkts, t0.Add(time.Second))[0], 0.15, "REMB less audio")
	st := v.Stats()
	require.Equal(t, uint32(300_000), st.REMB)
	require.Equal(t, uint64(1), st.REMBs)
	require.Equal(t, uint32(260_000), st.Layer[0].Target)
}

// A PLI for one of the sender's SSRCs makes the layer's next frame a key
// frame, at most one per 200ms per layer; requests inside that are served
// when it ends.
func TestVideoSenderPLI(t *testing.T) {
	v, sink := newTestVideo(t, VideoConfig{})
	require.True(t, v.HandleRTCP(relayMsg(t, &protocol.SimulcastControl{Enabled: true, Layers: 2})))
	at := t0
	step := time.Second / 30
	keyAt := func(d time.Duration) map[uint32][]int {
		out := map[uint32][]int{}
		pkts := drive(v, sink, at, d)
		for i, f := range frames(pkts) {
			if f[0].vf.Key {
				out[f[0].ssrc] = append(out[f[0].ssrc], i/2)
			}
		}
		at = at.Add(d)
		return out
	}
	keyAt(time.Second)
	pli := marshalRTCP(t, &rtcp.PictureLossIndication{MediaSSRC: 0xA1})
	require.True(t, v.HandleRTCP(pli))
	require.Equal(t, map[uint32][]int{0xA1: {0}}, keyAt(step), "the next frame of that layer only")
	require.True(t, v.HandleRTCP(pli))
	require.True(t, v.HandleRTCP(pli))
	got := keyAt(500 * time.Millisecond)
	require.Equal(t, map[uint32][]int{0xA1: {5}}, got, "rate-limited to one per 200ms: served at 6 frames after the last")
	require.False(t, v.HandleRTCP(marshalRTCP(t, &rtcp.PictureLossIndication{MediaSSRC: 0xBEEF})), "not ours")
	require.True(t, v.HandleRTCP(marshalRTCP(t, &rtcp.FullIntraRequest{FIR: []rtcp.FIREntry{{SSRC: 0xA0}}})))
	require.Equal(t, map[uint32][]int{0xA0: {0}}, keyAt(step))
	require.False(t, v.HandleRTCP(marshalRTCP(t, &rtcp.PictureLossIndication{MediaSSRC: 0xA2})), "layer not sent")
	st := v.Stats()
	require.Equal(t, uint64(5), st.PLIs)
	require.Equal(t, uint64(1), st.PLIsCoalesced)
	require.Equal(t, uint64(1), st.PLIsIgnored)
}

func TestVideoSenderBadInput(t *testing.T) {
	v, sink := newTestVideo(t, VideoConfig{})
	for _, b := range [][]byte{nil, {0x80}, {0x80, 204, 0, 9, 0, 0}, make([]byte, 40)} {
		require.False(t, v.HandleRTCP(b))
	}
	// A CRLY packet with a bad body, then a good one in the same datagram.
	bad := marshalRTCP(t, &rtcp.ApplicationDefined{SubType: protocol.SubTypeSimulcastControl, Name: protocol.RelayAppName, Data: []byte{0x80, 9, 0, 0}})
	good := relayMsg(t, &protocol.SimulcastControl{Enabled: true, Layers: 2})
	before := v.Stats().RTCPMalformed
	require.Equal(t, uint64(3), before, "three datagrams with broken framing")
	require.True(t, v.HandleRTCP(append(bad, good...)))
	st := v.Stats()
	require.Equal(t, 2, st.Layers)
	require.Equal(t, before+1, st.RTCPMalformed)
	require.NotEmpty(t, drive(v, sink, t0, 100*time.Millisecond))

	for _, cfg := range []VideoConfig{
		{FrameRate: 500},
		{MaxPayload: 100},
		{VideoFrameID: 3, AbsSendTimeID: 3},
		{AbsSendTimeID: 15},
		{ROCID: 15},
		{ROCID: protocol.DefaultVideoFrameExtensionID},
		{ROCID: 7, AbsSendTimeID: 7},
		{SSRCs: [3]uint32{5, 5, 0}},
	} {
		_, err := newVideoSender(sink, cfg, t0)
		require.ErrorIs(t, err, ErrConfig, "%+v", cfg)
	}
}

func TestVideoTargets(t *testing.T) {
	cfg, err := VideoConfig{}.withDefaults()
	require.NoError(t, err)
	for _, tc := range []struct {
		name string
		c    videoControl
		want [3]uint32
	}{
		{"initial", videoControl{layers: 1}, [3]uint32{600_000}},
		{"split, no targets", videoControl{layers: 2}, [3]uint32{120_000, 480_000}},
		{"total only", videoControl{layers: 1, haveTarget: true, target: protocol.TargetBitrate{Total: 1_040_000}}, [3]uint32{1_000_000}},
		{"layer 0 for the single stream", videoControl{layers: 1, haveTarget: true,
			target: protocol.TargetBitrate{Total: 2_000_000, LayerCount: 2, Layers: [3]uint32{300_000, 900_000}}}, [3]uint32{300_000}},
		{"per layer", videoControl{layers: 2, haveTarget: true,
			target: protocol.TargetBitrate{Total: 2_000_000, LayerCount: 2, Layers: [3]uint32{300_000, 0}}}, [3]uint32{300_000, 0}},
		{"capped by the total", videoControl{layers: 2, haveTarget: true,
			target: protocol.TargetBitrate{Total: 540_000, LayerCount: 2, Layers: [3]uint32{200_000, 800_000}}}, [3]uint32{100_000, 400_000}},
		{"capped by REMB", videoControl{layers: 1, remb: 140_000}, [3]uint32{100_000}},
		{"REMB below audio", videoControl{layers: 1, remb: 10_000}, [3]uint32{0}},
		{"count beyond layers", videoControl{layers: 2, haveTarget: true,
			target: protocol.TargetBitrate{Total: 1_040_000, LayerCount: 1, Layers: [3]uint32{200_000}}}, [3]uint32{200_000, 800_000}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, videoTargets(&tc.c, cfg))
		})
	}
	require.Equal(t, uint32(math.MaxUint32), videoTargets(&videoControl{layers: 1, haveTarget: true,
		target: protocol.TargetBitrate{LayerCount: 1, Layers: [3]uint32{math.MaxUint32}}}, cfg)[0])
}

// Over real loopback sockets, with the test's stand-in relay (the
// forwarder, being reworked concurrently, is covered by its own tests): a
// VideoSender starts with one stream and a key frame, splits into two
// layers when the relay says so and sends each at its target, measured at
// the receiver over 2s, and answers a PLI with a key frame. The receiver
// decrypts every layer and reads which layer it got.
func TestVideoOverLoopback(t *testing.T) {
	if testing.Short() {
		t.Skip("5s of real-time video")
	}
	e := newEnv(t)
	r := e.responder(slowParams)
	x, y := e.dial(e.config(r)), e.dial(e.config(r))
	key := NewMediaKey()
	vs, err := NewVideoSender(x, VideoConfig{Key: key})
	require.NoError(t, err)
	t.Cleanup(vs.Close)
	observe(t, x, nil, onRTCP(func(b []byte) { vs.HandleRTCP(b) }))

	rcv := NewReceiver()
	ssrcs := vs.SSRCs()
	for _, s := range ssrcs {
		require.NoError(t, rcv.AddSender(s, key))
	}
	var mu sync.Mutex
	layerOf := map[uint32]map[uint8]int{} // SSRC -> layer in the decrypted payload -> packets
	decryptErrors := 0
	fb := NewFeedback(y, FeedbackConfig{})
	observe(t, y, fb, func(p *Packet) {
		if p.Kind != protocol.KindRTP {
			return
		}
		var h protocol.RTPHeader
		require.NoError(t, h.Parse(p.Data))
		plain, err := rcv.Open(nil, p.Data, nil)
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			decryptErrors++
			return
		}
		layer, _, _, _, ok := VideoPayloadInfo(plain)
		if !ok {
			return
		}
		if layerOf[h.SSRC] == nil {
			layerOf[h.SSRC] = map[uint8]int{}
		}
		layerOf[h.SSRC][layer]++
	})
	bytesOf := func(ssrc uint32) uint64 {
		st, _ := fb.Stats().Stream(ssrc)
		return st.Bytes
	}
	// measure returns each layer's rate over 2s as sent (what the targets
	// are about), and logs the rate at the receiver: on a loaded machine
	// the loopback socket may drop some.
	measure := func() [3]float64 {
		var sent, got [3]uint64
		snap := func() {
			st := vs.Stats()
			for i, s := range ssrcs {
				sent[i], got[i] = st.Layer[i].Bytes-sent[i], bytesOf(s)-got[i]
			}
		}
		snap()
		start := time.Now()
		time.Sleep(2 * time.Second) // the measuring window; its length is measured below
		snap()
		took := time.Since(start).Seconds()
		var out [3]float64
		for i := range ssrcs {
			out[i] = float64(sent[i]) * 8 / took
			t.Logf("layer %d: sent %.0f bit/s, received %.0f bit/s", i, out[i], float64(got[i])*8/took)
		}
		return out
	}

	// settle lets the sender run past a change (its first frame is a key
	// frame): a stretch counted in the packets it sent, not timed.
	settle := func(layer int, packets uint64) {
		from := vs.Stats().Layer[layer].Packets
		require.Eventually(t, func() bool { return vs.Stats().Layer[layer].Packets-from >= packets },
			30*time.Second, 10*time.Millisecond, "layer %d: %d packets past the change", layer, packets)
	}
	eventually(t, func() bool { return bytesOf(ssrcs[0]) > 0 }, "video arrives")
	settle(0, 30) // about half a second at 600 kbit/s
	rates := measure()
	requireNear(t, 600_000, rates[0], 0.15, "single stream at the initial bitrate")
	st, _ := fb.Stats().Stream(ssrcs[0])
	require.True(t, st.Video)
	require.Equal(t, uint8(1), st.Layers)
	require.Positive(t, st.KeyFrames, "the stream began with a key frame")

	r.raw(t, x.LocalAddr(), relayMsg(t, &protocol.SimulcastControl{Enabled: true, Layers: 2},
		&protocol.TargetBitrate{Total: 900_000, LayerCount: 2, Layers: [3]uint32{150_000, 600_000}}))
	eventually(t, func() bool { return bytesOf(ssrcs[1]) > 0 }, "the high layer arrives")
	settle(1, 30)
	rates = measure()
	requireNear(t, 150_000, rates[0], 0.15, "low layer")
	requireNear(t, 600_000, rates[1], 0.15, "high layer")
	require.Zero(t, rates[2])
	for i, s := range ssrcs[:2] {
		st, _ := fb.Stats().Stream(s)
		require.Equal(t, uint8(i), st.Layer, "the layer the receiver got, from the clear extension") //nolint:gosec // 0..1
		require.Equal(t, uint8(2), st.Layers)
	}

	// (The receiver's own PLIs, if a loaded machine dropped a key frame,
	// reach the sender through the stand-in relay too.)
	keys, plis := vs.Stats().Layer[1].KeyFrames, vs.Stats().PLIs
	r.raw(t, x.LocalAddr(), marshalRTCP(t, &rtcp.PictureLossIndication{MediaSSRC: ssrcs[1]}))
	eventually(t, func() bool { return vs.Stats().Layer[1].KeyFrames > keys }, "a key frame for the PLI")

	vst := vs.Stats()
	require.Equal(t, 2, vst.Layers)
	require.Equal(t, uint64(1), vst.SimulcastControls)
	require.Greater(t, vst.PLIs, plis)
	require.Zero(t, vst.REMBs, "the receiver's own REMB, relayed, is not the relay's")
	require.Zero(t, vst.WriteErrors)
	mu.Lock()
	defer mu.Unlock()
	require.Zero(t, decryptErrors)
	require.Positive(t, layerOf[ssrcs[1]][1], "the high layer decrypts as layer 1")
	require.Positive(t, layerOf[ssrcs[0]][0])
}
