package forwarder

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/pion/rtcp"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

func cachedPacket(ssrc uint32, seq uint16, size int) []byte {
	b := make([]byte, size)
	b[0], b[1] = 0x80, 96
	binary.BigEndian.PutUint16(b[2:], seq)
	binary.BigEndian.PutUint32(b[8:], ssrc)
	for i := 12; i < size; i++ {
		b[i] = byte(int(seq) + i)
	}
	return b
}

func TestNackCacheResendsByteExact(t *testing.T) {
	c := newNackCache(64<<10, nil)
	now := int64(1e9)
	for seq := uint16(65500); seq != 40; seq++ { // across the wrap
		c.put(cachedPacket(7, seq, 300), 7, seq, now)
	}
	dst := make([]byte, maxDatagram)
	n, out := c.resend(dst, 7, 10, now, nil, 0)
	require.Equal(t, nackSent, out)
	require.Equal(t, cachedPacket(7, 10, 300), dst[:n])
	n, out = c.resend(dst, 7, 10, now, nil, 0)
	require.Equal(t, nackSent, out, "the cache itself does not count resends: receivers do (rtx.go)")
	require.Equal(t, cachedPacket(7, 10, 300), dst[:n])

	// Unknown stream, a sequence never seen, and one overwritten by the
	// arena's wrap are misses.
	_, out = c.resend(dst, 8, 10, now, nil, 0)
	require.Equal(t, nackMiss, out)
	_, out = c.resend(dst, 7, 100, now, nil, 0)
	require.Equal(t, nackMiss, out)
	for seq := uint16(40); seq < 400; seq++ { // 108 kB through a 64 KiB arena
		c.put(cachedPacket(7, seq, 300), 7, seq, now)
	}
	_, out = c.resend(dst, 7, 20, now, nil, 0)
	require.Equal(t, nackMiss, out, "overwritten by newer packets")
	n, out = c.resend(dst, 7, 399, now, nil, 0)
	require.Equal(t, nackSent, out)
	require.Equal(t, cachedPacket(7, 399, 300), dst[:n])
}

func TestNackCacheStreamsAndRecycling(t *testing.T) {
	c := newNackCache(256<<10, nil)
	dst := make([]byte, maxDatagram)
	for s := uint32(1); s <= nackStreams; s++ {
		c.put(cachedPacket(s, 5, 100), s, 5, int64(s))
	}
	for s := uint32(1); s <= nackStreams; s++ {
		require.True(t, c.has(s))
	}
	// A fifth stream takes the slot of the one that went quiet first.
	c.put(cachedPacket(99, 5, 100), 99, 5, 100)
	require.False(t, c.has(1))
	n, out := c.resend(dst, 99, 5, 100, nil, 0)
	require.Equal(t, nackSent, out)
	require.True(t, bytes.Equal(cachedPacket(99, 5, 100), dst[:n]))
}

func TestNackCacheAllocatesNothing(t *testing.T) {
	c := newNackCache(512<<10, nil)
	pkt := cachedPacket(7, 0, 1100)
	dst := make([]byte, maxDatagram)
	seq := uint16(0)
	allocs := testing.AllocsPerRun(1000, func() {
		seq++
		c.put(pkt, 7, seq, int64(seq)*1e6)
		c.resend(dst, 7, seq-1, int64(seq)*1e6, nil, 0)
	})
	require.Zero(t, allocs)
}

// BenchmarkNackCache: store one 1100-byte video packet and answer one NACK.
func BenchmarkNackCache(b *testing.B) {
	c := newNackCache(512<<10, nil)
	pkt := cachedPacket(7, 0, 1100)
	dst := make([]byte, maxDatagram)
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)))
	for i := 0; i < b.N; i++ {
		seq := uint16(i)
		c.put(pkt, 7, seq, int64(i)*1e6)
		if i%20 == 0 { // one NACKed packet in 20 (5% loss)
			c.resend(dst, 7, seq-10, int64(i)*1e6, nil, 0)
		}
	}
}

