package bwe

import (
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// Values of the 24-bit field, 6.18 fixed point seconds.
const (
	abs1s   = 1 << 18  // 0x040000
	abs63s  = 0xFC0000 // 63 s: 1 s before the wrap
	absHalf = 1 << 17  // 0.5 s
)

func TestSendTimeUnwrapper(t *testing.T) {
	tests := []struct {
		name string
		in   []uint32
		want []int64 // ns
	}{
		{"first value is its own time", []uint32{16 * abs1s}, []int64{16 * s}},
		{"fraction", []uint32{absHalf, abs1s + absHalf}, []int64{500 * ms, 1500 * ms}},
		{"one unit rounds to the nearest ns", []uint32{1}, []int64{3815}}, // 2^-18 s = 3814.697 ns
		{"across the 64 s wrap", []uint32{abs63s, 0x000000, abs1s}, []int64{63 * s, 64 * s, 65 * s}},
		{"reordered across the wrap", []uint32{abs63s, abs1s, abs63s + absHalf, 2 * abs1s}, []int64{63 * s, 65 * s, 63*s + 500*ms, 66 * s}},
		{"before the first value", []uint32{abs1s, abs63s}, []int64{1 * s, -1 * s}},
		{"gap just under half the period", []uint32{0, 32*abs1s - 1}, []int64{0, 32*s - 3815}},
		{"gap of half the period or more goes back", []uint32{0, 32 * abs1s}, []int64{0, -32 * s}},
		{"many wraps forward", []uint32{0, 24 * abs1s, 48 * abs1s, 8 * abs1s, 32 * abs1s, 56 * abs1s, 16 * abs1s}, []int64{0, 24 * s, 48 * s, 72 * s, 96 * s, 120 * s, 144 * s}},
		{"bits above 24 are ignored", []uint32{0xFF000000 | abs1s}, []int64{1 * s}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var u SendTimeUnwrapper
			for i, v := range tc.in {
				require.Equal(t, tc.want[i], u.Unwrap(v), "value %d (%#06x)", i, v)
			}
		})
	}
}

func TestSendTimeUnwrapperReset(t *testing.T) {
	var u SendTimeUnwrapper
	u.Unwrap(abs63s)
	u.Unwrap(abs1s) // 65 s
	u.Reset()
	require.Equal(t, int64(1*s), u.Unwrap(abs1s))
}

// A sender stamping every 0.5-1.5 s for 40 hours: the unwrapped time follows
// the true time to within one unit of the field, through 2250 wraps, with
// no overflow.
func TestSendTimeUnwrapperLongRun(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var u SendTimeUnwrapper
	start := int64(37*s + 123_456_789)
	for at := int64(0); at < 40*3600*s; at += 500*ms + rng.Int64N(1*s) {
		now := start + at
		units := (now/s)<<18 + (now%s)<<18/s
		got := u.Unwrap(uint32(units) & absSendTimeMask)
		if d := got - now; d > 0 || d < -3815 {
			t.Fatalf("at %v: unwrapped %d, sent at %d (off by %d ns)", at, got, now, d)
		}
	}
}

func TestSendTimeUnwrapperAllocs(t *testing.T) {
	var u SendTimeUnwrapper
	v := uint32(0)
	require.Zero(t, testing.AllocsPerRun(1000, func() { v += 5000; u.Unwrap(v) }))
}
