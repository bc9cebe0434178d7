package protocol

import (
	"bytes"
	"errors"
	"testing"

	"github.com/pion/rtp"
	"github.com/stretchr/testify/require"
)

// rtpWant is what a test expects Parse to read.
type rtpWant struct {
	Padding, Extension, Marker bool
	CSRCs                      []uint32
	PayloadType                uint8
	SequenceNumber             uint16
	Timestamp                  uint32
	SSRC                       uint32
	HeaderLen, PaddingLen      int
	ExtProfile                 uint16
	Payload                    []byte
	Exts                       map[uint8][]byte // every id ExtensionByID finds
}

// rtpGot reads back everything a parsed header shows through its API.
func rtpGot(h *RTPHeader) rtpWant {
	g := rtpWant{
		Padding: h.Padding, Extension: h.Extension, Marker: h.Marker,
		PayloadType: h.PayloadType, SequenceNumber: h.SequenceNumber, Timestamp: h.Timestamp,
		SSRC: h.SSRC, HeaderLen: h.HeaderLen, PaddingLen: h.PaddingLen, ExtProfile: h.ExtProfile,
		Payload: h.Payload(),
	}
	for i := range int(h.CSRCCount) {
		g.CSRCs = append(g.CSRCs, h.CSRC(i))
	}
	for id := range 256 {
		if d, ok := h.ExtensionByID(uint8(id)); ok {
			if g.Exts == nil {
				g.Exts = map[uint8][]byte{}
			}
			g.Exts[uint8(id)] = d
		}
	}
	return g
}

