package protocol

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/stretchr/testify/require"
)

// exampleRTTs: the forwarder the report goes to at 192.0.2.10:3478 (12.5
// ms, via) and another at [2001:db8::7]:3478 (40 ms).
func exampleRTTs() CandidateRTTs {
	var c CandidateRTTs
	c.N = 2
	c.Entries[0] = CandidateRTT{Addr: netip.MustParseAddrPort("192.0.2.10:3478"), RTT: 12500 * time.Microsecond, Via: true}
	c.Entries[1] = CandidateRTT{Addr: netip.MustParseAddrPort("[2001:db8::7]:3478"), RTT: 40 * time.Millisecond}
	return c
}

var exampleRTTsWire = []byte{
	0x02,       // 2 entries
	0x01, 0x01, // via, IPv4
	0x0d, 0x96, // port 3478
	0x00, 0x00, 0x30, 0xd4, // 12500 µs
	192, 0, 2, 10,
	0x00, 0x02, // not via, IPv6
	0x0d, 0x96, // port 3478
	0x00, 0x00, 0x9c, 0x40, // 40000 µs
	0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x07,
}

// exampleSeqRTTsWire is exampleRTTsWire sequenced: the device's report
// number 1800000000123 (its clock in Unix ms).
var exampleSeqRTTsWire = []byte{
	0x82,                                           // a sequence follows, 2 entries
	0x00, 0x00, 0x01, 0xa3, 0x18, 0x5c, 0x50, 0x7b, // sequence 1800000000123
	0x01, 0x01, // via, IPv4
	0x0d, 0x96, // port 3478
	0x00, 0x00, 0x30, 0xd4, // 12500 µs
	192, 0, 2, 10,
	0x00, 0x02, // not via, IPv6
	0x0d, 0x96, // port 3478
	0x00, 0x00, 0x9c, 0x40, // 40000 µs
	0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x07,
}

func TestCandidateRTTsSequenceWire(t *testing.T) {
	c := exampleRTTs()
	c.Seq = 1_800_000_000_123
	b, err := c.Append(nil)
	require.NoError(t, err)
	require.Equal(t, exampleSeqRTTsWire, b)
	require.Equal(t, len(b), c.Size())
	require.Equal(t, 45, c.Size(), "README 3.2's example: 45 bytes")
	var d CandidateRTTs
	require.NoError(t, ParseCandidateRTTs(b, &d))
	require.Equal(t, c, d)
	require.Zero(t, testing.AllocsPerRun(100, func() { _ = ParseCandidateRTTs(b, &d) }))
	// The largest report: 8 IPv6 entries and a sequence.
	var big CandidateRTTs
	big.Seq, big.N = 1, MaxCandidateRTTs
	for i := range big.Entries {
		big.Entries[i] = CandidateRTT{Addr: netip.AddrPortFrom(netip.MustParseAddr("2001:db8::1").Next(), uint16(1000+i))}
	}
	require.Equal(t, 201, big.Size())
}

// TestCandidateRTTsReadmeExample: the spec's example (README 3.2) is what
// Append makes of it.
func TestCandidateRTTsReadmeExample(t *testing.T) {
	require.Equal(t, exampleSeqRTTsWire, readmeHexExample(t, "candidate-rtts"))
}

// TestCandidateRTTsNewer: a report replaces the session's last one only
// with a higher sequence; unsequenced reports only while the session has
// had no sequenced one.
func TestCandidateRTTsNewer(t *testing.T) {
	for _, tc := range []struct {
		last, next uint64
		want       bool
	}{
		{0, 1, true}, // the session's first sequenced report (or its first report)
		{0, 0, true}, // unsequenced after unsequenced: taken, as before sequences
		{5, 6, true}, // newer
		{5, 1 << 40, true},
		{5, 5, false}, // the same report again: a replay
		{5, 4, false}, // older: a replay, or overtaken on the way
		{5, 0, false}, // unsequenced after a sequenced one
		{1 << 63, 1, false},
	} {
		last, next := exampleRTTs(), exampleRTTs()
		last.Seq, next.Seq = tc.last, tc.next
		require.Equal(t, tc.want, next.Newer(&last), "last %d, next %d", tc.last, tc.next)
	}
	var none, first CandidateRTTs
	first.Seq = 7
	require.True(t, first.Newer(&none), "a session's first report is taken")
}

