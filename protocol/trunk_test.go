package protocol

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// trunkGoldenTests are frames sealed with testClusterKey; the tags were
// computed independently with Python's hmac module.
var trunkGoldenTests = []struct {
	name    string
	h       TrunkHeader
	payload []byte
	frame   []byte
}{
	{
		name: "rtp audio",
		h: TrunkHeader{
			Call:   ID{0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11},
			Sender: ID{0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22},
			Origin: 0x19cce5c01ac4d4a3, // ForwarderTag("fwd-a")
			Stream: 3,
			Seq:    0x1a3185c500000009, // TrunkSeqStart(1800000000000 ms) + 9
		},
		payload: []byte{0x80, 0x6f, 0x12, 0x34, 0x00, 0x00, 0x03, 0xc0, 0xde, 0xad, 0xbe, 0xef, 0xaa},
		frame: []byte{
			0x02, 0x03, 0x00, 0x00, // version 2, stream 3, reserved
			0x11, 0x11, 0x11, 0x11, // call id
			0x11, 0x11, 0x11, 0x11,
			0x11, 0x11, 0x11, 0x11,
			0x11, 0x11, 0x11, 0x11,
			0x22, 0x22, 0x22, 0x22, // sender participant id
			0x22, 0x22, 0x22, 0x22,
			0x22, 0x22, 0x22, 0x22,
			0x22, 0x22, 0x22, 0x22,
			0x19, 0xcc, 0xe5, 0xc0, // origin tag of "fwd-a"
			0x1a, 0xc4, 0xd4, 0xa3,
			0x1a, 0x31, 0x85, 0xc5, // sequence
			0x00, 0x00, 0x00, 0x09,
			0x80, 0x6f, 0x12, 0x34, // payload: RTP, PT=111, seq 0x1234
			0x00, 0x00, 0x03, 0xc0, //   timestamp 960
			0xde, 0xad, 0xbe, 0xef, //   SSRC
			0xaa,                   //   one payload byte
			0x30, 0x20, 0x8a, 0xb1, // tag: HMAC-SHA256(trunk subkey, bytes 0..65)[:16]
			0x6f, 0x1c, 0x5d, 0x1f,
			0x4a, 0x16, 0xa5, 0x4a,
			0xdb, 0xc1, 0x8c, 0x43,
		},
	},
	{
		name: "rtcp receiver report",
		h: TrunkHeader{
			Call:   ID{0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff},
			Sender: ID{0xff, 0xee, 0xdd, 0xcc, 0xbb, 0xaa, 0x99, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0x00},
			Origin: 0x0102030405060708,
			Stream: 255,
			Seq:    0x1a3185c500000001,
		},
		payload: []byte{0x80, 0xc9, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01},
		frame: []byte{
			0x02, 0xff, 0x00, 0x00, // version 2, stream 255, reserved
			0x00, 0x11, 0x22, 0x33, // call id
			0x44, 0x55, 0x66, 0x77,
			0x88, 0x99, 0xaa, 0xbb,
			0xcc, 0xdd, 0xee, 0xff,
			0xff, 0xee, 0xdd, 0xcc, // sender participant id
			0xbb, 0xaa, 0x99, 0x88,
			0x77, 0x66, 0x55, 0x44,
			0x33, 0x22, 0x11, 0x00,
			0x01, 0x02, 0x03, 0x04, // origin tag
			0x05, 0x06, 0x07, 0x08,
			0x1a, 0x31, 0x85, 0xc5, // sequence
			0x00, 0x00, 0x00, 0x01,
			0x80, 0xc9, 0x00, 0x01, // payload: RTCP RR, length 1
			0x00, 0x00, 0x00, 0x01, //   SSRC 1
			0xcc, 0x49, 0x47, 0x85, // tag
			0x26, 0xbc, 0xe1, 0xc5,
			0xe0, 0x63, 0x5e, 0xbb,
			0x31, 0xa0, 0xad, 0x18,
		},
	},
}

func TestTrunkGolden(t *testing.T) {
	c := NewTrunkCodec(testClusterKey(t))
	for _, tt := range trunkGoldenTests {
		t.Run(tt.name, func(t *testing.T) {
			require.Len(t, tt.frame, len(tt.payload)+TrunkOverhead)
			require.Equal(t, tt.frame, c.Seal(nil, &tt.h, tt.payload))

			var h TrunkHeader
			payload, err := c.Open(tt.frame, &h)
			require.NoError(t, err)
			require.Equal(t, tt.h, h)
			require.Equal(t, tt.payload, payload)
			require.Same(t, &tt.frame[TrunkHeaderLen], &payload[0], "the payload aliases the frame")
			require.Equal(t, len(payload), cap(payload), "appending to the payload cannot overwrite the tag")
		})
	}
}