var rtpParseTests = []struct {
	name string
	in   []byte
	want rtpWant
	err  error
}{
	{
		name: "fixed header only",
		in: []byte{
			0x80, 0x60, 0x00, 0x01, // V=2, PT=96, seq 1
			0x00, 0x00, 0x00, 0x02, // timestamp 2
			0x00, 0x00, 0x00, 0x03, // SSRC 3
		},
		want: rtpWant{PayloadType: 96, SequenceNumber: 1, Timestamp: 2, SSRC: 3, HeaderLen: 12, Payload: []byte{}},
	},
	{
		name: "opus with audio level, one-byte extension",
		in: []byte{
			0x90, 0x6f, 0x12, 0x34, // V=2 X, PT=111, seq 0x1234
			0x00, 0x00, 0x03, 0xc0, // timestamp 960
			0xde, 0xad, 0xbe, 0xef, // SSRC
			0xbe, 0xde, 0x00, 0x01, // profile 0xBEDE, 1 word
			0x10, 0x9e, 0x00, 0x00, // id 1 len 0: V=1 level 30; 2 bytes padding
			0xca, 0xfe, // payload (encrypted)
		},
		want: rtpWant{
			Extension: true, PayloadType: 111, SequenceNumber: 0x1234, Timestamp: 960, SSRC: 0xdeadbeef,
			HeaderLen: 20, ExtProfile: 0xBEDE, Payload: []byte{0xca, 0xfe},
			Exts: map[uint8][]byte{1: {0x9e}},
		},
	},
	{
		name: "video with frame and abs-send-time extensions",
		in: []byte{
			0x90, 0x60, 0x00, 0x07, // V=2 X, PT=96, seq 7
			0x00, 0x01, 0x5f, 0x90, // timestamp 90000
			0xca, 0xfe, 0x00, 0x01, // SSRC
			0xbe, 0xde, 0x00, 0x02, // profile 0xBEDE, 2 words
			0x20, 0xc5, // id 2 len 0: K S, 2 layers, layer 1
			0x32, 0x2a, 0x00, 0x00, // id 3 len 2: abs-send-time 10.5 s
			0x00, 0x00, // padding
			0x01, 0x02, 0x03, // payload (encrypted)
		},
		want: rtpWant{
			Extension: true, PayloadType: 96, SequenceNumber: 7, Timestamp: 90000, SSRC: 0xcafe0001,
			HeaderLen: 24, ExtProfile: 0xBEDE, Payload: []byte{0x01, 0x02, 0x03},
			Exts: map[uint8][]byte{2: {0xc5}, 3: {0x2a, 0x00, 0x00}},
		},
	},
	{
		name: "audio with level, rollover counter and abs-send-time",
		in: append(append([]byte{}, rolloverExample...),
			0xca, 0xfe, // payload (encrypted)
		),
		want: rtpWant{
			Extension: true, PayloadType: 111, SequenceNumber: 10, Timestamp: 960, SSRC: 0xdeadbeef,
			HeaderLen: 24, ExtProfile: 0xBEDE, Payload: []byte{0xca, 0xfe},
			Exts: map[uint8][]byte{1: {0x9e}, 3: {0x2a, 0x00, 0x00}, 4: {0x01}},
		},
	},
	{
		name: "marker and two CSRCs",
		in: []byte{
			0x82, 0xe0, 0xff, 0xff, // V=2 CC=2, M=1 PT=96, seq 65535
			0xff, 0xff, 0xff, 0xff, // timestamp
			0x00, 0x00, 0x00, 0x0a, // SSRC 10
			0x00, 0x00, 0x00, 0x0b, // CSRC 11
			0x00, 0x00, 0x00, 0x0c, // CSRC 12
			0x01, // payload
		},
		want: rtpWant{
			Marker: true, CSRCs: []uint32{11, 12}, PayloadType: 96, SequenceNumber: 65535,
			Timestamp: 0xffffffff, SSRC: 10, HeaderLen: 20, Payload: []byte{0x01},
		},
	},
	{
		name: "padding",
		in: []byte{
			0xa0, 0x60, 0x00, 0x01, // V=2 P, PT=96
			0x00, 0x00, 0x00, 0x02,
			0x00, 0x00, 0x00, 0x03,
			0x01, 0x02, 0x03, // payload
			0x00, 0x00, 0x00, 0x04, // 4 bytes padding, count last
		},
		want: rtpWant{
			Padding: true, PayloadType: 96, SequenceNumber: 1, Timestamp: 2, SSRC: 3,
			HeaderLen: 12, PaddingLen: 4, Payload: []byte{0x01, 0x02, 0x03},
		},
	},
	{
		name: "padding is the whole payload",
		in: []byte{
			0xa0, 0x60, 0x00, 0x01, // V=2 P
			0x00, 0x00, 0x00, 0x02,
			0x00, 0x00, 0x00, 0x03,
			0x00, 0x02, // 2 bytes padding
		},
		want: rtpWant{
			Padding: true, PayloadType: 96, SequenceNumber: 1, Timestamp: 2, SSRC: 3,
			HeaderLen: 12, PaddingLen: 2, Payload: []byte{},
		},
	},
	{
		name: "one-byte elements, padding between, id 15 stops",
		in: []byte{
			0x90, 0x60, 0x00, 0x01, // V=2 X
			0x00, 0x00, 0x00, 0x02,
			0x00, 0x00, 0x00, 0x03,
			0xbe, 0xde, 0x00, 0x03, // profile 0xBEDE, 3 words
			0x21, 0xaa, 0xbb, // id 2 len 1: aa bb
			0x00,                   // padding
			0x33, 0x01, 0x02, 0x03, // id 3 len 3: 01 02 03 04 ...
			0x04, 0xf0, // ... 04; id 15: stop
			0x41, 0xcc, // id 4 after the stop: ignored
		},
		want: rtpWant{
			Extension: true, PayloadType: 96, SequenceNumber: 1, Timestamp: 2, SSRC: 3,
			HeaderLen: 28, ExtProfile: 0xBEDE, Payload: []byte{},
			Exts: map[uint8][]byte{2: {0xaa, 0xbb}, 3: {0x01, 0x02, 0x03, 0x04}},
		},
	},
	{
		name: "one-byte element with id 0 and a length stops the walk",
		in: []byte{
			0x90, 0x60, 0x00, 0x01, // V=2 X
			0x00, 0x00, 0x00, 0x02,
			0x00, 0x00, 0x00, 0x03,
			0xbe, 0xde, 0x00, 0x01, // profile 0xBEDE, 1 word
			0x10, 0x05, 0x03, 0x11, // id 1: 05; id 0 len 3: stop
		},
		want: rtpWant{
			Extension: true, PayloadType: 96, SequenceNumber: 1, Timestamp: 2, SSRC: 3,
			HeaderLen: 20, ExtProfile: 0xBEDE, Payload: []byte{},
			Exts: map[uint8][]byte{1: {0x05}},
		},
	},
	{
		name: "repeated id: the first counts",
		in: []byte{
			0x90, 0x60, 0x00, 0x01, // V=2 X
			0x00, 0x00, 0x00, 0x02,
			0x00, 0x00, 0x00, 0x03,
			0xbe, 0xde, 0x00, 0x01, // profile 0xBEDE, 1 word
			0x10, 0x01, 0x10, 0x02, // id 1: 01; id 1: 02
		},
		want: rtpWant{
			Extension: true, PayloadType: 96, SequenceNumber: 1, Timestamp: 2, SSRC: 3,
			HeaderLen: 20, ExtProfile: 0xBEDE, Payload: []byte{},
			Exts: map[uint8][]byte{1: {0x01}},
		},
	},
	{
		name: "two-byte elements",
		in: []byte{
			0x90, 0x60, 0x00, 0x01, // V=2 X
			0x00, 0x00, 0x00, 0x02,
			0x00, 0x00, 0x00, 0x03,
			0x10, 0x00, 0x00, 0x02, // profile 0x1000, 2 words
			0x03, 0x00, // id 3, empty
			0xc8, 0x03, 0x01, 0x02, 0x03, // id 200 len 3
			0x00, // padding
			0x99, // payload
		},
		want: rtpWant{
			Extension: true, PayloadType: 96, SequenceNumber: 1, Timestamp: 2, SSRC: 3,
			HeaderLen: 24, ExtProfile: 0x1000, Payload: []byte{0x99},
			Exts: map[uint8][]byte{3: {}, 200: {0x01, 0x02, 0x03}},
		},
	},
	{
		name: "two-byte elements with appbits",
		in: []byte{
			0x90, 0x60, 0x00, 0x01, // V=2 X
			0x00, 0x00, 0x00, 0x02,
			0x00, 0x00, 0x00, 0x03,
			0x10, 0x0f, 0x00, 0x01, // profile 0x100F (appbits 0xF), 1 word
			0x01, 0x01, 0x7f, 0x00, // id 1 len 1: V=0 level 127; padding
		},
		want: rtpWant{
			Extension: true, PayloadType: 96, SequenceNumber: 1, Timestamp: 2, SSRC: 3,
			HeaderLen: 20, ExtProfile: 0x100F, Payload: []byte{},
			Exts: map[uint8][]byte{1: {0x7f}},
		},
	},
	{
		name: "RFC 3550 extension is opaque",
		in: []byte{
			0x90, 0x60, 0x00, 0x01, // V=2 X
			0x00, 0x00, 0x00, 0x02,
			0x00, 0x00, 0x00, 0x03,
			0xab, 0xcd, 0x00, 0x01, // profile 0xABCD, 1 word
			0x10, 0x9e, 0x00, 0x00, // would be id 1 under 0xBEDE
		},
		want: rtpWant{
			Extension: true, PayloadType: 96, SequenceNumber: 1, Timestamp: 2, SSRC: 3,
			HeaderLen: 20, ExtProfile: 0xABCD, Payload: []byte{},
		},
	},
	{
		name: "empty one-byte block",
		in: []byte{
			0x90, 0x60, 0x00, 0x01, // V=2 X
			0x00, 0x00, 0x00, 0x02,
			0x00, 0x00, 0x00, 0x03,
			0xbe, 0xde, 0x00, 0x00, // profile 0xBEDE, 0 words
		},
		want: rtpWant{
			Extension: true, PayloadType: 96, SequenceNumber: 1, Timestamp: 2, SSRC: 3,
			HeaderLen: 16, ExtProfile: 0xBEDE, Payload: []byte{},
		},
	},
	{
		name: "too short",
		in:   []byte{0x80, 0x60, 0x00, 0x01, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00}, // 11 bytes
		err:  ErrRTPTooShort,
	},
	{
		name: "version 1",
		in:   []byte{0x40, 0x60, 0x00, 0x01, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x03},
		err:  ErrRTPVersion,
	},
	{
		name: "version 0 (STUN)",
		in:   []byte{0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12},
		err:  ErrRTPVersion,
	},
	{
		name: "CSRC list past the end",
		in: []byte{
			0x82, 0x60, 0x00, 0x01, // CC=2
			0x00, 0x00, 0x00, 0x02,
			0x00, 0x00, 0x00, 0x03,
			0x00, 0x00, 0x00, 0x0b, // one CSRC only
		},
		err: ErrRTPTooShort,
	},
	{
		name: "extension header past the end",
		in: []byte{
			0x90, 0x60, 0x00, 0x01, // X
			0x00, 0x00, 0x00, 0x02,
			0x00, 0x00, 0x00, 0x03,
			0xbe, 0xde, 0x00, // 3 of 4 bytes
		},
		err: ErrRTPTooShort,
	},
	{
		name: "extension block past the end",
		in: []byte{
			0x90, 0x60, 0x00, 0x01, // X
			0x00, 0x00, 0x00, 0x02,
			0x00, 0x00, 0x00, 0x03,
			0xbe, 0xde, 0x00, 0x02, // 2 words announced
			0x10, 0x9e, 0x00, 0x00, // 1 word present
		},
		err: ErrRTPTooShort,
	},
	{
		name: "one-byte element past the block",
		in: []byte{
			0x90, 0x60, 0x00, 0x01, // X
			0x00, 0x00, 0x00, 0x02,
			0x00, 0x00, 0x00, 0x03,
			0xbe, 0xde, 0x00, 0x01, // 1 word
			0x00, 0x00, 0x13, 0x01, // id 1 len 4, 1 byte left
			0x02, 0x03, 0x04, 0x05, // payload, not extension
		},
		err: ErrRTPExtension,
	},
	{
		name: "two-byte element without its length",
		in: []byte{
			0x90, 0x60, 0x00, 0x01, // X
			0x00, 0x00, 0x00, 0x02,
			0x00, 0x00, 0x00, 0x03,
			0x10, 0x00, 0x00, 0x01, // profile 0x1000, 1 word
			0x00, 0x00, 0x00, 0x05, // padding, then id 5 at the very end
		},
		err: ErrRTPExtension,
	},
	{
		name: "two-byte element past the block",
		in: []byte{
			0x90, 0x60, 0x00, 0x01, // X
			0x00, 0x00, 0x00, 0x02,
			0x00, 0x00, 0x00, 0x03,
			0x10, 0x00, 0x00, 0x01, // profile 0x1000, 1 word
			0x05, 0x03, 0x01, 0x02, // id 5 len 3, 2 bytes left
		},
		err: ErrRTPExtension,
	},
	{
		name: "padding bit without bytes",
		in: []byte{
			0xa0, 0x60, 0x00, 0x01, // P
			0x00, 0x00, 0x00, 0x02,
			0x00, 0x00, 0x00, 0x03,
		},
		err: ErrRTPPadding,
	},
	{
		name: "padding count zero",
		in: []byte{
			0xa0, 0x60, 0x00, 0x01, // P
			0x00, 0x00, 0x00, 0x02,
			0x00, 0x00, 0x00, 0x03,
			0x01, 0x00, // count 0
		},
		err: ErrRTPPadding,
	},
	{
		name: "padding count larger than the payload",
		in: []byte{
			0xa0, 0x60, 0x00, 0x01, // P
			0x00, 0x00, 0x00, 0x02,
			0x00, 0x00, 0x00, 0x03,
			0x01, 0x03, // count 3, 2 bytes after the header
		},
		err: ErrRTPPadding,
	},
}

