package protocol

import (
	"testing"
	"time"

	"github.com/pion/rtp"
	"github.com/stretchr/testify/require"
)

func TestAbsSendTime(t *testing.T) {
	for _, tt := range []struct {
		name string
		at   time.Time
		want uint32
	}{
		{"Unix epoch", time.Unix(0, 0), 0x000000},
		{"half a second", time.Unix(0, 500_000_000), 0x020000},
		{"one unit", time.Unix(0, 3815), 0x000001},                       // 2^-18 s = 3814.7 ns
		{"just under one unit", time.Unix(0, 3814), 0x000000},            // truncated
		{"63 s and the last unit", time.Unix(63, 999_999_999), 0xffffff}, // the top of the cycle
		{"64 s wraps", time.Unix(64, 0), 0x000000},
		{"10.5 s after a multiple of 64", time.Unix(64*1000+10, 500_000_000), 0x2a0000},
		{"NTP epoch (1900) is a multiple of 64 s", time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC), 0x000000},
		{"before 1970: -1 s is 63 s", time.Unix(-1, 0), 63 << 18},
		{"time zone does not matter", time.Unix(10, 250_000_000).In(time.FixedZone("x", 3600)), 10<<18 | 1<<16},
	} {
		require.Equal(t, tt.want, AbsSendTime(tt.at), tt.name)
	}
}

// TestAbsSendTimeAgreesWithPion compares with pion/rtp, which takes the
// middle bits of the NTP timestamp.
func TestAbsSendTimeAgreesWithPion(t *testing.T) {
	at := clusterTestAt
	for i := range 5000 {
		at = at.Add(time.Duration(i)*7919*time.Microsecond + time.Duration(i%1000))
		want := rtp.NewAbsSendTimeExtension(at).Timestamp & absSendTimeMask
		require.Equal(t, uint32(want), AbsSendTime(at), "at %v", at) //nolint:gosec // masked
	}
}

func TestAbsSendTimeBytes(t *testing.T) {
	require.Equal(t, [3]byte{0x2a, 0x00, 0x00}, AbsSendTimeBytes(0x2a0000))
	require.Equal(t, [3]byte{0x12, 0x34, 0x56}, AbsSendTimeBytes(0xff123456), "upper bits ignored")
}

func TestAbsSendTimeDelta(t *testing.T) {
	const unit = 3814 * time.Nanosecond // 2^-18 s, truncated
	for _, tt := range []struct {
		name string
		a, b uint32
		want time.Duration
	}{
		{"equal", 0x123456, 0x123456, 0},
		{"one unit later", 1, 0, unit},
		{"one unit earlier", 0, 1, -unit},
		{"half a second", 0x020000, 0, 500 * time.Millisecond},
		{"across the wrap", 0x000100, 0xffff00, 1953125 * time.Nanosecond},            // 512 units, exact
		{"backwards across the wrap", 0xffff00, 0x000100, -1953125 * time.Nanosecond}, // likewise
		{"32 s is the largest forward step", 0x800000, 0, 32 * time.Second},           // ties go forward
		{"past 32 s it is backwards", 0x800001, 0, -31_999_996_185 * time.Nanosecond}, // 2^23-1 units back, truncated
		{"the same, wrapped", 0x000000, 0x800000, 32 * time.Second},                   // (0 - 2^23) mod 2^24 = 2^23
		{"upper bits ignored", 0xff000010, 0xee000000, 61035 * time.Nanosecond},       // 16 units, truncated
		{"one second", 10 << 18, 9 << 18, time.Second},                                // whole seconds are exact
		{"sixty-three seconds back is one forward", 0 << 18, 63 << 18, time.Second},
	} {
		require.Equal(t, tt.want, AbsSendTimeDelta(tt.a, tt.b), tt.name)
	}
	// Every difference lies in (-32 s, 32 s] and is antisymmetric except at
	// the tie.
	for _, d := range []uint32{0, 1, 2, 1000, 1 << 22, 1<<23 - 1, 1 << 23, 1<<23 + 1, 1<<24 - 1} {
		for _, b := range []uint32{0, 5, 0x7fffff, 0xfffffe} {
			got := AbsSendTimeDelta(b+d, b)
			require.True(t, got > -32*time.Second && got <= 32*time.Second, "%d: %v", d, got)
			if d != 1<<23 {
				require.Equal(t, -got, AbsSendTimeDelta(b, b+d))
			}
		}
	}
}

func TestRTPHeaderAbsSendTime(t *testing.T) {
	for _, tt := range []struct {
		name string
		in   []byte
		id   uint8
		want uint32
		ok   bool
	}{
		{
			name: "one-byte element",
			in: []byte{
				0x90, 0x60, 0x00, 0x01, // V=2 X, PT=96
				0x00, 0x00, 0x00, 0x00,
				0x00, 0x00, 0x00, 0x01,
				0xbe, 0xde, 0x00, 0x01, // 0xBEDE, 1 word
				0x32, 0xab, 0xcd, 0xef, // id 3 len 2: 0xabcdef
			},
			id: 3, want: 0xabcdef, ok: true,
		},
		{
			name: "two-byte element, another id",
			in: []byte{
				0x90, 0x60, 0x00, 0x01, // V=2 X
				0x00, 0x00, 0x00, 0x00,
				0x00, 0x00, 0x00, 0x01,
				0x10, 0x00, 0x00, 0x02, // 0x1000, 2 words
				0x09, 0x03, 0x00, 0x00, // id 9 len 3: 0x000001 ...
				0x01, 0x00, 0x00, 0x00, // ...; padding
			},
			id: 9, want: 0x000001, ok: true,
		},
		{
			name: "two bytes is not abs-send-time",
			in: []byte{
				0x90, 0x60, 0x00, 0x01, // V=2 X
				0x00, 0x00, 0x00, 0x00,
				0x00, 0x00, 0x00, 0x01,
				0xbe, 0xde, 0x00, 0x01, // 0xBEDE, 1 word
				0x31, 0xab, 0xcd, 0x00, // id 3 len 1: ab cd; padding
			},
			id: 3,
		},
		{
			name: "four bytes is not abs-send-time",
			in: []byte{
				0x90, 0x60, 0x00, 0x01, // V=2 X
				0x00, 0x00, 0x00, 0x00,
				0x00, 0x00, 0x00, 0x01,
				0xbe, 0xde, 0x00, 0x02, // 0xBEDE, 2 words
				0x33, 0x01, 0x02, 0x03, // id 3 len 3: 01 02 03 04
				0x04, 0x00, 0x00, 0x00, // padding
			},
			id: 3,
		},
		{
			name: "absent",
			in:   []byte{0x80, 0x60, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01},
			id:   3,
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var h RTPHeader
			require.NoError(t, h.Parse(tt.in))
			got, ok := h.AbsSendTime(tt.id)
			require.Equal(t, tt.ok, ok)
			require.Equal(t, tt.want, got)
		})
	}
}

// rtpCheckAbsSendTime checks, for a parsed packet, that AbsSendTime agrees
// with the raw element under every id.
func rtpCheckAbsSendTime(t *testing.T, h *RTPHeader) {
	t.Helper()
	for id := range 256 {
		v, ok := h.AbsSendTime(uint8(id))
		d, found := h.ExtensionByID(uint8(id))
		if ok != (found && len(d) == 3) {
			t.Fatalf("id %d: ok %v for %x", id, ok, d)
		}
		if ok && (v > absSendTimeMask || AbsSendTimeBytes(v) != [3]byte(d)) {
			t.Fatalf("id %d: %#x from %x", id, v, d)
		}
	}
}
