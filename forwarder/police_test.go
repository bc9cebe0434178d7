package forwarder

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// policedFixture is hotPathFixture with the default policing and the first
// member capped at capBps; the reader's clock is r.batchNow, which the
// test sets (a fake clock).
func policedFixture(t testing.TB, capBps int64) (*reader, *routes, netip.AddrPort, *mediaInfo) {
	r, rt, src, _ := hotPathFixture(t)
	r.f.police = policeParamsOf(DefaultPolice())
	m := rt.bySrc[src].media
	m.police.capRate.Store(capBps / 8)
	return r, rt, src, m
}

// A member sending twenty times its cap, on a fake clock: what passes is
// its burst plus its cap for the time elapsed, its audio (within the audio
// cap) passes whole while its video is cut, and every drop is counted by
// kind.
func TestPoliceCutsVideoBeforeAudio(t *testing.T) {
	const capBps = 200_000
	r, rt, src, _ := policedFixture(t, capBps)
	video := videoPacket(0x7e, 0, protocol.VideoFrame{Start: true, Layers: 1}) // ~1030 bytes
	audio := append([]byte(nil), audioPacket...)                               // 120 bytes, 50 a second
	start := int64(1e9)
	const seconds = 4
	var videoIn, audioIn, videoOut, audioOut uint64
	// Every 2 ms one video packet (4 Mbit/s: 20 times the cap); every 20 ms an audio packet.
	for tick := int64(0); tick < seconds*500; tick++ {
		r.batchNow = start + tick*2e6
		binary.BigEndian.PutUint16(video[2:], uint16(tick))
		before := r.drops
		r.handle(rt, video, src, 1)
		videoIn++
		if r.drops == before {
			videoOut++
		}
		if tick%10 == 0 {
			binary.BigEndian.PutUint16(audio[2:], uint16(tick/10))
			before = r.drops
			r.handle(rt, audio, src, 1)
			audioIn++
			if r.drops == before {
				audioOut++
			}
		}
		r.flush()
	}
	s := r.c
	require.Equal(t, audioIn, audioOut, "audio within its cap is never cut")
	require.Zero(t, s.drops[DropPolicedAudio].Load())
	require.Equal(t, videoIn-videoOut, s.drops[DropPolicedVideo].Load(), "every cut counted")
	// What passed: the burst (a second at the cap) plus the cap for the
	// time elapsed, of which the audio took its part.
	capBytes := float64(capBps) / 8
	passed := float64(videoOut*uint64(len(video)) + audioOut*uint64(len(audio)))
	allowed := capBytes*seconds + capBytes
	t.Logf("offered %.0f kbit/s, cap %d kbit/s: passed %.0f bytes of %.0f allowed; video %d of %d packets, audio %d of %d",
		float64(videoIn*uint64(len(video))+audioIn*uint64(len(audio)))*8/seconds/1000, capBps/1000, passed, allowed, videoOut, videoIn, audioOut, audioIn)
	require.LessOrEqual(t, passed, allowed+float64(len(video)))
	require.GreaterOrEqual(t, passed, allowed-2*float64(len(video)), "the member keeps its cap")
}

// Audio over the audio cap is cut too, and counted as such; forwarded RTCP
// counts against the member's cap like video.
func TestPoliceAudioCapAndRTCP(t *testing.T) {
	r, rt, src, m := policedFixture(t, 10_000_000)
	audio := append([]byte(nil), audioPacket...)
	sr := senderReport()
	r.batchNow = 1e9
	// 2 s of 512 kbit/s audio cap is 128 kB; offer 2,000 packets of 120 B
	// (240 kB) in 2 s: 1 ms apart.
	for i := range 2000 {
		r.batchNow = 1e9 + int64(i)*1e6
		binary.BigEndian.PutUint16(audio[2:], uint16(i))
		r.handle(rt, audio, src, 1)
	}
	r.flush()
	dropped := r.c.drops[DropPolicedAudio].Load()
	passed := (2000 - dropped) * uint64(len(audio))
	allowed := uint64(DefaultPolice().AudioBps/8) * 3 // 2 s and 1 s of burst
	require.Positive(t, dropped)
	require.LessOrEqual(t, passed, allowed+uint64(len(audio)))

	// RTCP with a sender report is forwarded, and policed as the member's.
	m.police.capRate.Store(minBurst) // 12 kB/s, and as much of burst
	m.police.all.lastNS.Store(0)     // a fresh bucket: full
	for i := range 1000 {            // 28 kB within a microsecond
		r.batchNow = 10e9 + int64(i)
		r.handle(rt, sr, src, 1)
	}
	r.flush()
	require.Positive(t, r.c.drops[DropPolicedRTCP].Load())
	require.LessOrEqual(t, (1000-r.c.drops[DropPolicedRTCP].Load())*uint64(len(sr)), uint64(minBurst+len(sr)))
}

