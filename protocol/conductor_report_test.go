package protocol

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var _ clusterMsg = (*ConductorReport)(nil)

// conductorReportGoldenMsg is conductor "cnd-a" in region eu with one
// speaker switch and one layer cut; conductorReportGoldenWire is it sealed
// with testClusterKey (README.md 7.8 shows the same bytes).
var conductorReportGoldenMsg = ConductorReport{
	Conductor: "cnd-a", Region: "eu", Started: time.UnixMilli(1_800_000_000_000).UTC(), At: clusterTestAt, Seq: 9,
	Interval: time.Second, Calls: 12, Partitions: 3, Decisions: 4000, InInterval: 30,
	P50: 51 * time.Millisecond, P99: 98 * time.Millisecond, Max: 101 * time.Millisecond, EventsLost: 2,
	Events: []ConductorEvent{
		{Kind: ConductorSpeaker, At: clusterTestAt, Call: clusterTestCall, Participant: clusterTestPart},
		{Kind: ConductorCut, At: clusterTestAt, Call: clusterTestCall, Participant: clusterTestPart, Other: ID{0x33, 15: 0x33}, From: 2, To: 1},
	},
}

var conductorReportGoldenWire = []byte{
	0x43, 0x52, 0x4c, 0x43, // "CRLC"
	0x01, 0x06, 0x00, 0xc3, // version 1, type 6, body 195 bytes
	0x00, 0x05, 0x02, 0x00, // flags 0, id length 5, region length 2, reserved
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, // sequence 9
	0x00, 0x00, 0x01, 0xa3, 0x18, 0x5c, 0x50, 0x00, // started 1800000000000 ms
	0x00, 0x00, 0x01, 0xa3, 0x18, 0x5c, 0x50, 0x7b, // at 1800000000123 ms
	0x00, 0x00, 0x03, 0xe8, // interval 1000 ms
	0x00, 0x00, 0x00, 0x0c, // 12 calls
	0x00, 0x03, 0x00, 0x02, // 3 partitions, 2 events
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0f, 0xa0, // 4000 decisions since started
	0x00, 0x00, 0x00, 0x1e, // 30 in the interval
	0x00, 0x00, 0xc7, 0x38, // p50 51000 us
	0x00, 0x01, 0x7e, 0xd0, // p99 98000 us
	0x00, 0x01, 0x8a, 0x88, // max 101000 us
	0x00, 0x00, 0x00, 0x02, // 2 events lost
	0x63, 0x6e, 0x64, 0x2d, 0x61, // "cnd-a"
	0x65, 0x75, // "eu"
	0x01, 0x00, 0x00, 0x00, // event 1: speaker, ranks 0, reserved
	0x00, 0x00, 0x01, 0xa3, 0x18, 0x5c, 0x50, 0x7b, // at
	0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, // call
	0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, // new dominant
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // previous: nobody
	0x03, 0x02, 0x01, 0x00, // event 2: layer cut, from rank 2 to rank 1, reserved
	0x00, 0x00, 0x01, 0xa3, 0x18, 0x5c, 0x50, 0x7b, // at
	0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, // call
	0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, // receiver
	0x33, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x33, // sender
	0x7c, 0xb7, 0x83, 0x13, 0xce, 0xcd, 0x93, 0xd7, // tag
	0xf1, 0x93, 0x66, 0x5a, 0xc1, 0x59, 0xf3, 0x3e,
}

func TestConductorReportGolden(t *testing.T) {
	k := testClusterKey(t)
	b, err := conductorReportGoldenMsg.Marshal(nil, k)
	require.NoError(t, err)
	require.Equal(t, conductorReportGoldenWire, b)
	var r ConductorReport
	require.NoError(t, r.Unmarshal(b, k))
	require.Equal(t, conductorReportGoldenMsg, r)
	typ, err := PeekClusterMsgType(b)
	require.NoError(t, err)
	require.Equal(t, ClusterMsgConductorReport, typ)
	require.Equal(t, "conductor-report", typ.String())
	require.Equal(t, "layer_cut", ConductorCut.String())
}

// Forged, altered, malformed and out-of-rule reports are refused with the
// sentinels and leave the zero report.
func TestConductorReportRejects(t *testing.T) {
	k := testClusterKey(t)
	other := k
	other[0] ^= 1
	forged, err := conductorReportGoldenMsg.Marshal(nil, other)
	require.NoError(t, err)
	for name, tt := range map[string]struct {
		b    []byte
		want error
	}{
		"other key":   {forged, ErrClusterMsgAuth},
		"load report": {loadReportGolden.wire, ErrClusterMsgInvalid},
	} {
		var r ConductorReport
		require.ErrorIs(t, r.Unmarshal(tt.b, k), tt.want, name)
		require.Equal(t, ConductorReport{}, r, name)
	}
	for name, b := range conductorReportFuzzSeeds(t) {
		var r ConductorReport
		if err := r.Unmarshal(b, k); err != nil {
			require.True(t, errors.Is(err, ErrClusterMsgInvalid) || errors.Is(err, ErrClusterMsgAuth), "%s: %v", name, err)
			require.Equal(t, ConductorReport{}, r, name)
		}
	}
	for name, bad := range map[string]func(r *ConductorReport){
		"no id":        func(r *ConductorReport) { r.Conductor = "" },
		"region space": func(r *ConductorReport) { r.Region = "eu west" },
		"p99 ns":       func(r *ConductorReport) { r.P99 = time.Nanosecond },
		"negative":     func(r *ConductorReport) { r.Max = -time.Microsecond },
		"speaker rank": func(r *ConductorReport) {
			r.Events = []ConductorEvent{{Kind: ConductorSpeaker, Call: clusterTestCall, From: 1}}
		},
		"kind 9":  func(r *ConductorReport) { r.Events = []ConductorEvent{{Kind: 9, Call: clusterTestCall}} },
		"no call": func(r *ConductorReport) { r.Events = []ConductorEvent{{Kind: ConductorSpeaker}} },
		"layer no rx": func(r *ConductorReport) {
			r.Events = []ConductorEvent{{Kind: ConductorLayer, Call: clusterTestCall, Other: clusterTestPart}}
		},
		"too many": func(r *ConductorReport) { r.Events = make([]ConductorEvent, MaxConductorEvents+1) },
	} {
		r := conductorReportGoldenMsg
		r.Events = nil
		bad(&r)
		out, err := r.Marshal([]byte("x"), k)
		require.ErrorIs(t, err, ErrClusterMsgInvalid, name)
		require.Equal(t, []byte("x"), out, name)
	}
}