func TestTrunkOpenRejects(t *testing.T) {
	k := testClusterKey(t)
	c := NewTrunkCodec(k)
	frame := trunkGoldenTests[0].frame
	want := trunkGoldenTests[0].h
	open := func(b []byte) error {
		t.Helper()
		h := want
		_, err := c.Open(b, &h)
		require.Equal(t, want, h, "a rejected frame leaves the header untouched")
		return err
	}

	t.Run("every truncation", func(t *testing.T) {
		for i := range len(frame) {
			err := open(frame[:i])
			if i <= TrunkOverhead {
				require.ErrorIs(t, err, ErrTrunkTruncated, "prefix %d", i)
			} else {
				require.ErrorIs(t, err, ErrTrunkAuth, "prefix %d: the tag moved", i)
			}
		}
	})
	t.Run("every flipped bit", func(t *testing.T) {
		for i := range len(frame) * 8 {
			b := bytes.Clone(frame)
			b[i/8] ^= 1 << (i % 8)
			err := open(b)
			if i/8 == 0 {
				require.ErrorIs(t, err, ErrTrunkVersion, "bit %d", i)
			} else {
				require.ErrorIs(t, err, ErrTrunkAuth, "bit %d", i)
			}
		}
	})
	t.Run("reserved bytes are authenticated", func(t *testing.T) {
		b := bytes.Clone(frame)
		b[2] = 0x80
		require.ErrorIs(t, open(b), ErrTrunkAuth)
	})
	t.Run("appended byte", func(t *testing.T) {
		require.ErrorIs(t, open(append(bytes.Clone(frame), 0)), ErrTrunkAuth)
	})
	t.Run("wrong key", func(t *testing.T) {
		other := k
		other[31] ^= 1
		_, err := NewTrunkCodec(other).Open(frame, new(TrunkHeader))
		require.ErrorIs(t, err, ErrTrunkAuth)
	})
	t.Run("only the trunk subkey seals", func(t *testing.T) {
		// Frames tagged with the cluster-message subkey or the raw key are
		// refused: the labels keep the two uses apart.
		msgKey := k.msgKey()
		for _, key := range [][]byte{msgKey[:], k[:]} {
			forger := &TrunkCodec{mac: hmac.New(sha256.New, key)}
			require.ErrorIs(t, open(forger.Seal(nil, &want, []byte{0x80})), ErrTrunkAuth)
		}
		require.NoError(t, open(c.Seal(nil, &want, []byte{0x80})))
	})
	t.Run("version 1 (no sequence) and 3", func(t *testing.T) {
		for _, v := range []byte{1, 3} {
			b := bytes.Clone(frame)
			b[0] = v
			require.ErrorIs(t, open(b), ErrTrunkVersion)
			require.ErrorIs(t, open([]byte{v}), ErrTrunkVersion, "the version is checked before the length")
		}
	})
	t.Run("stream and sequence are authenticated", func(t *testing.T) {
		for _, i := range []int{1, 44, 51} {
			b := bytes.Clone(frame)
			b[i] ^= 0x10
			require.ErrorIs(t, open(b), ErrTrunkAuth, "byte %d", i)
		}
	})
	t.Run("empty payload", func(t *testing.T) {
		b := c.Seal(nil, &want, nil)
		require.Len(t, b, TrunkOverhead)
		require.ErrorIs(t, open(b), ErrTrunkTruncated)
	})
}

func TestTrunkSealAppendsAndInPlace(t *testing.T) {
	c := NewTrunkCodec(testClusterKey(t))
	tt := trunkGoldenTests[0]

	prefix := []byte("datagram 0")
	out := c.Seal(bytes.Clone(prefix), &tt.h, tt.payload)
	require.Equal(t, append(bytes.Clone(prefix), tt.frame...), out)

	// A reader receives the datagram at offset TrunkHeaderLen and seals it
	// where it lies.
	buf := make([]byte, 1500)
	n := copy(buf[TrunkHeaderLen:], tt.payload)
	out = c.Seal(buf[:0], &tt.h, buf[TrunkHeaderLen:TrunkHeaderLen+n])
	require.Equal(t, tt.frame, out)
	require.Same(t, &buf[0], &out[0], "sealed in place")

	// Too little room: Seal grows dst and leaves the source intact.
	small := make([]byte, TrunkHeaderLen+n)
	copy(small[TrunkHeaderLen:], tt.payload)
	require.Equal(t, tt.frame, c.Seal(small[:0], &tt.h, small[TrunkHeaderLen:]))
}

func TestTrunkAllocs(t *testing.T) {
	c := NewTrunkCodec(testClusterKey(t))
	tt := trunkGoldenTests[0]
	buf := make([]byte, 0, 1500)
	bad := bytes.Clone(tt.frame)
	bad[len(bad)-1] ^= 1
	bads := [][]byte{bad, bad[:10], {2}, {1}, nil}
	var h TrunkHeader
	var sink int
	allocs := testing.AllocsPerRun(100, func() {
		frame := c.Seal(buf[:0], &tt.h, tt.payload)
		p, err := c.Open(frame, &h)
		if err != nil {
			panic(err)
		}
		sink += len(p)
		for _, b := range bads {
			if _, err := c.Open(b, &h); err != nil {
				sink++
			}
		}
	})
	require.Zero(t, allocs, "Seal and Open must not allocate, even on bad frames")
	_ = sink
}

