package protocol

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// trunkEchoGolden is README.md section 6.3's example: fwd-b (region "za",
// started at 1800000000500 ms) answers keepalive 9 of fwd-a after holding
// it 2.5 ms, sealed with testClusterKey by its control stream as that
// stream's eighth frame; the tag was computed independently with Python's
// hmac module.
var trunkEchoGolden = struct {
	e     TrunkEcho
	frame []byte
}{
	e: TrunkEcho{Forwarder: "fwd-b", Region: "za", Started: time.UnixMilli(1800000000000).UTC(), Seq: 9, Hold: 2500 * time.Microsecond},
	frame: []byte{
		0x02, 0xff, 0x00, 0x00, // version 2, stream 255, reserved
		0x00, 0x00, 0x00, 0x00, // call id: zero
		0x00, 0x00, 0x00, 0x00,
		0x00, 0x00, 0x00, 0x00,
		0x00, 0x00, 0x00, 0x00,
		0x00, 0x00, 0x00, 0x00, // sender participant id: zero
		0x00, 0x00, 0x00, 0x00,
		0x00, 0x00, 0x00, 0x00,
		0x00, 0x00, 0x00, 0x00,
		0x9c, 0x9f, 0xdd, 0x7f, // origin: ForwarderTag("fwd-b")
		0x12, 0xea, 0xdb, 0x7a,
		0x1a, 0x31, 0x85, 0xc5, // frame sequence: TrunkSeqStart(fwd-b's start) + 7
		0x1f, 0x40, 0x00, 0x07,
		0x02, 0x05, 0x02, 0x00, // kind echo, id length 5, region length 2, reserved
		0x00, 0x00, 0x01, 0xa3, 0x18, 0x5c, 0x50, 0x00, // echoed started 1800000000000 ms
		0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, // echoed sequence 9
		0x00, 0x00, 0x09, 0xc4, // hold 2500 µs
		0x66, 0x77, 0x64, 0x2d, 0x62, // "fwd-b"
		0x7a, 0x61, // "za"
		0xd5, 0xa8, 0x0f, 0x82, // tag
		0xb5, 0x12, 0x2b, 0x8c,
		0xf5, 0x66, 0xf9, 0xac,
		0xf5, 0xde, 0xba, 0x89,
	},
}

func TestTrunkEchoGolden(t *testing.T) {
	c := NewTrunkCodec(testClusterKey(t))
	g := trunkEchoGolden
	c.Number(255, TrunkSeqStart(time.UnixMilli(1800000000500))+7)
	got, err := SealTrunkEcho(c, nil, &g.e)
	require.NoError(t, err)
	require.Equal(t, g.frame, got)
	var h TrunkHeader
	payload, err := c.Open(g.frame, &h)
	require.NoError(t, err)
	require.True(t, IsTrunkKeepalive(&h), "an echo has zero ids, as a keepalive")
	require.Equal(t, byte(TrunkKindEcho), TrunkControlKind(payload))
	e, err := ParseTrunkEcho(&h, payload)
	require.NoError(t, err)
	require.Equal(t, g.e, e)
	_, err = ParseTrunkKeepalive(&h, payload)
	require.ErrorIs(t, err, ErrTrunkKeepalive, "an echo is no keepalive")
}

func TestTrunkEchoRejects(t *testing.T) {
	c := NewTrunkCodec(testClusterKey(t))
	var h TrunkHeader
	good, err := c.Open(trunkEchoGolden.frame, &h)
	require.NoError(t, err)
	edit := func(f func(p []byte) []byte) []byte { return f(bytes.Clone(good)) }
	for _, tt := range []struct {
		name, msg string
		hdr       TrunkHeader
		payload   []byte
	}{
		{"short", "want at least 24", h, good[:23]},
		{"kind 1", "kind 1", h, edit(func(p []byte) []byte { p[0] = 1; return p })},
		{"id length long", "id of 6 and region of 2", h, edit(func(p []byte) []byte { p[1] = 6; return p })},
		{"region length short", "id of 5 and region of 1", h, edit(func(p []byte) []byte { p[2] = 1; return p })},
		{"trailing byte", "27-byte payload", h, append(bytes.Clone(good[:26]), 'x')},
		{"another's tag", "is not forwarder", TrunkHeader{Origin: ForwarderTag("fwd-a")}, good},
		{"media frame", "a frame of call", TrunkHeader{Call: ID{1}, Origin: h.Origin}, good},
		{"region with a space", "not printable", h, edit(func(p []byte) []byte { p[len(p)-1] = ' '; return p })},
		{"empty id", "forwarder id of 0", TrunkHeader{Origin: ForwarderTag("")}, edit(func(p []byte) []byte { p[1], p[2] = 0, 0; return p[:24] })},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseTrunkEcho(&tt.hdr, tt.payload)
			require.ErrorIs(t, err, ErrTrunkEcho)
			require.ErrorContains(t, err, tt.msg)
		})
	}
	for _, e := range []TrunkEcho{
		{Forwarder: "", Started: time.UnixMilli(1)},
		{Forwarder: "f", Region: "a b"},
		{Forwarder: "f", Hold: -time.Microsecond},
		{Forwarder: "f", Hold: MaxEchoHold + time.Microsecond},
	} {
		_, err := SealTrunkEcho(c, nil, &e)
		require.ErrorIs(t, err, ErrTrunkEcho, "%+v", e)
	}
}