func TestRTPHeaderParse(t *testing.T) {
	for _, tt := range rtpParseTests {
		t.Run(tt.name, func(t *testing.T) {
			var h RTPHeader
			err := h.Parse(tt.in)
			if tt.err != nil {
				require.ErrorIs(t, err, tt.err)
				require.Nil(t, h.Payload(), "a failed Parse leaves no view")
				_, ok := h.ExtensionByID(1)
				require.False(t, ok)
				return
			}
			require.NoError(t, err)
			require.Equal(t, uint8(2), h.Version)
			require.Equal(t, tt.want, rtpGot(&h))
		})
	}
}

// TestRTPHeaderAgreesWithPionOnTable requires github.com/pion/rtp to read
// the table's bytes the same way.
func TestRTPHeaderAgreesWithPionOnTable(t *testing.T) {
	for _, tt := range rtpParseTests {
		if tt.in[0]>>6 != 2 || rtpHasAppBits(tt.in) {
			continue // pion reads any version; it treats 0x100F as RFC 3550
		}
		t.Run(tt.name, func(t *testing.T) {
			rtpComparePion(t, tt.in)
		})
	}
}

// rtpComparePion parses b with both parsers and requires the same verdict
// and, on success, the same fields, payload and extension elements.
func rtpComparePion(t testing.TB, b []byte) {
	t.Helper()
	var h RTPHeader
	var p rtp.Packet
	errOurs, errPion := h.Parse(b), p.Unmarshal(b)
	if (errOurs == nil) != (errPion == nil) {
		t.Fatalf("verdicts differ on %x: ours %v, pion %v", b, errOurs, errPion)
	}
	if errOurs != nil {
		return
	}
	require.Equal(t, p.Version, h.Version)
	require.Equal(t, p.Padding, h.Padding)
	require.Equal(t, p.Extension, h.Extension)
	require.Equal(t, p.Marker, h.Marker)
	require.Equal(t, p.PayloadType, h.PayloadType)
	require.Equal(t, p.SequenceNumber, h.SequenceNumber)
	require.Equal(t, p.Timestamp, h.Timestamp)
	require.Equal(t, p.SSRC, h.SSRC)
	require.Len(t, p.CSRC, int(h.CSRCCount))
	for i, c := range p.CSRC {
		require.Equal(t, c, h.CSRC(i))
	}
	require.Equal(t, int(p.PaddingSize), h.PaddingLen)
	require.Equal(t, p.Payload, h.Payload())
	if !h.Extension {
		return
	}
	require.Equal(t, p.ExtensionProfile, h.ExtProfile)
	if h.ExtProfile != RTPExtProfileOneByte && h.ExtProfile != RTPExtProfileTwoByte {
		return
	}
	for id := 1; id < 256; id++ {
		got, ok := h.ExtensionByID(uint8(id))
		want := p.GetExtension(uint8(id))
		require.Equal(t, want != nil, ok, "id %d", id)
		require.Equal(t, want, got, "id %d", id)
	}
}

