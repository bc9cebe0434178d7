package protocol

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// loadSpillGolden is forwarder "f" at level 2 with nothing but the
// spill-over section: 2 joins refused with no region in reach, 12 referred
// to "uk" and 1 to "za" (README.md 7.6 shows the same bytes; the tag was
// computed with Python's hmac).
var loadSpillGolden = struct {
	msg  LoadReport
	wire []byte
}{
	msg: LoadReport{Forwarder: "f", Level: 2, Seq: 9, Started: time.UnixMilli(1_800_000_000_000).UTC(), At: clusterTestAt,
		Spill: LoadSpill{Refused: 2, To: []RegionSpill{{Region: "uk", Joins: 12}, {Region: "za", Joins: 1}}}},
	wire: append(append([]byte{
		0x43, 0x52, 0x4c, 0x43, // "CRLC"
		0x01, 0x05, 0x00, 0x96, // version 1, type 5, body 150 bytes
		0x20, 0x01, 0x02, 0x00, // flags: spill-over; id length 1, level 2, reserved
		0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, // sequence 9
		0x00, 0x00, 0x01, 0xa3, 0x18, 0x5c, 0x50, 0x00, // started 1800000000000 ms
		0x00, 0x00, 0x01, 0xa3, 0x18, 0x5c, 0x50, 0x7b, // at 1800000000123 ms
	}, make([]byte, 90)...), // sessions .. signals: all zero
		0x66,                                           // "f"
		0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, // 2 refused, no region in reach
		0x02,           // two rows
		0x02, 'u', 'k', // region "uk"
		0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, // 12 joins referred
		0x02, 'z', 'a', // region "za"
		0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, // 1 join referred
		0x65, 0x74, 0xfa, 0x20, 0xa8, 0x9b, 0x8d, 0xc9, // tag
		0x89, 0xf1, 0x77, 0x8e, 0xe7, 0xc1, 0xb2, 0x8b,
	),
}

// loadSpillMsg is loadRTTMsg (every other section) with a spill-over
// section that also counts joins sent to regions beyond those named.
func loadSpillMsg() LoadReport {
	r := loadRTTMsg()
	r.Spill = LoadSpill{Refused: 5, To: []RegionSpill{{Region: "", Joins: 3}, {Region: "us", Joins: 70000}}}
	return r
}

func spillBody(edit func(b []byte) []byte) []byte {
	r := loadSpillMsg()
	g, err := r.Marshal(nil, ClusterKey{})
	if err != nil {
		panic(err)
	}
	return edit(bytes.Clone(g[clusterMsgHeaderLen : len(g)-clusterMsgTagLen]))
}

// The spill-over section ends the body, after the trunk RTT section (or
// whatever precedes it); a report that counts nothing carries none and is
// byte for byte the report of before the section.
func TestLoadReportSpill(t *testing.T) {
	k := testClusterKey(t)
	b, err := loadSpillGolden.msg.Marshal(nil, k)
	require.NoError(t, err)
	require.Equal(t, loadSpillGolden.wire, b)
	var got LoadReport
	require.NoError(t, got.Unmarshal(loadSpillGolden.wire, k))
	require.Equal(t, loadSpillGolden.msg, got)

	all := loadSpillMsg()
	b, err = all.Marshal(nil, k)
	require.NoError(t, err)
	body := b[clusterMsgHeaderLen : len(b)-clusterMsgTagLen]
	require.Equal(t, byte(0x3c), body[0]&0x3c, "adaptation, operations, trunk RTTs, spill-over")
	require.Equal(t, []byte{
		0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, // 5 refused, no region in reach
		0x02,                                           // two rows
		0x00,                                           // region "": those beyond the named
		0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, // 3 joins
		0x02, 'u', 's', // region "us"
		0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x11, 0x70, // 70000 joins
	}, body[len(body)-29:])
	require.NoError(t, got.Unmarshal(b, k))
	require.Equal(t, all, got)

	for _, s := range []LoadSpill{{Refused: 1}, {To: []RegionSpill{{Region: "a", Joins: 1}}}} {
		r := loadReportGolden.msg
		r.Spill = s
		b, err := r.Marshal(nil, k)
		require.NoError(t, err)
		require.Len(t, b, len(loadReportGolden.wire)+9+len(s.To)*10, "refused only, or rows only")
		require.NoError(t, got.Unmarshal(b, k))
		require.Equal(t, r, got)
	}

	none := loadRTTMsg()
	b, err = none.Marshal(nil, k)
	require.NoError(t, err)
	require.Zero(t, b[clusterMsgHeaderLen]&0x20, "nothing counted: no flag, no section")
}

