package protocol

import (
	"bytes"
	"encoding/hex"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// trunkKeepaliveGolden is README.md section 6.2's example, sealed with
// testClusterKey; the tag was computed independently with Python's hmac
// module.
var trunkKeepaliveGolden = struct {
	k     TrunkKeepalive
	frame []byte
}{
	k: TrunkKeepalive{Forwarder: "fwd-a", Started: time.UnixMilli(1800000000000).UTC(), Seq: 9},
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
		0x19, 0xcc, 0xe5, 0xc0, // origin: ForwarderTag("fwd-a")
		0x1a, 0xc4, 0xd4, 0xa3,
		0x1a, 0x31, 0x85, 0xc5, // frame sequence: TrunkSeqStart(started) + 2
		0x00, 0x00, 0x00, 0x02,
		0x01, 0x05, // kind keepalive, id length 5
		0x00, 0x00, 0x01, 0xa3, 0x18, 0x5c, 0x50, 0x00, // started 1800000000000 ms
		0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, // sequence 9
		0x66, 0x77, 0x64, 0x2d, 0x61, // "fwd-a"
		0x0f, 0x0e, 0x23, 0xf2, // tag
		0xf5, 0xd5, 0x8a, 0x8a,
		0x18, 0xfb, 0xf8, 0x1c,
		0xdb, 0x40, 0x8f, 0x63,
	},
}

func TestTrunkKeepaliveGolden(t *testing.T) {
	c := NewTrunkCodec(testClusterKey(t))
	g := trunkKeepaliveGolden
	c.Number(255, TrunkSeqStart(g.k.Started)+2) // the control goroutine's stream
	got, err := SealTrunkKeepalive(c, nil, &g.k)
	require.NoError(t, err)
	require.Equal(t, g.frame, got)
	var h TrunkHeader
	payload, err := c.Open(g.frame, &h)
	require.NoError(t, err)
	require.True(t, IsTrunkKeepalive(&h))
	k, err := ParseTrunkKeepalive(&h, payload)
	require.NoError(t, err)
	require.Equal(t, g.k, k)
}

// TestTrunkKeepaliveSpecExample reads README.md 6.2's example: the spec
// shows the bytes the code makes.
func TestTrunkKeepaliveSpecExample(t *testing.T) {
	raw, err := os.ReadFile("README.md")
	require.NoError(t, err)
	_, after, ok := strings.Cut(string(raw), "Example: the keepalive of `fwd-a`")
	require.True(t, ok, "README.md 6.2 has no keepalive example")
	_, block, ok := strings.Cut(after, "```\n")
	require.True(t, ok)
	block, _, ok = strings.Cut(block, "```")
	require.True(t, ok)
	var got []byte
	for _, line := range strings.Split(block, "\n") {
		for _, f := range strings.Fields(line) {
			b, err := hex.DecodeString(f)
			if err != nil || len(b) != 1 {
				break // the comment after the bytes
			}
			got = append(got, b[0])
		}
	}
	require.Equal(t, trunkKeepaliveGolden.frame, got)
}

func TestTrunkKeepaliveRejects(t *testing.T) {
	c := NewTrunkCodec(testClusterKey(t))
	g := trunkKeepaliveGolden
	var h TrunkHeader
	payload, err := c.Open(g.frame, &h)
	require.NoError(t, err)
	parse := func(h TrunkHeader, p []byte) error {
		_, err := ParseTrunkKeepalive(&h, p)
		return err
	}
	t.Run("every truncation", func(t *testing.T) {
		for i := range len(payload) {
			require.ErrorIs(t, parse(h, payload[:i]), ErrTrunkKeepalive, "prefix %d", i)
		}
	})
	t.Run("trailing byte", func(t *testing.T) {
		require.ErrorIs(t, parse(h, append(bytes.Clone(payload), 0x61)), ErrTrunkKeepalive)
	})
	t.Run("other kind", func(t *testing.T) {
		for _, kind := range []byte{0, 2, 0x80, 0xff} {
			p := bytes.Clone(payload)
			p[0] = kind
			require.ErrorIs(t, parse(h, p), ErrTrunkKeepalive, "kind %d", kind)
		}
	})
	t.Run("a frame of a call", func(t *testing.T) {
		for _, hh := range []TrunkHeader{{Call: ID{1}, Origin: h.Origin}, {Sender: ID{1}, Origin: h.Origin}} {
			require.False(t, IsTrunkKeepalive(&hh))
			require.ErrorIs(t, parse(hh, payload), ErrTrunkKeepalive)
		}
	})
	t.Run("origin of another forwarder", func(t *testing.T) {
		require.ErrorIs(t, parse(TrunkHeader{Origin: ForwarderTag("fwd-b")}, payload), ErrTrunkKeepalive)
	})
	t.Run("id not printable", func(t *testing.T) {
		for _, id := range []string{"fwd a", "fwd\x00a", "fwd\x7fa"} {
			p := append(bytes.Clone(payload[:trunkKeepaliveFixed]), id...)
			p[1] = byte(len(id))
			err := parse(TrunkHeader{Origin: ForwarderTag(id)}, p)
			require.ErrorIs(t, err, ErrTrunkKeepalive, "%q", id)
		}
	})
	t.Run("empty id", func(t *testing.T) {
		p := bytes.Clone(payload[:trunkKeepaliveFixed])
		p[1] = 0
		require.ErrorIs(t, parse(TrunkHeader{Origin: ForwarderTag("")}, p), ErrTrunkKeepalive)
	})
	t.Run("nothing invalid is sealed", func(t *testing.T) {
		for _, k := range []TrunkKeepalive{{}, {Forwarder: "fwd a"}, {Forwarder: string(bytes.Repeat([]byte{'a'}, 65))},
			{Forwarder: "fwd-a", Started: time.Unix(1<<62, 0)}} {
			_, err := SealTrunkKeepalive(c, nil, &k)
			require.ErrorIs(t, err, ErrTrunkKeepalive, "%+v", k)
		}
	})
	t.Run("longest id", func(t *testing.T) {
		k := TrunkKeepalive{Forwarder: string(bytes.Repeat([]byte{'~'}, 64)), Seq: 1<<64 - 1}
		frame, err := SealTrunkKeepalive(c, nil, &k)
		require.NoError(t, err)
		require.Len(t, frame, TrunkOverhead+MaxTrunkKeepalive)
		var hh TrunkHeader
		p, err := c.Open(frame, &hh)
		require.NoError(t, err)
		got, err := ParseTrunkKeepalive(&hh, p)
		require.NoError(t, err)
		require.Equal(t, k, got)
	})
}