func TestConductorReportNewer(t *testing.T) {
	a := ConductorReport{Started: time.UnixMilli(1000), Seq: 5}
	b := a
	b.Seq = 6
	require.True(t, b.Newer(&a))
	require.False(t, a.Newer(&b))
	require.False(t, a.Newer(&a), "a report sent again is not newer")
	c := ConductorReport{Started: time.UnixMilli(2000), Seq: 1}
	require.True(t, c.Newer(&b), "a restarted process begins a new series")
}

// conductorReportBody is the golden body (no envelope) changed by edit.
func conductorReportBody(edit func(b []byte) []byte) []byte {
	w := conductorReportGoldenWire
	return edit(bytes.Clone(w[clusterMsgHeaderLen : len(w)-clusterMsgTagLen]))
}

func conductorReportFuzzSeeds(t testing.TB) map[string][]byte {
	t.Helper()
	k := testClusterKey(t)
	g := conductorReportGoldenWire
	minimal, err := (&ConductorReport{Conductor: "c"}).Marshal(nil, k)
	require.NoError(t, err)
	altered := bytes.Clone(g)
	altered[clusterMsgHeaderLen+35] ^= 0x01
	raw := func(edit func(b []byte) []byte) []byte {
		return rawClusterMsg(k, byte(ClusterMsgConductorReport), conductorReportBody(edit))
	}
	return map[string][]byte{
		"golden":         g,
		"minimal":        minimal,
		"truncated":      g[:len(g)-1],
		"altered":        altered,
		"trailing-byte":  append(bytes.Clone(g), 0),
		"empty":          {},
		"envelope-only":  rawClusterMsg(k, byte(ClusterMsgConductorReport), nil),
		"load-report":    loadReportGolden.wire,
		"reserved-bytes": raw(func(b []byte) []byte { b[0], b[3] = 0xff, 0xff; b[conductorReportFixedLen+7+3] = 0xff; return b }),
		"id-length-off":  raw(func(b []byte) []byte { b[1] = 6; return b }),
		"region-long":    raw(func(b []byte) []byte { b[2] = 33; return b }),
		"events-more":    raw(func(b []byte) []byte { b[39] = 3; return b }),
		"events-65":      raw(func(b []byte) []byte { b[39] = 65; return b }),
		"event-kind-0":   raw(func(b []byte) []byte { b[conductorReportFixedLen+7] = 0; return b }),
		"event-short":    raw(func(b []byte) []byte { return b[:len(b)-1] }),
		"speaker-ranks":  raw(func(b []byte) []byte { b[conductorReportFixedLen+7+1] = 2; return b }),
		"fixed-only":     raw(func(b []byte) []byte { return b[:conductorReportFixedLen] }),
	}
}

// FuzzConductorReport: decoding never panics and fails only with the
// cluster sentinels, leaving the zero report; whatever decodes re-encodes
// to as many bytes and decodes equal. Each input is also tried with its
// tag recomputed, so mutated bodies reach the body checks.
func FuzzConductorReport(f *testing.F) {
	for _, b := range conductorReportFuzzSeeds(f) {
		f.Add(b)
	}
	k := testClusterKey(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		check := func(b []byte) error {
			var r ConductorReport
			if err := r.Unmarshal(b, k); err != nil {
				if !errors.Is(err, ErrClusterMsgInvalid) && !errors.Is(err, ErrClusterMsgAuth) {
					t.Fatalf("error without a sentinel: %v", err)
				}
				if !reflect.DeepEqual(r, ConductorReport{}) {
					t.Fatalf("rejected report left %+v", r)
				}
				return err
			}
			out, err := r.Marshal(nil, k)
			if err != nil {
				t.Fatalf("decoded %+v but cannot encode it: %v", r, err)
			}
			if len(out) != len(b) {
				t.Fatalf("re-encoded to %d bytes from %d", len(out), len(b))
			}
			var r2 ConductorReport
			if err := r2.Unmarshal(out, k); err != nil || !reflect.DeepEqual(r, r2) {
				t.Fatalf("round trip: %+v -> %x -> %+v (%v)", r, out, r2, err)
			}
			return nil
		}
		if check(b) == nil || len(b) < clusterMsgOverhead {
			return
		}
		checkResealed(t, k, b, check)
	})
}
