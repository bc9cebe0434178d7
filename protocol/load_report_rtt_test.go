package protocol

import (
	"bytes"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// loadRTTMsg is loadOpsMsg with the trunk RTT section: from "e-u", 41.5 ms
// ± 1 ms to "us", 120 ms ± 3.2 ms to "za".
func loadRTTMsg() LoadReport {
	r := loadOpsMsg()
	r.RTTs = []RegionRTT{{Region: "us", RTT: 41500 * time.Microsecond, Dev: time.Millisecond},
		{Region: "za", RTT: 120 * time.Millisecond, Dev: 3200 * time.Microsecond}}
	return r
}

func rttBody(edit func(b []byte) []byte) []byte {
	r := loadRTTMsg()
	g, err := r.Marshal(nil, ClusterKey{})
	if err != nil {
		panic(err)
	}
	return edit(bytes.Clone(g[clusterMsgHeaderLen : len(g)-clusterMsgTagLen]))
}

// The trunk RTT section follows the operations section (or the id, or the
// adaptation section): count, then rows of region, RTT and deviation in
// microseconds.
func TestLoadReportRTTs(t *testing.T) {
	k := testClusterKey(t)
	r := loadRTTMsg()
	b, err := r.Marshal(nil, k)
	require.NoError(t, err)
	body := b[clusterMsgHeaderLen : len(b)-clusterMsgTagLen]
	require.Equal(t, byte(0x10), body[0]&0x10)
	require.Equal(t, []byte{
		0x02,           // two rows
		0x02, 'u', 's', // region "us"
		0x00, 0x00, 0xa2, 0x1c, // 41500 µs
		0x00, 0x00, 0x03, 0xe8, // ± 1000 µs
		0x02, 'z', 'a', // region "za"
		0x00, 0x01, 0xd4, 0xc0, // 120000 µs
		0x00, 0x00, 0x0c, 0x80, // ± 3200 µs
	}, body[len(body)-23:])
	var got LoadReport
	require.NoError(t, got.Unmarshal(b, k))
	require.Equal(t, r, got)

	bare := LoadReport{Forwarder: "f", RTTs: []RegionRTT{{Region: "x", RTT: time.Millisecond}}}
	b, err = bare.Marshal(nil, k)
	require.NoError(t, err)
	require.NoError(t, got.Unmarshal(b, k))
	require.Equal(t, bare, got, "without the other sections")

	m := RegionRTTs{}
	m.Add(&r)
	other := loadRTTMsg()
	other.RTTs = []RegionRTT{{Region: "za", RTT: 110 * time.Millisecond}}
	m.Add(&other)
	m.Add(&bare) // no region: nothing
	require.Equal(t, RegionRTTs{"e-u": {"us": 41500 * time.Microsecond, "za": 110 * time.Millisecond}}, m)
}

func TestLoadReportRTTsReject(t *testing.T) {
	k := testClusterKey(t)
	for _, tt := range []struct {
		name, msg string
		rows      []RegionRTT
	}{
		{"no region", "without a region", []RegionRTT{{}}},
		{"unordered", "ascending", []RegionRTT{{Region: "b"}, {Region: "a"}}},
		{"duplicate", "ascending", []RegionRTT{{Region: "a"}, {Region: "a"}}},
		{"negative", "out of range", []RegionRTT{{Region: "a", RTT: -1}}},
		{"too long", "out of range", []RegionRTT{{Region: "a", Dev: 2 * maxRTTField}}},
		{"too many", "at most 32", make([]RegionRTT, 33)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := (&LoadReport{Forwarder: "f", RTTs: tt.rows}).Marshal(nil, k)
			require.ErrorIs(t, err, ErrClusterMsgInvalid)
			require.ErrorContains(t, err, tt.msg)
		})
	}
	for _, tt := range []struct {
		name, msg string
		body      []byte
	}{
		{"flag without rows", "no rows", opsBody(func(b []byte) []byte { b[0] |= 0x10; return b })},
		{"zero rows", "no rows", opsBody(func(b []byte) []byte { b[0] |= 0x10; return append(b, 0) })},
		{"row truncated", "row 1 truncated", rttBody(func(b []byte) []byte { return b[:len(b)-1] })},
		{"trailing", "1 trailing bytes", rttBody(func(b []byte) []byte { return append(b, 0) })},
		{"rows without the flag", "operations section of 59 bytes", rttBody(func(b []byte) []byte { b[0] &^= 0x10; return b })},
		{"unordered", "ascending", rttBody(func(b []byte) []byte { b[len(b)-10] = 'a'; return b })},
		{"33 rows", "at most 32", opsBody(func(b []byte) []byte { b[0] |= 0x10; return append(b, 33) })},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var r LoadReport
			err := r.Unmarshal(rawClusterMsg(k, byte(ClusterMsgLoadReport), tt.body), k)
			require.ErrorIs(t, err, ErrClusterMsgInvalid)
			require.ErrorContains(t, err, tt.msg)
			require.Equal(t, LoadReport{}, r)
		})
	}
}