func BenchmarkTrunkSealOpen(b *testing.B) {
	c := NewTrunkCodec(ClusterKey{1, 2, 3})
	h := TrunkHeader{Call: NewID(), Sender: NewID(), Origin: ForwarderTag("fwd-a")}
	payload := make([]byte, 200)
	payload[0] = 0x80
	buf := make([]byte, 0, 1500)
	var got TrunkHeader
	b.ReportAllocs()
	b.SetBytes(int64(len(payload)))
	for b.Loop() {
		frame := c.Seal(buf[:0], &h, payload)
		if _, err := c.Open(frame, &got); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "packets/s")
}

// trunkFuzzSeeds are the committed seeds of FuzzTrunkOpen (see
// TestClusterFuzzSeeds): valid frames sealed with testClusterKey and broken
// ones.
func trunkFuzzSeeds(t testing.TB) map[string][]byte {
	t.Helper()
	c := NewTrunkCodec(testClusterKey(t))
	seeds := map[string][]byte{}
	for _, tt := range trunkGoldenTests {
		name := mediaSeedName(tt.name)
		seeds[name] = tt.frame
		seeds[name+"-truncated"] = tt.frame[:len(tt.frame)-1]
		bad := bytes.Clone(tt.frame)
		bad[TrunkHeaderLen] ^= 0x01
		seeds[name+"-altered"] = bad
	}
	h := trunkGoldenTests[0].h
	seeds["one-byte-payload"] = c.Seal(nil, &h, []byte{0x80})
	seeds["empty-payload"] = c.Seal(nil, &h, nil)
	v1 := c.Seal(nil, &h, []byte{0x80, 0xc8})
	v1[0] = 1
	seeds["version-1"] = v1
	seeds["empty"] = []byte{}
	return seeds
}

// FuzzTrunkOpen: Open never panics and fails only with its sentinels; a
// frame it opens re-seals to a frame that opens to the same header and
// payload; and a frame whose tag is recomputed opens exactly when its version
// and length are right.
func FuzzTrunkOpen(f *testing.F) {
	for _, b := range trunkFuzzSeeds(f) {
		f.Add(b)
	}
	c := NewTrunkCodec(testClusterKey(f))
	f.Fuzz(func(t *testing.T, b []byte) {
		check := func(frame []byte) error {
			var h TrunkHeader
			p, err := c.Open(frame, &h)
			if err != nil {
				if !errors.Is(err, ErrTrunkTruncated) && !errors.Is(err, ErrTrunkVersion) && !errors.Is(err, ErrTrunkAuth) {
					t.Fatalf("error without a sentinel: %v", err)
				}
				return err
			}
			if len(p) == 0 || len(p) != len(frame)-TrunkOverhead {
				t.Fatalf("payload of %d bytes from a %d-byte frame", len(p), len(frame))
			}
			again := c.Seal(nil, &h, p)
			var h2 TrunkHeader
			p2, err := c.Open(again, &h2)
			if err != nil || h2 != h || !bytes.Equal(p2, p) {
				t.Fatalf("round trip: %+v %x -> %+v %x (%v)", h, p, h2, p2, err)
			}
			return nil
		}
		check(b)
		if len(b) < TrunkTagLen {
			return
		}
		resealed := bytes.Clone(b)
		end := len(b) - TrunkTagLen
		copy(resealed[end:], c.tag(resealed[:end]))
		err := check(resealed)
		if ok := len(b) > TrunkOverhead && b[0] == trunkVersion; ok != (err == nil) {
			t.Fatalf("resealed %d-byte frame version %d: %v", len(b), b[0], err)
		}
	})
}

// A numbering codec stamps its stream and consecutive sequences, from the
// first it was given, and tells the caller in the header.
func TestTrunkNumbering(t *testing.T) {
	k := testClusterKey(t)
	c, opener := NewTrunkCodec(k), NewTrunkCodec(k)
	first := TrunkSeqStart(testStarted)
	c.Number(7, first)
	for i := uint64(0); i < 3; i++ {
		h := TrunkHeader{Call: NewID(), Sender: NewID(), Origin: 9, Stream: 1, Seq: 5}
		frame := c.Seal(nil, &h, []byte{0x80, 1})
		require.Equal(t, uint8(7), h.Stream)
		require.Equal(t, first+i, h.Seq)
		var got TrunkHeader
		_, err := opener.Open(frame, &got)
		require.NoError(t, err)
		require.Equal(t, h, got)
	}
	require.Equal(t, uint64(1800000000000)<<20, first)
	require.Equal(t, uint64(1)<<20, TrunkSeqStart(time.Time{}), "a clock before 1970 still numbers from above 0")
}
