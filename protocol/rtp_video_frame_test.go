package protocol

import (
	"bytes"
	"testing"

	"github.com/pion/rtp"
	"github.com/stretchr/testify/require"
)

func TestRTPHeaderVideoFrame(t *testing.T) {
	for _, tt := range []struct {
		name string
		in   []byte
		id   uint8
		want VideoFrame
		ok   bool
	}{
		{
			name: "key frame start, single stream",
			in: []byte{
				0x90, 0x60, 0x00, 0x01, // V=2 X, PT=96
				0x00, 0x00, 0x00, 0x00,
				0x00, 0x00, 0x00, 0x01,
				0xbe, 0xde, 0x00, 0x01, // 0xBEDE, 1 word
				0x20, 0xc0, 0x00, 0x00, // id 2 len 0: K S, 1 layer, layer 0
			},
			id: 2, want: VideoFrame{Key: true, Start: true, Layers: 1}, ok: true,
		},
		{
			name: "end of a delta frame, layer 1 of 3",
			in: []byte{
				0x90, 0xe0, 0x00, 0x01, // V=2 X, M=1 PT=96
				0x00, 0x00, 0x00, 0x00,
				0x00, 0x00, 0x00, 0x01,
				0xbe, 0xde, 0x00, 0x01, // 0xBEDE, 1 word
				0x20, 0x29, 0x00, 0x00, // id 2 len 0: E, 3 layers, layer 1
			},
			id: 2, want: VideoFrame{End: true, Layer: 1, Layers: 3}, ok: true,
		},
		{
			name: "reserved bit ignored, id 7",
			in: []byte{
				0x90, 0x60, 0x00, 0x01, // V=2 X
				0x00, 0x00, 0x00, 0x00,
				0x00, 0x00, 0x00, 0x01,
				0xbe, 0xde, 0x00, 0x01, // 0xBEDE, 1 word
				0x70, 0xf4, 0x00, 0x00, // id 7 len 0: K S E R, 2 layers, layer 0
			},
			id: 7, want: VideoFrame{Key: true, Start: true, End: true, Layers: 2}, ok: true,
		},
		{
			name: "two-byte element",
			in: []byte{
				0x90, 0x60, 0x00, 0x01, // V=2 X
				0x00, 0x00, 0x00, 0x00,
				0x00, 0x00, 0x00, 0x01,
				0x10, 0x00, 0x00, 0x01, // 0x1000, 1 word
				0x02, 0x01, 0x4a, 0x00, // id 2 len 1: S, 3 layers, layer 2; padding
			},
			id: 2, want: VideoFrame{Start: true, Layer: 2, Layers: 3}, ok: true,
		},
		{
			name: "layer count field 3 is invalid",
			in: []byte{
				0x90, 0x60, 0x00, 0x01, // V=2 X
				0x00, 0x00, 0x00, 0x00,
				0x00, 0x00, 0x00, 0x01,
				0xbe, 0xde, 0x00, 0x01, // 0xBEDE, 1 word
				0x20, 0x8c, 0x00, 0x00, // id 2 len 0: K, "4 layers"
			},
			id: 2,
		},
		{
			name: "layer index not below the count",
			in: []byte{
				0x90, 0x60, 0x00, 0x01, // V=2 X
				0x00, 0x00, 0x00, 0x00,
				0x00, 0x00, 0x00, 0x01,
				0xbe, 0xde, 0x00, 0x01, // 0xBEDE, 1 word
				0x20, 0x06, 0x00, 0x00, // id 2 len 0: 2 layers, layer 2
			},
			id: 2,
		},
		{
			name: "two data bytes",
			in: []byte{
				0x90, 0x60, 0x00, 0x01, // V=2 X
				0x00, 0x00, 0x00, 0x00,
				0x00, 0x00, 0x00, 0x01,
				0xbe, 0xde, 0x00, 0x01, // 0xBEDE, 1 word
				0x21, 0xc0, 0x00, 0x00, // id 2 len 1: c0 00
			},
			id: 2,
		},
		{
			name: "audio only: no such element",
			in: []byte{
				0x90, 0x6f, 0x00, 0x01, // V=2 X, PT=111
				0x00, 0x00, 0x00, 0x00,
				0x00, 0x00, 0x00, 0x01,
				0xbe, 0xde, 0x00, 0x01, // 0xBEDE, 1 word
				0x10, 0x9e, 0x00, 0x00, // id 1: audio level
			},
			id: 2,
		},
		{
			name: "no extension block",
			in:   []byte{0x80, 0x60, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01},
			id:   2,
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var h RTPHeader
			require.NoError(t, h.Parse(tt.in))
			got, ok := h.VideoFrame(tt.id)
			require.Equal(t, tt.ok, ok)
			require.Equal(t, tt.want, got)
		})
	}
}