// TestRTPHeaderAgreesWithPion marshals packets with pion/rtp and requires the
// view to read the same fields and extension bytes.
func TestRTPHeaderAgreesWithPion(t *testing.T) {
	type ext struct {
		id   uint8
		data []byte
	}
	tests := []struct {
		name    string
		profile uint16 // 0: let SetExtension choose
		exts    []ext
		csrc    []uint32
		padding byte
		payload []byte
	}{
		{name: "plain", payload: []byte{1, 2, 3}},
		{name: "audio level", exts: []ext{{1, []byte{0x9e}}}, payload: []byte{0xfc, 0xff, 0xfe}},
		{
			name: "one-byte several",
			exts: []ext{{1, []byte{0x05}}, {3, []byte{1, 2, 3}}, {14, bytes.Repeat([]byte{7}, 16)}},
		},
		{name: "two-byte by size", exts: []ext{{5, bytes.Repeat([]byte{9}, 17)}, {200, []byte{1}}}},
		{
			name: "two-byte profile, empty element", profile: rtp.ExtensionProfileTwoByte,
			exts: []ext{{1, []byte{}}, {2, []byte{0xaa}}, {255, bytes.Repeat([]byte{3}, 255)}},
		},
		{name: "csrcs", csrc: []uint32{1, 2, 0xffffffff}, payload: []byte{4}},
		{name: "csrcs, extension, padding", csrc: []uint32{7}, exts: []ext{{1, []byte{0x80}}}, padding: 5, payload: []byte{1}},
		{name: "padding only", padding: 255},
		{name: "fifteen csrcs", csrc: []uint32{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := rtp.Packet{
				Header: rtp.Header{
					Version: 2, Marker: true, PayloadType: 111, SequenceNumber: 4242,
					Timestamp: 0x01020304, SSRC: 0xcafebabe, CSRC: tt.csrc,
					Padding: tt.padding > 0, PaddingSize: tt.padding,
				},
				Payload: tt.payload,
			}
			if tt.profile != 0 {
				p.Header.Extension, p.Header.ExtensionProfile = true, tt.profile
			}
			for _, e := range tt.exts {
				require.NoError(t, p.Header.SetExtension(e.id, e.data))
			}
			raw, err := p.Marshal()
			require.NoError(t, err)

			var h RTPHeader
			require.NoError(t, h.Parse(raw))
			require.Equal(t, p.Marker, h.Marker)
			require.Equal(t, p.PayloadType, h.PayloadType)
			require.Equal(t, p.SequenceNumber, h.SequenceNumber)
			require.Equal(t, p.Timestamp, h.Timestamp)
			require.Equal(t, p.SSRC, h.SSRC)
			require.Equal(t, len(tt.csrc), int(h.CSRCCount))
			for i, c := range tt.csrc {
				require.Equal(t, c, h.CSRC(i))
			}
			require.Equal(t, int(tt.padding), h.PaddingLen)
			require.Equal(t, len(tt.payload), len(h.Payload()))
			if len(tt.payload) > 0 {
				require.Equal(t, tt.payload, h.Payload())
			}
			for _, e := range tt.exts {
				got, ok := h.ExtensionByID(e.id)
				require.True(t, ok, "id %d", e.id)
				require.Equal(t, len(e.data), len(got))
				require.True(t, bytes.Equal(e.data, got), "id %d", e.id)
			}
			rtpComparePion(t, raw)
		})
	}
}

