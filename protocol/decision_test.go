package protocol

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// decisionGoldenTests are decisions sealed with testClusterKey (tags
// checked with Python's hmac).
var decisionGoldenTests = []struct {
	name string
	msg  *CallDecision
	wire []byte
}{
	{
		name: "dominant and two forwarded",
		msg: &CallDecision{
			Call: clusterTestCall, Partition: 7, Epoch: 3, Seq: 17, At: clusterTestAt,
			Dominant: clusterTestPart, Forward: []ID{clusterTestPart, clusterTestPart3}, Conductor: "cond-1",
		},
		wire: []byte{
			0x43, 0x52, 0x4c, 0x43, // "CRLC"
			0x01, 0x04, 0x00, 0x5a, // version 1, type 4 (decision), body 90 bytes
			0x06, 0x02, // conductor id 6 bytes, 2 forwarded
			0x00, 0x07, // partition 7
			0x00, 0x00, 0x00, 0x03, // epoch 3
			0x00, 0x00, 0x00, 0x11, // sequence 17
			0x00, 0x00, 0x01, 0xa3, 0x18, 0x5c, 0x50, 0x7b, // at 1800000000123 ms
			0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, // call id
			0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11,
			0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, // dominant
			0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
			0x63, 0x6f, 0x6e, 0x64, 0x2d, 0x31, // "cond-1"
			0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, // forwarded
			0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
			0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, // forwarded
			0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33,
			0xc1, 0x77, 0x6a, 0xd3, 0x86, 0xc4, 0x22, 0xd9, // tag
			0xf2, 0xcc, 0x9c, 0xb4, 0x6c, 0x97, 0xe5, 0x2f,
		},
	},
	{
		name: "nobody yet",
		msg:  &CallDecision{Call: clusterTestCall, Partition: 7, Epoch: 1, Conductor: "cond-1"},
		wire: []byte{
			0x43, 0x52, 0x4c, 0x43, // "CRLC"
			0x01, 0x04, 0x00, 0x3a, // version 1, type 4 (decision), body 58 bytes
			0x06, 0x00, // conductor id 6 bytes, nobody forwarded
			0x00, 0x07, // partition 7
			0x00, 0x00, 0x00, 0x01, // epoch 1
			0x00, 0x00, 0x00, 0x00, // sequence 0
			0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // at: unknown
			0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, // call id
			0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11,
			0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // dominant: nobody
			0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
			0x63, 0x6f, 0x6e, 0x64, 0x2d, 0x31, // "cond-1"
			0x1a, 0x3c, 0xd4, 0x95, 0x45, 0xef, 0xf7, 0x6a, // tag
			0x0d, 0xf0, 0x76, 0x46, 0xc8, 0x66, 0x78, 0x0c,
		},
	},
}

func decisionBody(edit func(b []byte) []byte) []byte {
	w := decisionGoldenTests[0].wire
	return edit(bytes.Clone(w[clusterMsgHeaderLen : len(w)-clusterMsgTagLen]))
}

// decisionTestForward returns n distinct participant ids.
func decisionTestForward(n int) []ID {
	ids := make([]ID, n)
	for i := range ids {
		ids[i] = ID{0xf0, 15: byte(i), 14: byte(i >> 8)}
	}
	return ids
}

func TestDecisionGolden(t *testing.T) {
	k := testClusterKey(t)
	for _, tt := range decisionGoldenTests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := tt.msg.Marshal([]byte("prefix"), k)
			require.NoError(t, err)
			require.Equal(t, append([]byte("prefix"), tt.wire...), b, "Marshal appends")

			typ, err := PeekClusterMsgType(tt.wire)
			require.NoError(t, err)
			require.Equal(t, ClusterMsgDecision, typ)
			m, err := decodeClusterMsg(tt.wire, k)
			require.NoError(t, err)
			require.Equal(t, tt.msg, m)

			checkClusterMsgRejects(t, tt.wire, func() clusterMsg { return new(CallDecision) }, new(MetadataBatch))
		})
	}
	require.Equal(t, "decision", ClusterMsgDecision.String())
	// A decision shares its subject with member notices: neither decodes as
	// the other.
	require.ErrorContains(t, new(MemberNotice).Unmarshal(decisionGoldenTests[0].wire, k), "got a decision")
	require.ErrorContains(t, new(CallDecision).Unmarshal(clusterGoldenTests[0].wire, k), "got a member-notice")
}