func TestCandidateRTTsWire(t *testing.T) {
	c := exampleRTTs()
	b, err := c.Append(nil)
	require.NoError(t, err)
	require.Equal(t, exampleRTTsWire, b)
	require.Equal(t, len(b), c.Size())
	var d CandidateRTTs
	require.NoError(t, ParseCandidateRTTs(b, &d))
	require.Equal(t, c, d)
	require.Zero(t, testing.AllocsPerRun(100, func() { _ = ParseCandidateRTTs(b, &d) }))
}

func TestCandidateRTTsRejects(t *testing.T) {
	set := func(i int, v ...byte) []byte {
		b := append([]byte(nil), exampleRTTsWire...)
		copy(b[i:], v)
		return b
	}
	for _, tc := range []struct {
		name, want string
		b          []byte
	}{
		{"empty", "empty", nil},
		{"no entries", "0 entries", []byte{0}},
		{"9 entries", "9 entries", []byte{9}},
		{"truncated entry", "entry 1 truncated", exampleRTTsWire[:20]},
		{"truncated address", "address truncated", exampleRTTsWire[:len(exampleRTTsWire)-1]},
		{"trailing byte", "1 trailing bytes", append(append([]byte(nil), exampleRTTsWire...), 0)},
		{"family 3", "family 3", set(2, 3)},
		{"unknown flag", "unknown flags 0x02", set(1, 0x03)},
		{"two via", "more than one entry marked via", set(13, 0x01)},
		{"port 0", "address", set(3, 0, 0)},
		{"unspecified", "address", set(9, 0, 0, 0, 0)},
		{"RTT over 10 s", "RTT 10000001 µs", set(5, 0x00, 0x98, 0x96, 0x81)},
		{"twice", "twice", append(append([]byte{2}, exampleRTTsWire[1:13]...), set(1, 0)[1:13]...)},
		{"v4-mapped", "address", set(21, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 11)},
		{"sequence truncated", "sequence truncated", exampleSeqRTTsWire[:8]},
		{"sequence only", "entry 0 truncated", exampleSeqRTTsWire[:9]},
		{"sequence 0", "sequence 0", append([]byte{0x82, 0, 0, 0, 0, 0, 0, 0, 0}, exampleSeqRTTsWire[9:]...)},
		{"sequence without its bit", "entry 0: family 0", append([]byte{0x02}, exampleSeqRTTsWire[1:]...)},
		{"bit 0x40 in the count", "66 entries", set(0, 0x42)},
		{"sequence bit, no entries", "0 entries", []byte{0x80, 0, 0, 0, 0, 0, 0, 0, 1}},
		{"sequenced, trailing byte", "1 trailing bytes", append(append([]byte(nil), exampleSeqRTTsWire...), 0)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var d CandidateRTTs
			err := ParseCandidateRTTs(tc.b, &d)
			require.ErrorIs(t, err, ErrCandidateRTTs)
			require.ErrorContains(t, err, tc.want)
			require.Equal(t, CandidateRTTs{}, d)
		})
	}
	c := exampleRTTs()
	c.Entries[5].RTT = 1
	_, err := c.Append(nil)
	require.ErrorContains(t, err, "beyond the count")
}

func TestJoinRequestCarriesCandidateRTTs(t *testing.T) {
	_, priv := testKeys(t)
	tok := testToken(t, priv, nil)
	c := exampleRTTs()
	m, err := BuildJoinRequest(tok, JoinOptions{RTTs: &c})
	require.NoError(t, err)
	in := &stun.Message{Raw: append([]byte(nil), m.Raw...)}
	require.NoError(t, in.Decode())
	r, err := ParseJoinRequest(in)
	require.NoError(t, err, "the attribute is under MESSAGE-INTEGRITY")
	require.Equal(t, exampleRTTsWire, r.RTTs)
	// A bad report does not fail the request carrying it: the forwarder
	// parses it apart and drops it.
	bad := exampleRTTs()
	bad.Entries[0].RTT = time.Minute
	_, err = BuildJoinRequest(tok, JoinOptions{RTTs: &bad})
	require.True(t, errors.Is(err, ErrCandidateRTTs), "%v", err)
}