func TestRTPHeaderAudioLevel(t *testing.T) {
	tests := []struct {
		name      string
		in        []byte
		id        uint8
		voice     bool
		level     uint8
		ok        bool
		wantBytes byte
	}{
		{
			name: "voice, -30 dBov",
			in: []byte{
				0x90, 0x6f, 0x00, 0x01, // V=2 X, PT=111
				0x00, 0x00, 0x00, 0x00,
				0x00, 0x00, 0x00, 0x01,
				0xbe, 0xde, 0x00, 0x01, // 0xBEDE, 1 word
				0x10, 0x9e, 0x00, 0x00, // id 1 len 0: V=1, level 30
			},
			id: 1, voice: true, level: 30, ok: true,
		},
		{
			name: "silence on id 3",
			in: []byte{
				0x90, 0x6f, 0x00, 0x01, // V=2 X
				0x00, 0x00, 0x00, 0x00,
				0x00, 0x00, 0x00, 0x01,
				0xbe, 0xde, 0x00, 0x01, // 0xBEDE, 1 word
				0x30, 0x7f, 0x00, 0x00, // id 3 len 0: V=0, level 127
			},
			id: 3, voice: false, level: 127, ok: true,
		},
		{
			name: "absent id",
			in: []byte{
				0x90, 0x6f, 0x00, 0x01, // V=2 X
				0x00, 0x00, 0x00, 0x00,
				0x00, 0x00, 0x00, 0x01,
				0xbe, 0xde, 0x00, 0x01, // 0xBEDE, 1 word
				0x30, 0x7f, 0x00, 0x00, // id 3
			},
			id: 1,
		},
		{
			name: "empty two-byte element",
			in: []byte{
				0x90, 0x6f, 0x00, 0x01, // V=2 X
				0x00, 0x00, 0x00, 0x00,
				0x00, 0x00, 0x00, 0x01,
				0x10, 0x00, 0x00, 0x01, // 0x1000, 1 word
				0x01, 0x00, 0x00, 0x00, // id 1 len 0
			},
			id: 1,
		},
		{
			name: "no extension",
			in:   []byte{0x80, 0x6f, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01},
			id:   1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h RTPHeader
			require.NoError(t, h.Parse(tt.in))
			voice, level, ok := h.AudioLevel(tt.id)
			require.Equal(t, tt.ok, ok)
			require.Equal(t, tt.voice, voice)
			require.Equal(t, tt.level, level)
			if ok {
				require.Equal(t, AudioLevelByte(voice, level), tt.in[17])
			}
		})
	}
	require.Equal(t, byte(0xff), AudioLevelByte(true, 200), "clamped to 127")
	require.Equal(t, byte(0x00), AudioLevelByte(false, 0))
}