// TestDecisionBadBodies: authentic decisions whose bodies break the rules.
func TestDecisionBadBodies(t *testing.T) {
	k := testClusterKey(t)
	// Offsets in the golden body: id length 0, forward count 1, partition
	// 2, epoch 4, sequence 8, at 12, call 20, dominant 36, conductor id 52,
	// forwarded ids 58 and 74.
	for _, tt := range []struct {
		name string
		body []byte
		msg  string
	}{
		{"short body", decisionBody(func(b []byte) []byte { return b[:51] }), "body of 51 bytes"},
		{"id length 0", decisionBody(clusterSet(0, 0)), "conductor id: protocol: invalid cluster message: forwarder id of 0 bytes"},
		{"id longer than the body", decisionBody(clusterSet(0, 100)), "conductor id truncated"},
		{"id with a newline", decisionBody(clusterSet(57, '\n')), "not printable"},
		{"zero call", decisionBody(clusterSet(20, make([]byte, 16)...)), "without call id"},
		{"epoch 0", decisionBody(clusterSet(4, 0, 0, 0, 0)), "epoch 0"},
		{"3 forwarded, 2 present", decisionBody(clusterSet(1, 3)), "forward list truncated: 3 ids in 32 bytes"},
		{"1 forwarded, 2 present", decisionBody(clusterSet(1, 1)), "forward list trailing bytes: 1 ids in 32 bytes"},
		{"byte after the body", decisionBody(func(b []byte) []byte { return append(b, 0) }), "trailing bytes"},
		{"duplicate", decisionBody(clusterSet(74, bytes.Repeat([]byte{0x22}, 16)...)), "forwards 22222222222222222222222222222222 twice"},
		{"zero forwarded", decisionBody(clusterSet(58, make([]byte, 16)...)), "zero participant id"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var d CallDecision
			err := d.Unmarshal(rawClusterMsg(k, byte(ClusterMsgDecision), tt.body), k)
			require.ErrorIs(t, err, ErrClusterMsgInvalid)
			require.ErrorContains(t, err, tt.msg)
			require.Equal(t, &CallDecision{}, decisionNormalize(&d), "a rejected decision holds nothing")
		})
	}
}

func TestDecisionMarshalRejects(t *testing.T) {
	k := testClusterKey(t)
	edit := func(f func(d *CallDecision)) *CallDecision {
		d := *decisionGoldenTests[0].msg
		d.Forward = decisionTestForward(5)
		f(&d)
		return &d
	}
	far := time.Date(300_000_000, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		name, msg string
		d         *CallDecision
	}{
		{"zero value", "without call id", &CallDecision{}},
		{"zero call", "without call id", edit(func(d *CallDecision) { d.Call = ID{} })},
		{"epoch 0", "epoch 0", edit(func(d *CallDecision) { d.Epoch = 0 })},
		{"no conductor", "conductor id", edit(func(d *CallDecision) { d.Conductor = "" })},
		{"conductor 65 bytes", "65 bytes", edit(func(d *CallDecision) { d.Conductor = strings.Repeat("c", 65) })},
		{"conductor with space", "not printable", edit(func(d *CallDecision) { d.Conductor = "cond 1" })},
		{"time out of range", "out of range", edit(func(d *CallDecision) { d.At = far })},
		{"256 forwarded", "forwards 256 participants", edit(func(d *CallDecision) { d.Forward = decisionTestForward(256) })},
		{"duplicate", "twice", edit(func(d *CallDecision) { d.Forward[4] = d.Forward[1] })},
		{"zero forwarded", "zero participant id", edit(func(d *CallDecision) { d.Forward[2] = ID{} })},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, err := tt.d.Marshal([]byte("keep"), k)
			require.ErrorIs(t, err, ErrClusterMsgInvalid)
			require.ErrorContains(t, err, tt.msg)
			require.Equal(t, "keep", string(out), "dst comes back as it was")
		})
	}
}