// senderReport is an RTCP sender report without report blocks: forwarded
// to the call as it is.
func senderReport() []byte {
	b := make([]byte, 28)
	b[0], b[1], b[3] = 0x80, 200, 6
	return b
}

// TestPolicedPathAllocatesNothing: policed packets, passed and cut, cost
// no allocation.
func TestPolicedPathAllocatesNothing(t *testing.T) {
	r, rt, src, _ := policedFixture(t, 1_000_000)
	video := videoPacket(0x7e, 0, protocol.VideoFrame{Start: true, Layers: 1})
	now := int64(1e9)
	allocs := testing.AllocsPerRun(1000, func() {
		now += 1e6 // 1 ms: a 1 kB packet every ms is 8 Mbit/s, 8 times the cap
		r.batchNow = now
		r.handle(rt, audioPacket, src, 0)
		r.handle(rt, video, src, 0)
		r.flush()
	})
	require.Zero(t, allocs)
	require.Positive(t, r.c.drops[DropPolicedVideo].Load(), "the cut path ran")
	require.Zero(t, r.c.drops[DropPolicedAudio].Load())
}

// A member's cap: its class's before any target, the conductor's target
// with headroom (never below the minimum) once there is one; up at once,
// down only LowerAfter after.
func TestPoliceCapFollowsTargets(t *testing.T) {
	f := &Forwarder{cfg: Default()}
	c := &control{f: f}
	p := DefaultPolice()
	group := &call{class: protocol.ClassGroup}
	one := &call{class: protocol.ClassOneToOne}
	s := &session{call: group, media: new(mediaInfo)}
	require.EqualValues(t, p.GroupBps/8, c.policeRate(s))
	require.EqualValues(t, p.OneToOneBps/8, c.policeRate(&session{call: one, media: new(mediaInfo)}))

	now := time.Unix(100, 0)
	c.policeTick(s, now)
	require.EqualValues(t, p.GroupBps/8, s.media.police.capRate.Load())

	// A target of 6 Mbit/s: 9 Mbit/s at once.
	s.video.target = &protocol.SenderTarget{TotalBps: 6_000_000}
	c.policeTick(s, now)
	require.EqualValues(t, 9_000_000/8, s.media.police.capRate.Load())

	// Down to 100 kbit/s: the minimum, and only after LowerAfter.
	s.video.target = &protocol.SenderTarget{TotalBps: 100_000}
	c.policeTick(s, now)
	c.policeTick(s, now.Add(p.LowerAfter-time.Millisecond))
	require.EqualValues(t, 9_000_000/8, s.media.police.capRate.Load(), "the sender has time to follow")
	c.policeTick(s, now.Add(p.LowerAfter))
	require.EqualValues(t, p.MinBps/8, s.media.police.capRate.Load())

	// Lower then back up before LowerAfter: the cap never went down.
	s.video.target = &protocol.SenderTarget{TotalBps: 2_000_000}
	c.policeTick(s, now)
	s.video.target = &protocol.SenderTarget{TotalBps: 1_000_000}
	c.policeTick(s, now.Add(time.Second))
	s.video.target = &protocol.SenderTarget{TotalBps: 2_000_000}
	c.policeTick(s, now.Add(2*time.Second))
	c.policeTick(s, now.Add(2*time.Second+p.LowerAfter))
	require.EqualValues(t, 3_000_000/8, s.media.police.capRate.Load())

	// Policing off: no cap.
	f.cfg.Police.GroupBps, f.cfg.Police.OneToOneBps = 0, 0
	require.Zero(t, c.policeRate(s))
	require.Equal(t, policeParams{}, policeParamsOf(f.cfg.Police))
}

// BenchmarkHotPathPoliced is BenchmarkHotPath with its sender policed (a
// cap it never reaches): the cost of the two buckets per packet.
func BenchmarkHotPathPoliced(b *testing.B) {
	r, rt, src, _ := policedFixture(b, 8<<30)
	benchHandle(b, r, rt, src)
}