func TestRTPHeaderZeroValue(t *testing.T) {
	var h RTPHeader
	require.Nil(t, h.Payload())
	_, ok := h.ExtensionByID(1)
	require.False(t, ok)
	_, _, ok = h.AudioLevel(1)
	require.False(t, ok)
	require.Panics(t, func() { h.CSRC(0) })
}

func TestRTPHeaderAllocs(t *testing.T) {
	var good, bad [][]byte
	for _, tt := range rtpParseTests {
		if tt.err == nil {
			good = append(good, tt.in)
		} else {
			bad = append(bad, tt.in)
		}
	}
	var h RTPHeader
	var sink int
	allocs := testing.AllocsPerRun(100, func() {
		for _, b := range good {
			if err := h.Parse(b); err != nil {
				panic(err)
			}
			d, _ := h.ExtensionByID(1)
			_, level, _ := h.AudioLevel(DefaultAudioLevelExtensionID)
			sink += len(d) + int(level) + len(h.Payload())
		}
		for _, b := range bad {
			if h.Parse(b) != nil {
				sink++
			}
		}
	})
	require.Zero(t, allocs, "Parse, ExtensionByID and AudioLevel must not allocate, even on bad input")
	_ = sink
}

func BenchmarkRTPHeaderParse(b *testing.B) {
	pkt := make([]byte, 0, 1200)
	pkt = append(pkt,
		0x90, 0x6f, 0x12, 0x34, // V=2 X, PT=111
		0x00, 0x00, 0x03, 0xc0, // timestamp
		0xde, 0xad, 0xbe, 0xef, // SSRC
		0xbe, 0xde, 0x00, 0x02, // 0xBEDE, 2 words
		0x22, 0x01, 0x02, 0x03, // id 2 len 2 (e.g. transport-wide seq + 1)
		0x10, 0x9e, 0x00, 0x00, // id 1: audio level, V=1 level 30
	)
	pkt = append(pkt, make([]byte, 160)...) // an Opus frame
	var h RTPHeader
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)))
	for b.Loop() {
		if err := h.Parse(pkt); err != nil {
			b.Fatal(err)
		}
		if _, level, ok := h.AudioLevel(1); !ok || level != 30 {
			b.Fatal("no audio level")
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "packets/s")
}