// TestVideoFrameByte: every byte that decodes encodes back, reserved bit
// cleared, and every valid frame survives the trip.
func TestVideoFrameByte(t *testing.T) {
	valid := 0
	for i := range 256 {
		v, ok := parseVideoFrame(byte(i))
		if !ok {
			require.Equal(t, VideoFrame{}, v)
			continue
		}
		valid++
		b, err := v.Byte()
		require.NoError(t, err)
		require.Equal(t, byte(i)&^vfReserved, b, "byte %#02x", i)
	}
	require.Equal(t, 16*6, valid, "8 flag combinations x reserved bit x (1+2+3) layer choices")

	for _, tt := range []struct {
		v    VideoFrame
		want byte
	}{
		{VideoFrame{Layers: 1}, 0x00},
		{VideoFrame{Key: true, Start: true, End: true, Layer: 2, Layers: 3}, 0xea},
		{VideoFrame{Start: true, Layer: 1, Layers: 2}, 0x45},
	} {
		b, err := tt.v.Byte()
		require.NoError(t, err)
		require.Equal(t, tt.want, b, "%+v", tt.v)
	}
	for _, v := range []VideoFrame{{}, {Layers: 4}, {Layer: 1, Layers: 1}, {Layer: 3, Layers: 3}, {Layer: 255, Layers: 2}} {
		_, err := v.Byte()
		require.ErrorIs(t, err, ErrRTPVideoFrame, "%+v", v)
	}
}

func TestVideoFrameRank(t *testing.T) {
	for _, tt := range []struct {
		v    VideoFrame
		rank uint8
	}{
		{VideoFrame{Layers: 1}, 2},           // a single stream is the top rung
		{VideoFrame{Layer: 0, Layers: 2}, 1}, // a two-layer split: low
		{VideoFrame{Layer: 1, Layers: 2}, 2}, // and high
		{VideoFrame{Layer: 0, Layers: 3}, 0},
		{VideoFrame{Layer: 1, Layers: 3}, 1},
		{VideoFrame{Layer: 2, Layers: 3}, 2},
		{VideoFrame{}, 2},                     // invalid: as a single stream
		{VideoFrame{Layer: 5, Layers: 2}, 2},  // invalid
		{VideoFrame{Layer: 0, Layers: 9}, 2},  // invalid
		{VideoFrame{Key: true, Layers: 1}, 2}, // flags do not matter
	} {
		require.Equal(t, tt.rank, tt.v.Rank(), "%+v", tt.v)
	}
}