func TestDecisionRoundTrip(t *testing.T) {
	k := testClusterKey(t)
	for _, tt := range []struct {
		name    string
		in, out *CallDecision
	}{
		{
			name: "255 forwarded, largest values",
			in: &CallDecision{Call: clusterTestCall, Partition: 65535, Epoch: 1<<32 - 1, Seq: 1<<32 - 1, At: time.UnixMilli(-1).UTC(),
				Dominant: clusterTestPart, Forward: decisionTestForward(255), Conductor: strings.Repeat("~", 64)},
		},
		{
			name: "local time comes back in UTC, dominant not forwarded",
			in: &CallDecision{Call: clusterTestCall, Epoch: 9, Seq: 2, At: clusterTestAt.Add(time.Microsecond).Local(),
				Dominant: clusterTestPart3, Forward: []ID{clusterTestPart}, Conductor: "c"},
			out: &CallDecision{Call: clusterTestCall, Epoch: 9, Seq: 2, At: clusterTestAt,
				Dominant: clusterTestPart3, Forward: []ID{clusterTestPart}, Conductor: "c"},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.out == nil {
				tt.out = tt.in
			}
			b, err := tt.in.Marshal(nil, k)
			require.NoError(t, err)
			require.Len(t, b, clusterMsgOverhead+decisionFixedLen+len(tt.in.Conductor)+16*len(tt.in.Forward))
			got, err := decodeClusterMsg(b, k)
			require.NoError(t, err)
			require.Equal(t, tt.out, got)
		})
	}
}

// TestDecisionReuse: decoding into a used decision gives what a fresh one
// gets and keeps Forward's array; a rejected decision forwards nobody.
func TestDecisionReuse(t *testing.T) {
	k := testClusterKey(t)
	big := &CallDecision{Call: clusterTestCall, Epoch: 2, Seq: 5, Forward: decisionTestForward(40), Conductor: "cond-2"}
	bigWire, err := big.Marshal(nil, k)
	require.NoError(t, err)
	var d CallDecision
	require.NoError(t, d.Unmarshal(bigWire, k))
	require.Equal(t, big, &d)
	arr := &d.Forward[0]

	require.NoError(t, d.Unmarshal(decisionGoldenTests[1].wire, k))
	require.Equal(t, CallDecision{Call: clusterTestCall, Partition: 7, Epoch: 1, Conductor: "cond-1", Forward: []ID{}}, d)
	require.NoError(t, d.Unmarshal(decisionGoldenTests[0].wire, k))
	require.Equal(t, decisionGoldenTests[0].msg, &d)
	require.Same(t, arr, &d.Forward[0], "Forward keeps its array")

	require.ErrorIs(t, d.Unmarshal(bigWire[:len(bigWire)-1], k), ErrClusterMsgInvalid)
	require.Equal(t, CallDecision{Forward: []ID{}}, d)
	require.GreaterOrEqual(t, cap(d.Forward), 40, "but keeps its array")
}

func TestDecisionUnmarshalAllocs(t *testing.T) {
	k := testClusterKey(t)
	big := &CallDecision{Call: clusterTestCall, Epoch: 2, Seq: 5, Forward: decisionTestForward(40), Conductor: "cond-1"}
	bigWire, err := big.Marshal(nil, k)
	require.NoError(t, err)
	var d CallDecision
	require.NoError(t, d.Unmarshal(bigWire, k), "warm-up")
	allocs := testing.AllocsPerRun(100, func() {
		if err := d.Unmarshal(decisionGoldenTests[0].wire, k); err != nil {
			t.Fatal(err)
		}
		if err := d.Unmarshal(bigWire, k); err != nil {
			t.Fatal(err)
		}
	})
	require.Zero(t, allocs)
}

func TestDecisionNewer(t *testing.T) {
	d := func(epoch, seq uint32) *CallDecision { return &CallDecision{Epoch: epoch, Seq: seq} }
	for _, tt := range []struct {
		name      string
		d, prev   *CallDecision
		newer     bool
		reasoning string
	}{
		{"first", d(1, 0), nil, true, "nothing applied yet"},
		{"next seq", d(3, 18), d(3, 17), true, "same conductor, later decision"},
		{"same seq", d(3, 17), d(3, 17), false, "a duplicate or replay"},
		{"older seq", d(3, 16), d(3, 17), false, "reordered"},
		{"new owner restarts seq", d(4, 0), d(3, 17), true, "takeover: a higher epoch wins whatever its seq"},
		{"fenced-off owner", d(3, 1000), d(4, 0), false, "a stale epoch loses whatever its seq"},
		{"epoch wraps not", d(1, 0), d(1<<32-1, 0), false, "epochs compare as plain numbers"},
		{"max seq", d(1, 1<<32-1), d(1, 1<<32-2), true, ""},
	} {
		require.Equal(t, tt.newer, tt.d.Newer(tt.prev), "%s: %s", tt.name, tt.reasoning)
	}
}