// trunkKeepaliveFuzzSeeds are the committed seeds of FuzzTrunkKeepalive
// (payloads; the fuzz target derives the origin from them).
func trunkKeepaliveFuzzSeeds(t testing.TB) map[string][]byte {
	t.Helper()
	c := NewTrunkCodec(testClusterKey(t))
	var h TrunkHeader
	good, err := c.Open(trunkKeepaliveGolden.frame, &h)
	if err != nil {
		t.Fatal(err)
	}
	kind2 := bytes.Clone(good)
	kind2[0] = 2
	long := bytes.Clone(good)
	long[1] = 6
	return map[string][]byte{
		"keepalive":     bytes.Clone(good),
		"truncated":     good[:len(good)-1],
		"fixed-only":    good[:trunkKeepaliveFixed],
		"kind-2":        kind2,
		"id-length-off": long,
		"rtp":           {0x80, 0x6f, 0x12, 0x34, 0x00, 0x00, 0x03, 0xc0, 0xde, 0xad, 0xbe, 0xef, 0xaa},
		"empty":         {},
	}
}

// TestTrunkKeepaliveFuzzSeeds keeps testdata/fuzz/FuzzTrunkKeepalive equal
// to the seeds above (CALLRELAY_WRITE_FUZZ_SEEDS=1 rewrites it).
func TestTrunkKeepaliveFuzzSeeds(t *testing.T) {
	checkFuzzSeeds(t, map[string]map[string][]byte{"FuzzTrunkKeepalive": trunkKeepaliveFuzzSeeds(t)}, true)
}

// FuzzTrunkKeepalive: ParseTrunkKeepalive never panics and fails only with
// ErrTrunkKeepalive; what it accepts seals back to a frame that opens and
// parses to the same keepalive. The origin is taken from the payload's id
// where it has one, so the fuzzer gets past the tag check.
func FuzzTrunkKeepalive(f *testing.F) {
	for _, b := range trunkKeepaliveFuzzSeeds(f) {
		f.Add(b)
	}
	c := NewTrunkCodec(testClusterKey(f))
	f.Fuzz(func(t *testing.T, p []byte) {
		var h TrunkHeader
		if len(p) > trunkKeepaliveFixed {
			h.Origin = ForwarderTag(string(p[trunkKeepaliveFixed:]))
		}
		k, err := ParseTrunkKeepalive(&h, p)
		if err != nil {
			if !errors.Is(err, ErrTrunkKeepalive) {
				t.Fatalf("error without the sentinel: %v", err)
			}
			return
		}
		frame, err := SealTrunkKeepalive(c, nil, &k)
		if err != nil {
			t.Fatalf("accepted %+v but cannot seal it: %v", k, err)
		}
		var h2 TrunkHeader
		p2, err := c.Open(frame, &h2)
		if err != nil {
			t.Fatal(err)
		}
		k2, err := ParseTrunkKeepalive(&h2, p2)
		if err != nil || k2 != k {
			t.Fatalf("round trip: %+v -> %+v (%v)", k, k2, err)
		}
	})
}