// videoPacket is one packet of a video frame: RTP with the video frame
// element (id 2) and abs-send-time (id 3), then ~1000 opaque bytes.
func videoPacket(ssrc uint32, seq uint16, vf protocol.VideoFrame) []byte {
	vb, err := vf.Byte()
	if err != nil {
		panic(err)
	}
	f := protocol.RTPHeaderFields{PayloadType: 96, SequenceNumber: seq, Timestamp: uint32(seq) * 3000, SSRC: ssrc}
	f.Extensions[0] = protocol.RTPExtension{ID: protocol.DefaultVideoFrameExtensionID, Data: []byte{vb}}
	f.Extensions[1] = protocol.RTPExtension{ID: protocol.DefaultAbsSendTimeExtensionID, Data: []byte{1, 2, 3}}
	b := make([]byte, f.MarshalSize()+1000)
	if _, err := f.MarshalTo(b); err != nil {
		panic(err)
	}
	return b
}

func TestPairSwitchesLayersAtKeyFrames(t *testing.T) {
	m := new(mediaInfo)
	p := newPair()
	low := protocol.VideoFrame{Layer: 0, Layers: 2, Start: true}
	high := protocol.VideoFrame{Layer: 1, Layers: 2, Start: true}
	lowKey, highKey := low, high
	lowKey.Key, highKey.Key = true, true

	// No decision: the lowest layer, from its first key frame on.
	require.False(t, p.pass(low, true, m, 0), "no key frame yet")
	require.Equal(t, uint32(1<<0), m.keyWanted.Swap(0), "asks for a key frame of the low layer")
	require.True(t, p.pass(lowKey, true, m, 0))
	require.True(t, p.pass(low, true, m, 0))
	require.False(t, p.pass(high, true, m, 1))

	// The conductor allows the high rank: low goes on until high's key frame.
	p.target.Store(2)
	require.True(t, p.pass(low, true, m, 0), "keeps the layer it had meanwhile")
	require.False(t, p.pass(high, true, m, 1))
	require.Equal(t, uint32(1<<1), m.keyWanted.Load(), "asks for a key frame on the high layer's SSRC slot")
	require.True(t, p.pass(highKey, true, m, 1))
	require.False(t, p.pass(low, true, m, 0), "switched")
	require.True(t, p.pass(high, true, m, 1))

	// The sender stops simulcasting: its single stream is rank 2.
	single := protocol.VideoFrame{Layers: 1, Start: true}
	singleKey := single
	singleKey.Key = true
	require.False(t, p.pass(single, true, m, 2))
	require.True(t, p.pass(singleKey, true, m, 2))
	// A receiver held to the low rank gets nothing of a single stream.
	p.target.Store(1)
	require.False(t, p.pass(singleKey, true, m, 2))
	p.target.Store(rankNone)
	require.False(t, p.pass(lowKey, true, m, 0))
	// Video without the extension goes to every receiver not set to none.
	p.target.Store(rankDefault)
	require.True(t, p.pass(protocol.VideoFrame{}, false, m, 0))
}

// TestHotPathVideoAndNackAllocateNothing: video through the pairs into the
// cache, and NACKs answered from it, allocate nothing.
func TestHotPathVideoAndNackAllocateNothing(t *testing.T) {
	r, rt, src, mc := hotPathFixture(t)
	rte := rt.bySrc[src]
	rte.media.cache.Store(newNackCache(512<<10, &r.cw))
	var rx netip.AddrPort
	for a := range rt.bySrc {
		if a != src {
			rx = a
			break
		}
	}
	pkt := videoPacket(0xcafe, 0, protocol.VideoFrame{Key: true, Start: true, Layers: 1})
	nack, err := (&rtcp.TransportLayerNack{MediaSSRC: 0xcafe, Nacks: []rtcp.NackPair{{PacketID: 1, LostPackets: 0x0003}}}).Marshal()
	require.NoError(t, err)
	seq := uint16(0)
	allocs := testing.AllocsPerRun(1000, func() {
		seq++
		binary.BigEndian.PutUint16(pkt[2:], seq)
		r.handle(rt, pkt, src, 0)
		binary.BigEndian.PutUint16(nack[12:], seq-3)
		r.handle(rt, nack, rx, 0)
		r.flush()
	})
	require.Zero(t, allocs)
	require.Positive(t, mc.sent)
	require.Positive(t, r.c.nackOut[nackSent].Load(), "NACKs answered from the cache")
	require.Positive(t, rt.bySrc[rx].media.down.resent.Load(), "retransmissions count against the receiver's leg")
}

