package forwarder

import (
	"encoding/binary"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// audioPkt builds an audio packet with the given level, voice flag, sequence
// number and payload size.
func audioPkt(seq uint16, voice bool, level uint8, payload int) []byte {
	b := make([]byte, 0, 20+payload)
	b = append(b, 0x90, 111)
	b = binary.BigEndian.AppendUint16(b, seq)
	b = append(b, 0, 0, 0x03, 0xc0, 0xde, 0xad, 0xbe, 0xef, 0xbe, 0xde, 0x00, 0x01)
	b = append(b, 0x10, protocol.AudioLevelByte(voice, level), 0, 0)
	return append(b, make([]byte, payload)...)
}

// TestAudioGate drives the gate through the reader: default policy, a
// decision that mutes the sender, a loud onset that opens it for the hold
// time, a device LoudOnset that counts only while the audio is loud, and a
// decision that puts the sender back in the forwarding set.
func TestAudioGate(t *testing.T) {
	r, rt, src, mc := hotPathFixture(t)
	now := time.Unix(1000, 0)
	r.f.cfg.Now = func() time.Time { return now }
	m := &rt.bySrc[src].media.audio
	send := func(b []byte) int {
		before := mc.sent
		r.batchNow = 0
		r.handle(rt, b, src, 0)
		r.flush()
		return mc.sent - before
	}
	quiet := audioPkt(1, false, 120, 8)

	require.Equal(t, 4, send(quiet), "no decision yet: everything is forwarded")
	m.gate.Store(gateOff)
	require.Equal(t, 0, send(audioPkt(2, false, 120, 8)), "muted")
	require.Equal(t, 0, send(audioPkt(3, true, 20, 10)), "loud level but a payload too small for speech is no onset")
	require.Equal(t, 4, send(audioPkt(4, true, 20, 80)), "a level step opens the gate at once")
	now = now.Add(500 * time.Millisecond)
	require.Equal(t, 4, send(audioPkt(5, true, 22, 80)), "within the hold")
	now = now.Add(600 * time.Millisecond)
	require.Equal(t, 0, send(audioPkt(6, true, 20, 80)), "hold over; loud again without a step is not an onset")
	require.Equal(t, uint64(1), m.onsets.Load())

	onset, err := protocol.MarshalRelayApp(0xdeadbeef, &protocol.LoudOnset{AudioSSRC: 0xdeadbeef, Level: 20})
	require.NoError(t, err)
	require.Equal(t, 0, send(onset), "the device's LoudOnset stops at the forwarder")
	require.Equal(t, uint64(2), m.onsets.Load(), "the audio is loud: the flag counts")
	require.Equal(t, 4, send(audioPkt(7, true, 20, 80)))
	now = now.Add(2 * time.Second)
	require.Equal(t, 0, send(audioPkt(8, false, 120, 8)))
	require.Equal(t, 0, send(onset))
	require.Equal(t, uint64(2), m.onsets.Load(), "a flag while the audio is quiet is ignored")

	m.gate.Store(gateOn)
	require.Equal(t, 4, send(audioPkt(9, false, 120, 8)), "in the forwarding set")
	video := calltestRTP(10) // no audio level: not audio, never gated
	m.gate.Store(gateOff)
	require.Equal(t, 4, send(video))

	s := r.c
	require.Equal(t, uint64(4), s.audioMuted.Load(), "packets 2, 3, 6 and 8")
	require.Equal(t, uint64(2), s.onsetMsgs.Load())
}

func calltestRTP(seq uint16) []byte {
	b := []byte{0x80, 96, 0, 0, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef}
	binary.BigEndian.PutUint16(b[2:], seq)
	return append(b, make([]byte, 200)...)
}

// TestAudioMeter: the totals the metadata tick reads, including loss from
// sequence gaps and reordering that is not loss.
func TestAudioMeter(t *testing.T) {
	r, rt, src, _ := hotPathFixture(t)
	m := &rt.bySrc[src].media.audio
	for _, seq := range []uint16{100, 101, 103, 102, 104} { // 102 late, nothing lost
		r.handle(rt, audioPkt(seq, seq%2 == 0, 30, 60), src, 0)
	}
	r.handle(rt, audioPkt(110, true, 10, 60), src, 0) // 105..109 lost
	r.flush()
	tot := m.totals().since(audioTotals{})
	require.Equal(t, uint64(6), tot.packets)
	require.Equal(t, uint64(4), tot.voice)
	require.Equal(t, uint64(6*60), tot.payload)
	require.Equal(t, uint64(11), tot.expected, "100..110")
	require.Equal(t, uint32(117), m.loudest.Load())

	s := &session{participant: protocol.NewID(), media: rt.bySrc[src].media}
	mm, ok, _ := s.tickMetadata(100 * time.Millisecond)
	require.True(t, ok)
	require.Equal(t, uint16(6), mm.Packets)
	require.Equal(t, uint16(4), mm.VoicePackets)
	require.Equal(t, uint8(10), mm.MaxLevel)
	require.Equal(t, uint8(127-(5*97+117)/6), mm.MeanLevel)
	require.Equal(t, uint16(5*1000/11), mm.LossPermille)
	_, ok, _ = s.tickMetadata(100 * time.Millisecond)
	require.True(t, ok, "the first quiet tick after speech is said")
	_, ok, _ = s.tickMetadata(100 * time.Millisecond)
	require.False(t, ok, "nothing new: nothing to say")
	r.handle(rt, audioPkt(111, false, 120, 8), src, 0)
	r.flush()
	_, ok, _ = s.tickMetadata(100 * time.Millisecond)
	require.False(t, ok, "quiet stays quiet: nothing to say")
}

// TestAudioGateAllocatesNothing: metering and gating stay allocation-free,
// muted or not.
func TestAudioGateAllocatesNothing(t *testing.T) {
	r, rt, src, _ := hotPathFixture(t)
	rt.bySrc[src].media.audio.gate.Store(gateOff)
	loud, quiet := audioPkt(1, true, 20, 80), audioPkt(2, false, 120, 8)
	allocs := testing.AllocsPerRun(1000, func() {
		r.handle(rt, quiet, src, 0)
		r.handle(rt, loud, src, 0)
		r.flush()
	})
	require.Zero(t, allocs)
}

// TestAudioTotalsWrap: the packed counters give exact tick differences even
// when a field of the cumulative value has carried into the next one.
func TestAudioTotalsWrap(t *testing.T) {
	var m audioMeter
	m.levels.Store(0xffff | 0xffff<<16 | 0xffffffff<<32)
	m.bytes.Store(0xffffffff | 0xfffffff0<<32)
	before := m.totals()
	m.levels.Add(3 | 2<<16 | 300<<32)
	m.bytes.Add(500 | 700<<32)
	d := m.totals().since(before)
	require.Equal(t, audioTick{packets: 3, voice: 2, loudSum: 300, payload: 500, all: 700}, d)
}

func TestLatencyHistogram(t *testing.T) {
	var h latencyHistogram
	for _, d := range []time.Duration{100 * time.Microsecond, 3 * time.Millisecond, 3 * time.Millisecond, 10 * time.Second} {
		h.observe(d)
	}
	m := &dto.Metric{}
	require.NoError(t, h.metric(prometheus.NewDesc("x", "x", nil, nil)).Write(m))
	hist := m.GetHistogram()
	require.Equal(t, uint64(4), hist.GetSampleCount())
	require.InDelta(t, 10.0061, hist.GetSampleSum(), 1e-9)
	cum := map[float64]uint64{}
	for _, b := range hist.GetBucket() {
		cum[b.GetUpperBound()] = b.GetCumulativeCount()
	}
	require.Equal(t, uint64(1), cum[0.0005])
	require.Equal(t, uint64(3), cum[0.005])
	require.Equal(t, uint64(3), cum[2.5], "10 s is above every bound")
}