// decisionFuzzSeeds are the committed seeds of FuzzCallDecision (see
// TestClusterFuzzSeeds): valid decisions and broken ones, sealed with
// testClusterKey where a tag matters.
func decisionFuzzSeeds(t testing.TB) map[string][]byte {
	t.Helper()
	k := testClusterKey(t)
	seeds := map[string][]byte{}
	for _, tt := range decisionGoldenTests {
		name := mediaSeedName(tt.name)
		seeds[name] = tt.wire
		seeds[name+"-truncated"] = tt.wire[:len(tt.wire)-1]
		altered := bytes.Clone(tt.wire)
		altered[clusterMsgHeaderLen+1] ^= 0x01
		seeds[name+"-altered"] = altered
	}
	many, err := (&CallDecision{Call: clusterTestCall, Epoch: 1 << 31, Seq: 77, Dominant: clusterTestPart,
		Forward: decisionTestForward(12), Conductor: "conductor-0.eu-west-1"}).Marshal(nil, k)
	require.NoError(t, err)
	seeds["twelve-forwarded"] = many
	seeds["duplicate"] = rawClusterMsg(k, byte(ClusterMsgDecision), decisionBody(clusterSet(74, bytes.Repeat([]byte{0x22}, 16)...)))
	seeds["epoch-0"] = rawClusterMsg(k, byte(ClusterMsgDecision), decisionBody(clusterSet(4, 0, 0, 0, 0)))
	seeds["count-mismatch"] = rawClusterMsg(k, byte(ClusterMsgDecision), decisionBody(clusterSet(1, 3)))
	seeds["a-member-notice"] = clusterGoldenTests[0].wire
	seeds["empty"] = []byte{}
	return seeds
}

// decisionNormalize drops the difference between nil and an empty Forward.
func decisionNormalize(d *CallDecision) *CallDecision {
	c := *d
	if len(c.Forward) == 0 {
		c.Forward = nil
	}
	return &c
}

// FuzzCallDecision: as FuzzMetadataBatch, for decisions.
func FuzzCallDecision(f *testing.F) {
	for _, b := range decisionFuzzSeeds(f) {
		f.Add(b)
	}
	k := testClusterKey(f)
	used, err := (&CallDecision{Call: clusterTestPart, Epoch: 5, Forward: decisionTestForward(9), Conductor: "used"}).Marshal(nil, k)
	require.NoError(f, err)
	f.Fuzz(func(t *testing.T, b []byte) {
		check := func(b []byte) error {
			var d CallDecision
			if err := d.Unmarshal(b, k); err != nil {
				if !errors.Is(err, ErrClusterMsgInvalid) && !errors.Is(err, ErrClusterMsgAuth) {
					t.Fatalf("error without a sentinel: %v", err)
				}
				return err
			}
			var reused CallDecision
			if err := reused.Unmarshal(used, k); err != nil {
				t.Fatal(err)
			}
			if err := reused.Unmarshal(b, k); err != nil || !reflect.DeepEqual(decisionNormalize(&d), decisionNormalize(&reused)) {
				t.Fatalf("decoding into a used decision: %+v vs %+v (%v)", d, reused, err)
			}
			out, err := d.Marshal(nil, k)
			if err != nil {
				t.Fatalf("decoded %+v but cannot encode it: %v", d, err)
			}
			if !bytes.Equal(out, b) {
				t.Fatalf("re-encoding differs:\n%x\n%x", b, out)
			}
			var d2 CallDecision
			if err := d2.Unmarshal(out, k); err != nil || !reflect.DeepEqual(d, d2) {
				t.Fatalf("round trip: %+v -> %+v (%v)", d, d2, err)
			}
			return nil
		}
		if check(b) == nil || len(b) < clusterMsgOverhead {
			return
		}
		checkResealed(t, k, b, check)
	})
}
