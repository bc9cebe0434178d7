package protocol

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestClassify(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want PacketKind
	}{
		{"empty", nil, KindUnknown},
		{
			"stun binding request",
			[]byte{
				0x00, 0x01, 0x00, 0x00, // Binding request, length 0
				0x21, 0x12, 0xa4, 0x42, // magic cookie
				0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, // transaction id
			},
			KindSTUN,
		},
		{
			"stun success response",
			[]byte{
				0x01, 0x01, 0x00, 0x00, // Binding success, length 0
				0x21, 0x12, 0xa4, 0x42, // magic cookie
				0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, // transaction id
			},
			KindSTUN,
		},
		{
			"stun first byte 3",
			[]byte{
				0x03, 0x11, 0x00, 0x00, // type with top bits 0b00000011
				0x21, 0x12, 0xa4, 0x42, // magic cookie
				0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // transaction id
			},
			KindSTUN,
		},
		{
			"stun header truncated",
			[]byte{
				0x00, 0x01, 0x00, 0x00, // Binding request
				0x21, 0x12, 0xa4, 0x42, // magic cookie
				0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, // 11 of 12 id bytes
			},
			KindUnknown,
		},
		{
			"stun without magic cookie (RFC 3489)",
			[]byte{
				0x00, 0x01, 0x00, 0x00, // Binding request
				0x21, 0x12, 0xa4, 0x43, // not the cookie
				0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c,
			},
			KindUnknown,
		},
		{"first byte 4 (reserved)", append([]byte{0x04}, make([]byte, 23)...), KindUnknown},
		{"first byte 20 (DTLS)", append([]byte{0x16, 0xfe, 0xfd}, make([]byte, 30)...), KindUnknown},
		{"first byte 64 (TURN channel)", append([]byte{0x40, 0x00, 0x00, 0x10}, make([]byte, 16)...), KindUnknown},
		{
			"rtp opus",
			[]byte{
				0x80, 0x6f, 0x12, 0x34, // V=2, M=0 PT=111, seq 0x1234
				0x00, 0x00, 0x03, 0xc0, // timestamp
				0xde, 0xad, 0xbe, 0xef, // SSRC
				0xaa, // payload
			},
			KindRTP,
		},
		{
			"rtp header only",
			[]byte{
				0x80, 0x60, 0x00, 0x01, // V=2, PT=96
				0x00, 0x00, 0x00, 0x00, // timestamp
				0x00, 0x00, 0x00, 0x01, // SSRC
			},
			KindRTP,
		},
		{
			"rtp first byte 191 (P, X, CC=15)",
			[]byte{
				0xbf, 0xe0, 0x00, 0x01, // V=2 P X CC=15, M=1 PT=96
				0x00, 0x00, 0x00, 0x00, // timestamp
				0x00, 0x00, 0x00, 0x01, // SSRC (rest is the parser's business)
			},
			KindRTP,
		},
		{
			"rtp marker with PT 127 (second byte 255)",
			[]byte{
				0x80, 0xff, 0x00, 0x01, // M=1 PT=127: outside 192..223, so RTP
				0x00, 0x00, 0x00, 0x00,
				0x00, 0x00, 0x00, 0x01,
			},
			KindRTP,
		},
		{
			"rtp truncated",
			[]byte{
				0x80, 0x6f, 0x12, 0x34, // V=2 PT=111
				0x00, 0x00, 0x03, 0xc0, // timestamp
				0xde, 0xad, 0xbe, // 3 of 4 SSRC bytes
			},
			KindUnknown,
		},
		{"rtp one byte", []byte{0x80}, KindUnknown},
		{
			"rtcp receiver report",
			[]byte{
				0x80, 0xc9, 0x00, 0x01, // V=2 RC=0, PT=201 RR, length 1
				0x00, 0x00, 0x00, 0x01, // sender SSRC
			},
			KindRTCP,
		},
		{
			"rtcp sender report (200)",
			append([]byte{
				0x80, 0xc8, 0x00, 0x06, // V=2, PT=200 SR, length 6
				0x00, 0x00, 0x00, 0x01, // sender SSRC
			}, make([]byte, 20)...),
			KindRTCP,
		},
		{
			"rtcp app CRLY",
			[]byte{
				0x87, 0xcc, 0x00, 0x02, // V=2 subtype 7, PT=204 APP, length 2
				0x00, 0x00, 0x00, 0x00, // SSRC
				0x43, 0x52, 0x4c, 0x59, // "CRLY"
			},
			KindRTCP,
		},
		{
			"rtcp second byte 192 (lowest)",
			[]byte{0x80, 0xc0, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01},
			KindRTCP,
		},
		{
			"rtcp second byte 223 (highest)",
			[]byte{0x80, 0xdf, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01},
			KindRTCP,
		},
		{
			"rtcp truncated",
			[]byte{0x80, 0xc9, 0x00, 0x01, 0x00, 0x00, 0x00}, // 7 bytes
			KindUnknown,
		},
		{
			"second byte 224 is RTP (M=1 PT=96)",
			[]byte{
				0x80, 0xe0, 0x00, 0x01,
				0x00, 0x00, 0x00, 0x00,
				0x00, 0x00, 0x00, 0x01,
			},
			KindRTP,
		},
		{"first byte 192 (version 3)", append([]byte{0xc0, 0xc9}, make([]byte, 10)...), KindUnknown},
		{"first byte 127 (version 1)", append([]byte{0x7f, 0x60}, make([]byte, 10)...), KindUnknown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, Classify(tt.in))
		})
	}
}