func TestMetadataCarriesCandidateRTTs(t *testing.T) {
	k := testClusterKey(t)
	b := MetadataBatch{Forwarder: "fwd-a", Partition: 7, TickMillis: 100, Seq: 1, At: time.UnixMilli(1_800_000_000_123).UTC(),
		Calls: []CallMetadata{{Call: ID{0x11, 15: 1}, Members: []MemberMetadata{
			{Participant: ID{0x22, 15: 2}, MeanLevel: 127, MaxLevel: 127, Flags: MetaRTT, RTTs: exampleRTTs()},
			{Participant: ID{0x33, 15: 3}, MeanLevel: 127, MaxLevel: 127, Flags: MetaRTT | MetaVideo, RTTs: exampleRTTs(),
				Video: MemberVideo{Layers: 1, LayerBps: [3]uint32{150000}}},
		}}}}
	// A sequenced report travels byte for byte, sequence included.
	seq := exampleRTTs()
	seq.Seq = 1_800_000_000_123
	b.Calls[0].Members = append(b.Calls[0].Members, MemberMetadata{Participant: ID{0x44, 15: 4}, MeanLevel: 127, MaxLevel: 127, Flags: MetaRTT, RTTs: seq})
	raw, err := b.Marshal(nil, k)
	require.NoError(t, err)
	require.Equal(t, b.MarshalSize(), len(raw))
	var d MetadataBatch
	require.NoError(t, d.Unmarshal(raw, k))
	require.Equal(t, b.Calls[0].Members, d.Calls[0].Members)
}

func examplePlacementMove() PlacementMove {
	return PlacementMove{Call: ID{0x11, 15: 1}, Participant: ID{0x22, 15: 2}, Partition: 7, Epoch: 3, Seq: 1,
		At: time.UnixMilli(1_800_000_000_123).UTC(), Reason: MoveReasonRTT, Conductor: "cond-a", To: "fwd-b"}
}

func TestPlacementMoveRoundTrip(t *testing.T) {
	k := testClusterKey(t)
	m := examplePlacementMove()
	raw, err := m.Marshal(nil, k)
	require.NoError(t, err)
	require.Len(t, raw, clusterMsgOverhead+placementMoveFixedLen+len("cond-a")+len("fwd-b"))
	typ, err := PeekClusterMsgType(raw)
	require.NoError(t, err)
	require.Equal(t, ClusterMsgPlacementMove, typ)
	var d PlacementMove
	require.NoError(t, d.Unmarshal(raw, k))
	require.Equal(t, m, d)
	raw[len(raw)-1] ^= 1
	require.ErrorIs(t, d.Unmarshal(raw, k), ErrClusterMsgAuth)
	for _, bad := range []func(*PlacementMove){
		func(m *PlacementMove) { m.Epoch = 0 },
		func(m *PlacementMove) { m.Reason = 9 },
		func(m *PlacementMove) { m.To = "" },
		func(m *PlacementMove) { m.Participant = ID{} },
	} {
		m := examplePlacementMove()
		bad(&m)
		_, err := m.Marshal(nil, k)
		require.ErrorIs(t, err, ErrClusterMsgInvalid)
	}
}

// FuzzCandidateRTTs: whatever a device sends, the parse never panics, never
// allocates, and what it accepts encodes back to the same bytes.
func FuzzCandidateRTTs(f *testing.F) {
	f.Add(exampleRTTsWire)
	f.Add(exampleSeqRTTsWire)
	f.Add([]byte{1, 0, 1, 0, 80, 0, 0, 0, 1, 127, 0, 0, 1})
	f.Add([]byte{0x81, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 80, 0, 0, 0, 1, 127, 0, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		var c CandidateRTTs
		if err := ParseCandidateRTTs(b, &c); err != nil {
			if c != (CandidateRTTs{}) {
				t.Fatal("a rejected report left entries")
			}
			return
		}
		out, err := c.Append(nil)
		if err != nil || string(out) != string(b) {
			t.Fatalf("accepted %x re-encodes to %x (%v)", b, out, err)
		}
	})
}

// FuzzPlacementMove: arbitrary sealed bodies never panic, and what opens
// re-encodes to the same message.
func FuzzPlacementMove(f *testing.F) {
	k := testClusterKey(f)
	m := examplePlacementMove()
	raw, err := m.Marshal(nil, k)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(raw)
	f.Add(raw[:len(raw)-3])
	f.Fuzz(func(t *testing.T, b []byte) {
		var d PlacementMove
		if d.Unmarshal(b, k) != nil {
			return
		}
		out, err := d.Marshal(nil, k)
		if err != nil || string(out) != string(b) {
			t.Fatalf("accepted move re-encodes differently (%v)", err)
		}
	})
}

// TestCandidateRTTSeedCorpora: the committed seed corpora are there (and
// FuzzX runs them as part of go test).
func TestCandidateRTTSeedCorpora(t *testing.T) {
	for _, dir := range []string{"FuzzCandidateRTTs", "FuzzPlacementMove"} {
		ents, err := os.ReadDir(filepath.Join("testdata", "fuzz", dir))
		require.NoError(t, err)
		require.NotEmpty(t, ents, dir)
	}
}