// trunkEchoFuzzSeeds are the committed seeds of FuzzTrunkEcho (payloads;
// the fuzz target derives the origin from them).
func trunkEchoFuzzSeeds(t testing.TB) map[string][]byte {
	t.Helper()
	c := NewTrunkCodec(testClusterKey(t))
	var h TrunkHeader
	good, err := c.Open(trunkEchoGolden.frame, &h)
	if err != nil {
		t.Fatal(err)
	}
	noRegion := bytes.Clone(good[:len(good)-2])
	noRegion[2] = 0
	kind1 := bytes.Clone(good)
	kind1[0] = 1
	long := bytes.Clone(good)
	long[2] = 3
	return map[string][]byte{
		"echo":          bytes.Clone(good),
		"no-region":     noRegion,
		"truncated":     good[:len(good)-1],
		"fixed-only":    good[:trunkEchoFixed],
		"kind-1":        kind1,
		"region-length": long,
		"keepalive":     bytes.Clone(trunkKeepaliveGolden.frame[TrunkHeaderLen : len(trunkKeepaliveGolden.frame)-TrunkTagLen]),
		"empty":         {},
	}
}

// TestTrunkEchoFuzzSeeds keeps testdata/fuzz/FuzzTrunkEcho equal to the
// seeds above (CALLRELAY_WRITE_FUZZ_SEEDS=1 rewrites it).
func TestTrunkEchoFuzzSeeds(t *testing.T) {
	checkFuzzSeeds(t, map[string]map[string][]byte{"FuzzTrunkEcho": trunkEchoFuzzSeeds(t)}, true)
}

// FuzzTrunkEcho: ParseTrunkEcho never panics and fails only with
// ErrTrunkEcho; what it accepts seals back to a frame that opens and
// parses to the same echo. The origin is taken from the payload's id where
// it has one, so the fuzzer gets past the tag check.
func FuzzTrunkEcho(f *testing.F) {
	for _, b := range trunkEchoFuzzSeeds(f) {
		f.Add(b)
	}
	c := NewTrunkCodec(testClusterKey(f))
	f.Fuzz(func(t *testing.T, p []byte) {
		var h TrunkHeader
		if len(p) > trunkEchoFixed {
			n := min(int(p[1]), len(p)-trunkEchoFixed)
			h.Origin = ForwarderTag(string(p[trunkEchoFixed : trunkEchoFixed+n]))
		}
		e, err := ParseTrunkEcho(&h, p)
		if err != nil {
			if !errors.Is(err, ErrTrunkEcho) {
				t.Fatalf("error without the sentinel: %v", err)
			}
			return
		}
		frame, err := SealTrunkEcho(c, nil, &e)
		if err != nil {
			t.Fatalf("accepted %+v but cannot seal it: %v", e, err)
		}
		var h2 TrunkHeader
		p2, err := c.Open(frame, &h2)
		if err != nil {
			t.Fatal(err)
		}
		e2, err := ParseTrunkEcho(&h2, p2)
		if err != nil || e2 != e {
			t.Fatalf("round trip: %+v -> %+v (%v)", e, e2, err)
		}
		if !bytes.Equal(p2[4:], p[4:]) || !bytes.Equal(p2[:3], p[:3]) {
			t.Fatalf("re-encoded %x from %x (reserved byte aside)", p2, p)
		}
	})
}