func TestClassifyAllocs(t *testing.T) {
	pkts := [][]byte{
		{0x80, 0x6f, 0x12, 0x34, 0, 0, 0, 0, 0, 0, 0, 1},
		{0x80, 0xc9, 0x00, 0x01, 0, 0, 0, 1},
		{0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
		{0x16},
	}
	var sink PacketKind
	allocs := testing.AllocsPerRun(100, func() {
		for _, p := range pkts {
			sink += Classify(p)
		}
	})
	require.Zero(t, allocs)
	_ = sink
}

func TestPacketKindString(t *testing.T) {
	require.Equal(t, "unknown", KindUnknown.String())
	require.Equal(t, "stun", KindSTUN.String())
	require.Equal(t, "rtp", KindRTP.String())
	require.Equal(t, "rtcp", KindRTCP.String())
	require.Equal(t, "unknown", PacketKind(200).String())
}

func FuzzClassify(f *testing.F) {
	f.Add([]byte{0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12})
	f.Add([]byte{0x80, 0x6f, 0x12, 0x34, 0, 0, 3, 0xc0, 0xde, 0xad, 0xbe, 0xef})
	f.Add([]byte{0x80, 0xc9, 0x00, 0x01, 0, 0, 0, 1})
	f.Add([]byte{0x80})
	f.Fuzz(func(t *testing.T, b []byte) {
		k := Classify(b)
		switch k {
		case KindSTUN:
			if len(b) < 20 || b[0] > 3 {
				t.Fatalf("STUN for %x", b)
			}
		case KindRTP:
			if len(b) < 12 || b[0]>>6 != 2 || (b[1] >= 192 && b[1] <= 223) {
				t.Fatalf("RTP for %x", b)
			}
			// Every RTP datagram Parse accepts, Classify calls RTP.
		case KindRTCP:
			if len(b) < 8 || b[0]>>6 != 2 || b[1] < 192 || b[1] > 223 {
				t.Fatalf("RTCP for %x", b)
			}
		case KindUnknown:
			var h RTPHeader
			if h.Parse(b) == nil && (b[1] < 192 || b[1] > 223) {
				t.Fatalf("unknown for a parsable RTP packet %x", b)
			}
		default:
			t.Fatalf("kind %d", k)
		}
	})
}
