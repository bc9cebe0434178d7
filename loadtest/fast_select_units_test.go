package loadtest

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/protocol"
)

// A stream's first packet starts it; a gap of up to gapLimit packets is
// loss, a longer one gating (nothing expected); a reordered or duplicate
// packet expects nothing more; sequence numbers wrap. Streams are apart by
// receiver and SSRC.
func TestSelStateGap(t *testing.T) {
	s := newSelState()
	const a, b = uint64(1)<<32 | 7, uint64(2)<<32 | 7
	steps := []struct {
		key   uint64
		seq   uint16
		limit int
		want  uint64
	}{
		{a, 65534, gapLimit, 1}, // first
		{a, 65535, gapLimit, 1}, // next
		{a, 1, gapLimit, 2},     // wraps, 0 lost
		{a, 4, gapLimit, 3},     // 2 and 3 lost
		{a, 8, gapLimit, 1},     // 5, 6, 7 missing: gated, not lost
		{a, 8, gapLimit, 0},     // duplicate
		{a, 6, gapLimit, 0},     // older: fills a gap
		{b, 100, gapLimit, 1},   // another receiver's stream
		{b, 110, 1 << 15, 10},   // never gated: 9 lost
		{a, 9, gapLimit, 1},
	}
	for i, st := range steps {
		require.Equal(t, st.want, s.gap(st.key, st.seq, st.limit), "step %d", i)
	}
}

// A receiver's distinct audio senders are counted per window: repeats
// count once, a new window closes the last into the histogram, and more
// than maxWinSenders count as that many.
func TestSelStateWindows(t *testing.T) {
	s := newSelState()
	for _, snd := range []int32{10, 11, 10, 12, 11} {
		s.hear(1, snd, 5)
	}
	s.hear(2, 10, 5)
	s.hear(1, 10, 6) // closes receiver 1's window 5 (3 senders)
	for snd := range int32(12) {
		s.hear(2, 100+snd, 7) // closes receiver 2's window 5 (1); 12 senders
	}
	s.hear(2, 1, 8)
	want := [maxWinSenders + 1]uint64{}
	want[3], want[1], want[maxWinSenders] = 1, 1, 1
	require.Equal(t, want, s.hist)
}

// Video SSRCs name the device and the layer; audio SSRCs keep kind 0; the
// device number reads back from either.
func TestVideoSSRC(t *testing.T) {
	for _, dev := range []int{0, 1, 4242, maxDevices - 1} {
		require.Zero(t, streamKind(fastSSRC(dev, false)))
		require.Zero(t, streamKind(fastSSRC(dev, true)))
		seen := map[uint32]bool{fastSSRC(dev, false): true, fastSSRC(dev, true): true}
		for l := range 3 {
			s := videoSSRC(dev, l)
			require.False(t, seen[s], "device %d layer %d", dev, l)
			seen[s] = true
			require.Equal(t, 1+l, streamKind(s))
			d, probe, ok := fastSender(s)
			require.True(t, ok)
			require.False(t, probe)
			require.Equal(t, dev, d)
		}
	}
}

// A device's video templates are valid RTP video packets the forwarder
// reads as its layers (protocol.RTPHeader: no audio level, the video
// frame element with layer and count, abs-send-time, rollover counter),
// with room for the stamp, of growing size; key frames are flagged every
// videoKeyEvery frames.
func TestFastVideoTemplates(t *testing.T) {
	v, err := newFastVideo(77, 3, 1000)
	require.NoError(t, err)
	prev := 0
	for l := range 3 {
		var h protocol.RTPHeader
		require.NoError(t, h.Parse(v.tpl[l]), "layer %d", l)
		require.Equal(t, videoSSRC(77, l), h.SSRC)
		_, isAudio := h.ExtensionByID(protocol.DefaultAudioLevelExtensionID)
		require.False(t, isAudio)
		vf, ok := h.VideoFrame(protocol.DefaultVideoFrameExtensionID)
		require.True(t, ok)
		require.Equal(t, protocol.VideoFrame{Start: true, End: true, Layer: uint8(l), Layers: 3}, vf) //nolint:gosec // l < 3
		_, ok = h.AbsSendTime(protocol.DefaultAbsSendTimeExtensionID)
		require.True(t, ok)
		_, ok = h.RolloverCounter(protocol.DefaultRolloverCounterExtensionID)
		require.True(t, ok)
		require.Len(t, h.Payload(), videoSizes[l])
		require.Greater(t, len(v.tpl[l]), prev)
		prev = len(v.tpl[l])
	}
	_, err = newFastVideo(1, 4, 0)
	require.Error(t, err, "at most 3 layers")
}

// Against the reflector, only members at or past Forwarded send from the
// mute address; against the forwarder (its conductor decides) nobody does,
// nor without Forwarded. The mute address is no device's.
func TestMutedMembers(t *testing.T) {
	for _, tc := range []struct {
		target    string
		forwarded int
		muted     []bool
	}{
		{TargetReflector, 3, []bool{false, false, false, true, true}},
		{TargetReflector, 0, []bool{false, false, false, false, false}},
		{TargetForwarder, 3, []bool{false, false, false, false, false}},
	} {
		e := &fastEngine{f: Fast{Target: tc.target, Forwarded: tc.forwarded}}
		for idx, want := range tc.muted {
			require.Equal(t, want, e.muted(&fastDev{idx: idx}), "%s forwarded %d member %d", tc.target, tc.forwarded, idx)
		}
	}
	_, ok := deviceOf(muteAddr)
	require.False(t, ok)
	require.True(t, muteAddr.IsLoopback())
	require.False(t, muteAddr == netip.MustParseAddr("127.0.0.1"))
}