func TestLoadReportSpillReject(t *testing.T) {
	k := testClusterKey(t)
	for _, tt := range []struct {
		name, msg string
		rows      []RegionSpill
	}{
		{"unordered", "ascending", []RegionSpill{{Region: "b", Joins: 1}, {Region: "a", Joins: 1}}},
		{"duplicate", "ascending", []RegionSpill{{Region: "a", Joins: 1}, {Region: "a", Joins: 1}}},
		{"two unnamed", "ascending", []RegionSpill{{Joins: 1}, {Joins: 1}}},
		{"no join", "counts no join", []RegionSpill{{Region: "a"}}},
		{"bad region", "printable", []RegionSpill{{Region: "e u", Joins: 1}}},
		{"long region", "want 0..32", []RegionSpill{{Region: strings.Repeat("x", 33), Joins: 1}}},
		{"too many", "at most 32", make([]RegionSpill, 33)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := (&LoadReport{Forwarder: "f", Spill: LoadSpill{To: tt.rows}}).Marshal(nil, k)
			require.ErrorIs(t, err, ErrClusterMsgInvalid)
			require.ErrorContains(t, err, tt.msg)
		})
	}
	golden := func(edit func(b []byte) []byte) []byte {
		g := loadSpillGolden.wire
		return edit(bytes.Clone(g[clusterMsgHeaderLen : len(g)-clusterMsgTagLen]))
	}
	n := len(loadSpillGolden.wire) - clusterMsgHeaderLen - clusterMsgTagLen
	for _, tt := range []struct {
		name, msg string
		body      []byte
	}{
		{"flag without section", "truncated", rttBody(func(b []byte) []byte { b[0] |= 0x20; return b })},
		{"refused truncated", "truncated", golden(func(b []byte) []byte { return b[:n-28] })},
		{"nothing counted", "nothing counted", rttBody(func(b []byte) []byte { b[0] |= 0x20; return append(b, make([]byte, 9)...) })},
		{"row truncated", "row 1 truncated", golden(func(b []byte) []byte { return b[:n-1] })},
		{"region length past the end", "row 1 truncated", golden(func(b []byte) []byte { b[n-11] = 9; return b })},
		{"trailing", "1 trailing bytes", golden(func(b []byte) []byte { return append(b, 0) })},
		{"section without the flag", "31 trailing bytes", golden(func(b []byte) []byte { b[0] &^= 0x20; return b })},
		{"unordered", "ascending", golden(func(b []byte) []byte { b[n-10] = 'a'; return b })},
		{"zero joins", "counts no join", golden(func(b []byte) []byte { b[n-1] = 0; return b })},
		{"33 rows", "at most 32", golden(func(b []byte) []byte { b[n-23] = 33; return b })},
		{"region not printable", "printable", golden(func(b []byte) []byte { b[n-21] = ' '; return b })},
		{"after ops, truncated", "spill-over section truncated", opsBody(func(b []byte) []byte { b[0] |= 0x20; return append(b, 0, 0, 1) })},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var r LoadReport
			err := r.Unmarshal(rawClusterMsg(k, byte(ClusterMsgLoadReport), tt.body), k)
			require.ErrorIs(t, err, ErrClusterMsgInvalid)
			require.ErrorContains(t, err, tt.msg)
			require.Equal(t, LoadReport{}, r)
		})
	}
	// The operations section followed by the spill-over section alone.
	r := loadOpsMsg()
	r.Spill.Refused = 1
	b, err := r.Marshal(nil, k)
	require.NoError(t, err)
	var got LoadReport
	require.NoError(t, got.Unmarshal(b, k))
	require.Equal(t, r, got)
}

// spillFuzzSeeds are FuzzLoadReport's seeds for the spill-over section.
func spillFuzzSeeds(k ClusterKey) map[string][]byte {
	g := loadSpillGolden.wire
	n := len(g) - clusterMsgHeaderLen - clusterMsgTagLen
	golden := func(edit func(b []byte) []byte) []byte {
		return rawClusterMsg(k, byte(ClusterMsgLoadReport), edit(bytes.Clone(g[clusterMsgHeaderLen:len(g)-clusterMsgTagLen])))
	}
	return map[string][]byte{
		"spill-golden":     g,
		"spill-full":       rawClusterMsg(k, byte(ClusterMsgLoadReport), spillBody(func(b []byte) []byte { return b })),
		"spill-no-flag":    golden(func(b []byte) []byte { b[0] &^= 0x20; return b }),
		"spill-empty":      rawClusterMsg(k, byte(ClusterMsgLoadReport), rttBody(func(b []byte) []byte { b[0] |= 0x20; return append(b, make([]byte, 9)...) })),
		"spill-short":      golden(func(b []byte) []byte { return b[:n-1] }),
		"spill-unordered":  golden(func(b []byte) []byte { b[n-10] = 'a'; return b }),
		"spill-zero-joins": golden(func(b []byte) []byte { b[n-1] = 0; return b }),
	}
}

// The wire spec's spill-over example (README 7.6) is loadSpillGolden, byte
// for byte.
func TestLoadReportSpillReadmeExample(t *testing.T) {
	require.Equal(t, loadSpillGolden.wire, readmeHexExample(t, "load-spill"))
}