func FuzzRTPHeader(f *testing.F) {
	for _, tt := range rtpParseTests {
		f.Add(tt.in)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var h RTPHeader
		if err := h.Parse(b); err != nil {
			if !errors.Is(err, ErrRTPTooShort) && !errors.Is(err, ErrRTPVersion) &&
				!errors.Is(err, ErrRTPPadding) && !errors.Is(err, ErrRTPExtension) {
				t.Fatalf("unexpected error %v", err)
			}
		} else {
			if h.HeaderLen+h.PaddingLen > len(b) || len(h.Payload()) != len(b)-h.HeaderLen-h.PaddingLen {
				t.Fatalf("payload bounds: header %d padding %d len %d", h.HeaderLen, h.PaddingLen, len(b))
			}
			if Classify(b) != KindRTP && (b[1] < 192 || b[1] > 223) {
				t.Fatalf("parsable RTP not classified as RTP: %x", b)
			}
			for id := range 256 {
				d, ok := h.ExtensionByID(uint8(id))
				if !ok {
					continue
				}
				if !rtpWithin(d, b[:h.HeaderLen]) {
					t.Fatalf("extension %d lies outside the header", id)
				}
			}
			h.AudioLevel(1)
			rtpCheckVideoFrame(t, &h)
			rtpCheckAbsSendTime(t, &h)
			rtpCheckRolloverCounter(t, &h)
		}
		// Differential: pion/rtp must reach the same verdict and fields.
		if len(b) > 0 && b[0]>>6 == 2 && !rtpHasAppBits(b) {
			rtpComparePion(t, b)
		}
	})
}

// rtpHasAppBits reports whether b declares a two-byte extension block with
// non-zero appbits (0x1001..0x100F), which pion/rtp reads as opaque.
func rtpHasAppBits(b []byte) bool {
	if len(b) < rtpFixedLen || b[0]&0x10 == 0 {
		return false
	}
	off := rtpFixedLen + 4*int(b[0]&0x0F)
	if len(b) < off+2 {
		return false
	}
	p := uint16(b[off])<<8 | uint16(b[off+1])
	return p&0xFFF0 == 0x1000 && p != 0x1000
}

// rtpWithin reports whether sub is a sub-slice of b's memory.
func rtpWithin(sub, b []byte) bool {
	if len(sub) == 0 {
		return true
	}
	for i := range b {
		if &b[i] == &sub[0] {
			return i+len(sub) <= len(b) && &b[i+len(sub)-1] == &sub[len(sub)-1]
		}
	}
	return false
}