// The plan checks the new fields.
func TestFastSelectiveValidate(t *testing.T) {
	for _, tc := range []struct {
		f  Fast
		ok bool
	}{
		{Fast{Target: TargetForwarder, Forwarded: 3}, true},
		{Fast{Target: TargetReflector, VideoLayers: 3}, true},
		{Fast{Target: TargetForwarder, VideoLayers: 4}, false},
		{Fast{Target: TargetForwarder, Forwarded: -1}, false},
		{Fast{Target: TargetTURN, Forwarded: 3, TURN: TURNAuth{User: "u"}}, false},
	} {
		p := Plan{Engine: EngineFast, Mix: Mix{OneToOne: 1}, Fast: tc.f}
		p.Fast = p.Fast.withDefaults()
		err := validateFast(&p)
		if tc.ok {
			require.NoError(t, err, "%+v", tc.f)
		} else {
			require.Error(t, err, "%+v", tc.f)
		}
	}
}

// A receiver's copy of a sender's layer 0 counts from the first key frame
// that reaches it, as the forwarder starts a layer at a key frame; layers 1
// and 2 never count; audio always does. Without Forwarded nothing is
// expected per stream (the senders count it); with it, gated audio is.
func TestNoteStreamVideoStartsAtKeyFrame(t *testing.T) {
	e := &fastEngine{f: Fast{VideoLayers: 3}, sel: []*selState{newSelState()}}
	dst, err := deviceAddr(5)
	require.NoError(t, err)
	v, err := newFastVideo(9, 3, 100)
	require.NoError(t, err)
	key := func(l int, k bool) []byte {
		b := append([]byte(nil), v.tpl[l]...)
		if k {
			b[v.vfOff[l]] |= 0x80
		}
		return b
	}
	require.False(t, e.noteStream(0, key(0, false), dst, 1, 1), "before a key frame")
	require.False(t, e.noteStream(0, key(1, true), dst, 1, 1), "layer 1")
	require.True(t, e.noteStream(0, key(0, true), dst, 2, 1), "the key frame starts it")
	require.True(t, e.noteStream(0, key(0, false), dst, 3, 1))
	require.False(t, e.noteStream(0, key(2, true), dst, 3, 1), "layer 2")
	other, _ := deviceAddr(6)
	require.False(t, e.noteStream(0, key(0, false), other, 3, 1), "another receiver's copy has not started")
	audio := make([]byte, 12)
	audio[0] = 0x80
	binary.BigEndian.PutUint32(audio[8:12], fastSSRC(9, false))
	require.True(t, e.noteStream(0, audio, dst, 3, 1))
	require.Equal(t, [streamKinds]uint64{1, 4, 1, 1}, e.sel[0].received)
	var exp uint64
	for b := range e.expected[1] {
		exp += e.expected[1][b].Load()
	}
	require.Zero(t, exp, "no per-stream expectations without Forwarded")

	e.f.Forwarded = 3
	for _, seq := range []uint16{10, 11, 13} { // 12 lost
		binary.BigEndian.PutUint16(audio[2:4], seq)
		require.True(t, e.noteStream(0, audio, dst, 3, 1))
	}
	exp = 0
	for b := range e.expected[1] {
		exp += e.expected[1][b].Load()
	}
	require.Equal(t, uint64(4), exp, "10, 11, 12 (lost) and 13")
}

// What the conductor ranks: every pre-sealed audio frame carries the
// RFC 6464 audio level element where the forwarder reads it (the default
// id), silence at level 120 without the voice flag and speech at 25 with
// it, and no video frame element; a probe's sealed frames carry the same.
func TestFastFramesCarryAudioLevel(t *testing.T) {
	check := func(pkt []byte, voice bool, level uint8) {
		t.Helper()
		var h protocol.RTPHeader
		require.NoError(t, h.Parse(pkt))
		v, l, ok := h.AudioLevel(protocol.DefaultAudioLevelExtensionID)
		require.True(t, ok, "audio level element")
		require.Equal(t, voice, v)
		require.Equal(t, level, l)
		_, isVideo := h.VideoFrame(protocol.DefaultVideoFrameExtensionID)
		require.False(t, isVideo)
	}
	d := &fastDev{}
	s, err := client.NewSender(client.SenderConfig{SSRC: fastSSRC(3, false), PayloadType: payloadType, Key: client.NewMediaKey()})
	require.NoError(t, err)
	require.NoError(t, d.preseal(s))
	check(d.tpl[0], false, 120)
	check(d.tpl[1], true, 25)

	e := &fastEngine{}
	p, err := client.NewSender(client.SenderConfig{SSRC: fastSSRC(4, true), PayloadType: payloadType, Key: client.NewMediaKey()})
	require.NoError(t, err)
	pd := &fastDev{sender: p, plain: make([]byte, speechSize), out: make([]byte, 0, 256)}
	check(append([]byte(nil), e.sealProbe(pd, time.Now(), 1, 1, 0, 0, false)...), false, 120)
	check(e.sealProbe(pd, time.Now(), 2, 1, 0, 1, true), true, 25)
}