// has reports whether ssrc is one of the sender's streams.
func (c *nackCache) has(ssrc uint32) bool {
	for i := range c.streams {
		if c.streams[i].id.Load() == 1<<32|uint64(ssrc) {
			return true
		}
	}
	return false
}

// TestNackCacheGrowsAtVideo: a sender's cache is the small audio one until
// it sends video, then the full one from the next tick; NACKs for what the
// small one stored (its voice, the first video packets) are still answered,
// byte-exact, and a flow moved to another reader starts afresh.
func TestNackCacheGrowsAtVideo(t *testing.T) {
	r, rt, src, _ := hotPathFixture(t)
	r.f.adapt.nackShareQ10 = 1 << 20 // this receiver was sent little: its share is not what is tested
	c := &control{f: r.f}
	m := rt.bySrc[src].media
	var rx netip.AddrPort
	for a := range rt.bySrc {
		if a != src {
			rx = a
			break
		}
	}
	send := func(pkt []byte, seq uint16) {
		binary.BigEndian.PutUint16(pkt[2:], seq)
		r.handle(rt, pkt, src, 0)
		r.flush()
		r.batchNow = 0
	}
	audio := append([]byte(nil), audioPacket...)
	send(audio, 1)
	c.ensureCache(m)
	small := m.cache.Load()
	require.NotNil(t, small)
	require.False(t, small.full)
	require.Len(t, small.arena, nackAudioBytes)
	require.Len(t, small.streams[0].entries, nackAudioIndex)
	for seq := uint16(2); seq <= 10; seq++ {
		send(audio, seq)
	}
	c.ensureCache(m)
	require.Same(t, small, m.cache.Load(), "no video: the audio cache stays")

	video := videoPacket(0xcafe, 0, protocol.VideoFrame{Key: true, Start: true, Layers: 1})
	send(video, 500) // stored in the audio cache, before the tick
	c.ensureCache(m)
	full := m.cache.Load()
	require.True(t, full.full)
	require.Len(t, full.arena, DefaultAdapt().NackCacheBytes)
	require.Len(t, full.streams[0].entries, nackIndex)
	require.Same(t, small, m.cachePrev.Load())
	send(video, 501) // stored in the full cache
	c.ensureCache(m)
	require.Same(t, full, m.cache.Load(), "the full cache stays")

	nack := func(ssrc uint32, seq uint16) nackOutcome {
		var before [numNackOutcomes]uint64
		for o := range before {
			before[o] = r.c.nackOut[o].Load()
		}
		b, err := (&rtcp.TransportLayerNack{MediaSSRC: ssrc, Nacks: []rtcp.NackPair{{PacketID: seq}}}).Marshal()
		require.NoError(t, err)
		r.handle(rt, b, rx, 0)
		r.flush()
		r.batchNow = 0
		for o := range r.c.nackOut {
			if r.c.nackOut[o].Load() != before[o] {
				return nackOutcome(o)
			}
		}
		t.Fatalf("NACK for %x/%d had no outcome", ssrc, seq)
		return 0
	}
	require.Equal(t, nackSent, nack(0xdeadbeef, 5), "voice stored in the audio cache")
	require.Equal(t, nackSent, nack(0xcafe, 500), "the first video packet, stored in the audio cache")
	require.Equal(t, nackSent, nack(0xcafe, 501), "video stored in the full cache")
	require.Equal(t, nackMiss, nack(0xcafe, 502), "never sent")
	dst := make([]byte, maxDatagram)
	binary.BigEndian.PutUint16(video[2:], 500)
	n, out := small.resend(dst, 0xcafe, 500, 0, nil, 0)
	require.Equal(t, nackSent, out)
	require.Equal(t, video, dst[:n], "byte-exact")

	// The flow moves to another reader: a new cache written by it, full
	// (the sender sends video), and nothing of the old reader's answered.
	var other cacheWriter
	m.cacheFor.Store(&other)
	c.ensureCache(m)
	require.Same(t, &other, m.cache.Load().writer)
	require.True(t, m.cache.Load().full)
	require.Nil(t, m.cachePrev.Load())
}