// TestRTPHeaderFieldsVideo writes the README's video example with
// RTPHeaderFields and reads it back with RTPHeader and pion/rtp.
func TestRTPHeaderFieldsVideo(t *testing.T) {
	vf, err := VideoFrame{Key: true, Start: true, Layer: 1, Layers: 2}.Byte()
	require.NoError(t, err)
	ast := AbsSendTimeBytes(AbsSendTime(clusterTestAt.Truncate(64 * 1e9).Add(10_500_000_000)))
	f := RTPHeaderFields{
		PayloadType: 96, SequenceNumber: 7, Timestamp: 90000, SSRC: 0xcafe0001,
		Extensions: [MaxRTPExtensions]RTPExtension{
			{ID: DefaultVideoFrameExtensionID, Data: []byte{vf}},
			{ID: DefaultAbsSendTimeExtensionID, Data: ast[:]},
		},
	}
	want := []byte{
		0x90, 0x60, 0x00, 0x07, // V=2 X, PT=96, seq 7
		0x00, 0x01, 0x5f, 0x90, // timestamp 90000
		0xca, 0xfe, 0x00, 0x01, // SSRC
		0xbe, 0xde, 0x00, 0x02, // profile 0xBEDE, 2 words
		0x20, 0xc5, // id 2 len 0: K S, 2 layers, layer 1
		0x32, 0x2a, 0x00, 0x00, // id 3 len 2: abs-send-time 10.5 s
		0x00, 0x00, // padding
	}
	buf := make([]byte, f.MarshalSize())
	n, err := f.MarshalTo(buf)
	require.NoError(t, err)
	require.Equal(t, want, buf[:n])

	pkt := append(bytes.Clone(want), 0x01, 0x02, 0x03)
	var h RTPHeader
	require.NoError(t, h.Parse(pkt))
	v, ok := h.VideoFrame(DefaultVideoFrameExtensionID)
	require.True(t, ok)
	require.Equal(t, VideoFrame{Key: true, Start: true, Layer: 1, Layers: 2}, v)
	require.Equal(t, uint8(2), v.Rank())
	ts, ok := h.AbsSendTime(DefaultAbsSendTimeExtensionID)
	require.True(t, ok)
	require.Equal(t, uint32(0x2a0000), ts)
	_, _, ok = h.AudioLevel(DefaultAudioLevelExtensionID)
	require.False(t, ok, "video: no audio level")

	var p rtp.Packet
	require.NoError(t, p.Unmarshal(pkt))
	require.Equal(t, []byte{0xc5}, p.GetExtension(DefaultVideoFrameExtensionID))
	var pa rtp.AbsSendTimeExtension
	require.NoError(t, pa.Unmarshal(p.GetExtension(DefaultAbsSendTimeExtensionID)))
	require.Equal(t, uint64(ts), pa.Timestamp)
}

func TestRTPHeaderExtensionReadersAllocs(t *testing.T) {
	var ins [][]byte
	for _, tt := range rtpParseTests {
		if tt.err == nil {
			ins = append(ins, tt.in)
		}
	}
	var h RTPHeader
	var sink int
	allocs := testing.AllocsPerRun(100, func() {
		for _, b := range ins {
			if err := h.Parse(b); err != nil {
				panic(err)
			}
			v, _ := h.VideoFrame(DefaultVideoFrameExtensionID)
			ts, _ := h.AbsSendTime(DefaultAbsSendTimeExtensionID)
			sink += int(v.Rank()) + int(ts)
		}
	})
	require.Zero(t, allocs, "VideoFrame and AbsSendTime must not allocate")
	_ = sink
}

// rtpCheckVideoFrame checks, for a parsed packet, that VideoFrame agrees
// with the raw element under every id, and that what it accepts encodes
// back.
func rtpCheckVideoFrame(t *testing.T, h *RTPHeader) {
	t.Helper()
	for id := range 256 {
		v, ok := h.VideoFrame(uint8(id))
		d, found := h.ExtensionByID(uint8(id))
		if !found || len(d) != 1 {
			if ok {
				t.Fatalf("id %d: a video frame from %x", id, d)
			}
			continue
		}
		_, valid := parseVideoFrame(d[0])
		if ok != valid {
			t.Fatalf("id %d: byte %#02x: ok %v", id, d[0], ok)
		}
		if !ok {
			continue
		}
		b, err := v.Byte()
		if err != nil || b != d[0]&^vfReserved || v.Rank() >= MaxSimulcastLayers {
			t.Fatalf("id %d: %+v from %#02x encodes to %#02x (%v), rank %d", id, v, d[0], b, err, v.Rank())
		}
	}
}
