package protocol

import (
	"bytes"
	"errors"
	"maps"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var _ clusterMsg = (*LoadReport)(nil)

// loadReportGolden is fwd-b at level 2 with Redis away, sealed with
// testClusterKey (README.md 7.6 shows the same bytes).
var loadReportGolden = struct {
	msg  LoadReport
	wire []byte
}{
	msg: LoadReport{
		Forwarder: "fwd-b", Started: time.UnixMilli(1_800_000_000_000).UTC(), At: clusterTestAt, Seq: 7,
		Level: 2, Signals: [5]uint16{812, 640, 10, 300, 450}, Sessions: 300, CallsOneToOne: 40, CallsGroup: 12,
		Admitted: [6]uint32{100, 1, 2, 3, 4, 5}, Refused: [6]uint32{6, 7, 8, 0, 0, 0},
		StateDegraded: true, StateQueued: 3, AudioMuted: 1000, ShedVideo: 250,
	},
	wire: []byte{
		0x43, 0x52, 0x4c, 0x43, // "CRLC"
		0x01, 0x05, 0x00, 0x7b, // version 1, type 5, body 123 bytes
		0x01, 0x05, 0x02, 0x00, // flags: state degraded; id length 5, level 2, reserved
		0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, // sequence 7
		0x00, 0x00, 0x01, 0xa3, 0x18, 0x5c, 0x50, 0x00, // started 1800000000000 ms
		0x00, 0x00, 0x01, 0xa3, 0x18, 0x5c, 0x50, 0x7b, // at 1800000000123 ms
		0x00, 0x00, 0x01, 0x2c, // 300 sessions
		0x00, 0x00, 0x00, 0x28, // 40 one-to-one calls
		0x00, 0x00, 0x00, 0x0c, // 12 group calls
		0x00, 0x00, 0x00, 0x03, // 3 state changes queued
		0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0xe8, // 1000 audio packets held back
		0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xfa, // 250 video packets shed
		0x00, 0x00, 0x00, 0x64, // admitted unclassified: 100
		0x00, 0x00, 0x00, 0x01, // admitted new group call: 1
		0x00, 0x00, 0x00, 0x02, // admitted new one-to-one call: 2
		0x00, 0x00, 0x00, 0x03, // admitted new group member: 3
		0x00, 0x00, 0x00, 0x04, // admitted second party: 4
		0x00, 0x00, 0x00, 0x05, // admitted rejoin: 5
		0x00, 0x00, 0x00, 0x06, // refused unclassified: 6
		0x00, 0x00, 0x00, 0x07, // refused new group call: 7
		0x00, 0x00, 0x00, 0x08, // refused new one-to-one call: 8
		0x00, 0x00, 0x00, 0x00, // refused new group member: 0
		0x00, 0x00, 0x00, 0x00, // refused second party: 0
		0x00, 0x00, 0x00, 0x00, // refused rejoin: 0
		0x03, 0x2c, 0x02, 0x80, 0x00, 0x0a, // signals: cpu 812, packets 640, queue drops 10 permille
		0x01, 0x2c, 0x01, 0xc2, // memory 300, sessions 450 permille
		0x66, 0x77, 0x64, 0x2d, 0x62, // "fwd-b"
		0x0c, 0xd2, 0xe7, 0x40, 0xb2, 0xe4, 0x3b, 0xbc, // tag (checked with Python's hmac)
		0xa5, 0x94, 0x14, 0x61, 0x7e, 0x93, 0x81, 0x56,
	},
}

// loadAdaptGolden is loadReportGolden with the adaptation section (README.md
// 7.6 shows the same bytes): 5000 packets NACKed, 4200 resent (4.62 MB),
// 300 not cached, 120 over budget (and so 380 bounded), 36 probes, 9 key
// frames asked, 14 subscriptions applied.
var loadAdaptGolden = struct {
	msg  LoadReport
	wire []byte
}{
	msg: func() LoadReport {
		r := loadReportGolden.msg
		r.HasAdapt = true
		r.Adapt = LoadAdapt{Nacked: 5000, Resent: 4200, NotCached: 300, OverBudget: 120, ResentBytes: 4_620_000,
			Probes: 36, KeyFramesAsked: 9, Subscriptions: 14}
		return r
	}(),
	wire: []byte{
		0x43, 0x52, 0x4c, 0x43, // "CRLC"
		0x01, 0x05, 0x00, 0xbb, // version 1, type 5, body 187 bytes
		0x05, 0x05, 0x02, 0x00, // flags: state degraded, adaptation; id length 5, level 2, reserved
		0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, // sequence 7
		0x00, 0x00, 0x01, 0xa3, 0x18, 0x5c, 0x50, 0x00, // started 1800000000000 ms
		0x00, 0x00, 0x01, 0xa3, 0x18, 0x5c, 0x50, 0x7b, // at 1800000000123 ms
		0x00, 0x00, 0x01, 0x2c, // 300 sessions
		0x00, 0x00, 0x00, 0x28, // 40 one-to-one calls
		0x00, 0x00, 0x00, 0x0c, // 12 group calls
		0x00, 0x00, 0x00, 0x03, // 3 state changes queued
		0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0xe8, // 1000 audio packets held back
		0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xfa, // 250 video packets shed
		0x00, 0x00, 0x00, 0x64, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x02, // admitted 100, 1, 2,
		0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x05, // 3, 4, 5
		0x00, 0x00, 0x00, 0x06, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x08, // refused 6, 7, 8,
		0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 0, 0, 0
		0x03, 0x2c, 0x02, 0x80, 0x00, 0x0a, // signals: cpu 812, packets 640, queue drops 10 permille
		0x01, 0x2c, 0x01, 0xc2, // memory 300, sessions 450 permille
		0x66, 0x77, 0x64, 0x2d, 0x62, // "fwd-b"
		0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x13, 0x88, // 5000 packets NACKed
		0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x68, // 4200 resent
		0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x2c, // 300 not cached
		0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x78, // 120 over the leg's budget
		0x00, 0x00, 0x00, 0x00, 0x00, 0x46, 0x7e, 0xe0, // 4620000 bytes retransmitted
		0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x24, // 36 probes
		0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, // 9 key frames asked
		0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0e, // 14 subscriptions applied
		0x25, 0x81, 0x2c, 0xa3, 0x0d, 0xaa, 0x18, 0x5c, // tag (checked with Python's hmac)
		0x1a, 0x4c, 0x6a, 0x8e, 0x0c, 0x27, 0xaf, 0x46,
	},
}

func TestLoadReportGolden(t *testing.T) {
	k := testClusterKey(t)
	for _, g := range []struct {
		name string
		msg  LoadReport
		wire []byte
	}{
		{"without adaptation", loadReportGolden.msg, loadReportGolden.wire},
		{"with adaptation", loadAdaptGolden.msg, loadAdaptGolden.wire},
	} {
		t.Run(g.name, func(t *testing.T) {
			b, err := g.msg.Marshal([]byte("prefix"), k)
			require.NoError(t, err)
			require.Equal(t, append([]byte("prefix"), g.wire...), b, "Marshal appends")

			typ, err := PeekClusterMsgType(g.wire)
			require.NoError(t, err)
			require.Equal(t, ClusterMsgLoadReport, typ)
			require.Equal(t, "load-report", typ.String())

			var r LoadReport
			require.NoError(t, r.Unmarshal(g.wire, k))
			require.Equal(t, g.msg, r)
			m, err := decodeClusterMsg(g.wire, k)
			require.NoError(t, err)
			require.Equal(t, &g.msg, m)
		})
	}
	// The section is appended: everything before it is the report without
	// it but for the flag and the body length.
	with, without := loadAdaptGolden.wire, loadReportGolden.wire
	n := len(without) - clusterMsgTagLen
	require.Equal(t, without[8+1:n], with[8+1:n])
	require.Len(t, with, len(without)+loadAdaptLen)
}

// TestLoadReportAdaptAllocs: the adaptation section costs the decoder no
// allocation (the id string is the decode's only one, with or without it).
func TestLoadReportAdaptAllocs(t *testing.T) {
	k := testClusterKey(t)
	var r LoadReport
	allocs := func(wire []byte) float64 {
		return testing.AllocsPerRun(100, func() {
			if err := r.Unmarshal(wire, k); err != nil {
				t.Fatal(err)
			}
		})
	}
	require.Equal(t, allocs(loadReportGolden.wire), allocs(loadAdaptGolden.wire))
	require.LessOrEqual(t, allocs(loadAdaptGolden.wire), 1.0)
}

func TestLoadReportRoundTrip(t *testing.T) {
	k := testClusterKey(t)
	zone := time.FixedZone("x", 3600)
	for _, tt := range []struct {
		name     string
		in, want LoadReport
	}{
		{"minimal", LoadReport{Forwarder: "f"}, LoadReport{Forwarder: "f"}},
		{"golden", loadReportGolden.msg, loadReportGolden.msg},
		{
			"extremes",
			LoadReport{
				Forwarder: strings.Repeat("~", 64), Started: time.UnixMilli(-5).In(zone), At: time.UnixMilli(1<<62 + 999).In(zone),
				Seq: 1<<64 - 1, Level: MaxThrottleLevel, Signals: [5]uint16{65535, 0, 1000, 1, 65535},
				Sessions: 1<<32 - 1, CallsOneToOne: 1<<32 - 1, CallsGroup: 1<<32 - 1,
				Admitted: [6]uint32{1<<32 - 1, 0, 1, 2, 3, 1<<32 - 1}, Refused: [6]uint32{9, 8, 7, 6, 5, 1<<32 - 1},
				StateDegraded: true, Draining: true, StateQueued: 1<<32 - 1, AudioMuted: 1<<64 - 1, ShedVideo: 1<<64 - 1,
			},
			LoadReport{
				Forwarder: strings.Repeat("~", 64), Started: time.UnixMilli(-5).UTC(), At: time.UnixMilli(1<<62 + 999).UTC(),
				Seq: 1<<64 - 1, Level: MaxThrottleLevel, Signals: [5]uint16{65535, 0, 1000, 1, 65535},
				Sessions: 1<<32 - 1, CallsOneToOne: 1<<32 - 1, CallsGroup: 1<<32 - 1,
				Admitted: [6]uint32{1<<32 - 1, 0, 1, 2, 3, 1<<32 - 1}, Refused: [6]uint32{9, 8, 7, 6, 5, 1<<32 - 1},
				StateDegraded: true, Draining: true, StateQueued: 1<<32 - 1, AudioMuted: 1<<64 - 1, ShedVideo: 1<<64 - 1,
			},
		},
		{"golden with adaptation", loadAdaptGolden.msg, loadAdaptGolden.msg},
		{"zero adaptation section", LoadReport{Forwarder: "f", HasAdapt: true}, LoadReport{Forwarder: "f", HasAdapt: true}},
		{
			"adaptation extremes",
			LoadReport{Forwarder: strings.Repeat("a", 64), HasAdapt: true, Adapt: LoadAdapt{1<<64 - 1, 1, 2, 3, 1<<64 - 1, 5, 6, 1<<64 - 1}},
			LoadReport{Forwarder: strings.Repeat("a", 64), HasAdapt: true, Adapt: LoadAdapt{1<<64 - 1, 1, 2, 3, 1<<64 - 1, 5, 6, 1<<64 - 1}},
		},
		{
			"sub-millisecond times are truncated",
			LoadReport{Forwarder: "fwd-a", Draining: true, At: time.Unix(1_800_000_000, 123_456_789)},
			LoadReport{Forwarder: "fwd-a", Draining: true, At: time.UnixMilli(1_800_000_000_123).UTC()},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b, err := tt.in.Marshal(nil, k)
			require.NoError(t, err)
			want := clusterMsgOverhead + loadReportFixedLen + len(tt.in.Forwarder)
			if tt.in.HasAdapt {
				want += loadAdaptLen
			}
			require.Len(t, b, want)
			var got LoadReport
			require.NoError(t, got.Unmarshal(b, k))
			require.Equal(t, tt.want, got)
			again, err := got.Marshal(nil, k)
			require.NoError(t, err)
			require.Equal(t, b, again)
		})
	}
}

func TestLoadReportMarshalRejects(t *testing.T) {
	k := testClusterKey(t)
	for _, tt := range []struct {
		name, msg string
		edit      func(r *LoadReport)
	}{
		{"empty forwarder id", "forwarder id of 0 bytes", func(r *LoadReport) { r.Forwarder = "" }},
		{"forwarder id 65 bytes", "65 bytes", func(r *LoadReport) { r.Forwarder = strings.Repeat("f", 65) }},
		{"forwarder id with space", "not printable ASCII", func(r *LoadReport) { r.Forwarder = "fwd a" }},
		{"forwarder id not ASCII", "not printable ASCII", func(r *LoadReport) { r.Forwarder = "fwd-ü" }},
		{"level 5", "throttle level 5, want 0..4", func(r *LoadReport) { r.Level = 5 }},
		{"level 255", "throttle level 255", func(r *LoadReport) { r.Level = 255 }},
		{"started out of range", "started time", func(r *LoadReport) { r.Started = time.Unix(1<<62, 0) }},
		{"at out of range", "at time", func(r *LoadReport) { r.At = time.Unix(-1<<62, 0) }},
		{"adaptation counters without HasAdapt", "adaptation counters but not HasAdapt", func(r *LoadReport) { r.Adapt.Probes = 1 }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := loadReportGolden.msg
			tt.edit(&r)
			dst := []byte("keep")
			out, err := r.Marshal(dst, k)
			require.ErrorIs(t, err, ErrClusterMsgInvalid)
			require.ErrorContains(t, err, tt.msg)
			require.Equal(t, []byte("keep"), out, "dst is returned as it was")
		})
	}
}

// loadBody returns the golden body, edited.
func loadBody(edit func(b []byte) []byte) []byte {
	g := loadReportGolden.wire
	return edit(bytes.Clone(g[clusterMsgHeaderLen : len(g)-clusterMsgTagLen]))
}

// adaptBody returns the golden body with the adaptation section, edited.
func adaptBody(edit func(b []byte) []byte) []byte {
	g := loadAdaptGolden.wire
	return edit(bytes.Clone(g[clusterMsgHeaderLen : len(g)-clusterMsgTagLen]))
}

func TestLoadReportUnmarshalRejects(t *testing.T) {
	k := testClusterKey(t)
	for _, tt := range []struct {
		name, msg string
		body      []byte
	}{
		{"level 5", "throttle level 5", loadBody(func(b []byte) []byte { b[2] = 5; return b })},
		{"level 255", "throttle level 255", loadBody(func(b []byte) []byte { b[2] = 255; return b })},
		{"id length 0", "5 trailing bytes", loadBody(func(b []byte) []byte { b[1] = 0; return b })},
		{"id length too long", "forwarder id truncated", loadBody(func(b []byte) []byte { b[1] = 6; return b })},
		{"id length short", "1 trailing bytes", loadBody(func(b []byte) []byte { b[1] = 4; return b })},
		{"no id", "forwarder id truncated", loadBody(func(b []byte) []byte { return b[:loadReportFixedLen] })},
		{"short body", "body of 117 bytes", loadBody(func(b []byte) []byte { return b[:loadReportFixedLen-1] })},
		{"empty body", "body of 0 bytes", nil},
		{"id with space", "not printable ASCII", loadBody(func(b []byte) []byte { b[len(b)-2] = ' '; return b })},
		{"id 65 bytes", "65 bytes", loadBody(func(b []byte) []byte {
			b[1] = 65
			return append(b[:loadReportFixedLen], strings.Repeat("f", 65)...)
		})},
		{"adaptation flag without the section", "adaptation flag truncated: 0 bytes after an id of 5 bytes, want 64", loadBody(func(b []byte) []byte { b[0] |= 0x04; return b })},
		{"adaptation section short", "63 bytes after an id of 5 bytes, want 64", adaptBody(func(b []byte) []byte { return b[:len(b)-1] })},
		{"adaptation section long", "1 trailing bytes after the body", adaptBody(func(b []byte) []byte { return append(b, 0) })},
		{"section without the flag", "64 trailing bytes after the body", adaptBody(func(b []byte) []byte { b[0] &^= 0x04; return b })},
		{"adaptation, id length short", "1 trailing bytes after the body", adaptBody(func(b []byte) []byte { b[1] = 4; return b })},
		{"adaptation, id length long", "63 bytes after an id of 6 bytes, want 64", adaptBody(func(b []byte) []byte { b[1] = 6; return b })},
		{"operations flag without the section", "operations flag truncated", loadBody(func(b []byte) []byte { b[0] |= 0x08; return b })},
		{"operations section short", "operations section of 35 bytes, want 36", opsBody(func(b []byte) []byte { return b[:len(b)-1] })},
		{"operations section long", "operations section of 37 bytes, want 36", opsBody(func(b []byte) []byte { return append(b, 0) })},
		{"operations region with space", "region \"e u\"", opsBody(func(b []byte) []byte { b[len(b)-34] = ' '; return b })},
		{"operations region 33 bytes", "region of 33 bytes", opsBody(func(b []byte) []byte {
			n := len(b) - loadOpsCountersLen - 4
			b[n] = 33
			return append(append(b[:n+1], strings.Repeat("r", 33)...), make([]byte, loadOpsCountersLen)...)
		})},
		{"operations section without the flag", "36 trailing bytes after the body", opsBody(func(b []byte) []byte { b[0] &^= 0x08; return b })},
		{"adaptation, id length 0", "forwarder id of 0 bytes", adaptBody(func(b []byte) []byte {
			b[1] = 0
			return append(b[:loadReportFixedLen], b[len(b)-loadAdaptLen:]...)
		})},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := loadReportGolden.msg
			err := r.Unmarshal(rawClusterMsg(k, byte(ClusterMsgLoadReport), tt.body), k)
			require.ErrorIs(t, err, ErrClusterMsgInvalid)
			require.ErrorContains(t, err, tt.msg)
			require.Equal(t, LoadReport{}, r, "a rejected report leaves the zero value")
		})
	}

	t.Run("reserved bits are ignored", func(t *testing.T) {
		b := rawClusterMsg(k, byte(ClusterMsgLoadReport), loadBody(func(b []byte) []byte { b[0] |= 0xc0; b[3] = 0xff; return b }))
		var r LoadReport
		require.NoError(t, r.Unmarshal(b, k))
		require.Equal(t, loadReportGolden.msg, r)
		b = rawClusterMsg(k, byte(ClusterMsgLoadReport), adaptBody(func(b []byte) []byte { b[0] |= 0xc0; b[3] = 0xff; return b }))
		require.NoError(t, r.Unmarshal(b, k))
		require.Equal(t, loadAdaptGolden.msg, r)
	})
}

func TestLoadReportEnvelopeRejects(t *testing.T) {
	k := testClusterKey(t)
	wire := loadReportGolden.wire
	unmarshal := func(b []byte, k ClusterKey) error {
		t.Helper()
		r := loadReportGolden.msg
		err := r.Unmarshal(b, k)
		require.Equal(t, LoadReport{}, r, "a rejected report leaves the zero value")
		return err
	}
	for _, wire := range [][]byte{wire, loadAdaptGolden.wire} {
		for i := range len(wire) {
			require.ErrorIs(t, unmarshal(wire[:i], k), ErrClusterMsgInvalid, "truncated to %d bytes", i)
		}
		require.ErrorContains(t, unmarshal(append(bytes.Clone(wire), 0), k), "trailing bytes")
		for i := range len(wire) * 8 {
			b := bytes.Clone(wire)
			b[i/8] ^= 1 << (i % 8)
			err := unmarshal(b, k)
			if _, perr := PeekClusterMsgType(b); i/8 < clusterMsgHeaderLen && perr != nil {
				require.ErrorIs(t, err, ErrClusterMsgInvalid, "bit %d of the envelope header", i)
			} else {
				require.ErrorIs(t, err, ErrClusterMsgAuth, "bit %d", i)
			}
		}
	}
	other := k
	other[31] ^= 0x01
	require.ErrorIs(t, unmarshal(wire, other), ErrClusterMsgAuth, "wrong key")

	// Authentic messages of another type are refused by type, both ways.
	err := unmarshal(clusterGoldenTests[2].wire, k)
	require.ErrorIs(t, err, ErrClusterMsgInvalid)
	require.ErrorContains(t, err, "got a forwarder-announce, want a load-report")
	err = new(ForwarderAnnounce).Unmarshal(wire, k)
	require.ErrorIs(t, err, ErrClusterMsgInvalid)
	require.ErrorContains(t, err, "got a load-report, want a forwarder-announce")
}

// loadReportFuzzSeeds are FuzzLoadReport's committed corpus (checked by
// TestClusterFuzzSeeds).
func loadReportFuzzSeeds(t testing.TB) map[string][]byte {
	t.Helper()
	k := testClusterKey(t)
	g := loadReportGolden.wire
	minimal, err := (&LoadReport{Forwarder: "f", Draining: true}).Marshal(nil, k)
	require.NoError(t, err)
	adaptMinimal, err := (&LoadReport{Forwarder: "f", HasAdapt: true, Adapt: LoadAdapt{Nacked: 1, Resent: 1}}).Marshal(nil, k)
	require.NoError(t, err)
	altered := bytes.Clone(g)
	altered[clusterMsgHeaderLen+2] ^= 0x07
	seeds := map[string][]byte{
		"golden":           g,
		"minimal":          minimal,
		"truncated":        g[:len(g)-1],
		"altered":          altered,
		"level-5":          rawClusterMsg(k, byte(ClusterMsgLoadReport), loadBody(func(b []byte) []byte { b[2] = 5; return b })),
		"reserved-bits":    rawClusterMsg(k, byte(ClusterMsgLoadReport), loadBody(func(b []byte) []byte { b[0] = 0xfb; b[3] = 0xff; return b })),
		"id-length-off":    rawClusterMsg(k, byte(ClusterMsgLoadReport), loadBody(func(b []byte) []byte { b[1] = 4; return b })),
		"short-body":       rawClusterMsg(k, byte(ClusterMsgLoadReport), loadBody(func(b []byte) []byte { return b[:loadReportFixedLen] })),
		"announce":         clusterGoldenTests[2].wire,
		"trailing-byte":    append(bytes.Clone(g), 0),
		"empty":            {},
		"envelope-only":    rawClusterMsg(k, byte(ClusterMsgLoadReport), nil),
		"wrong-key-like":   append(bytes.Clone(g[:len(g)-clusterMsgTagLen]), make([]byte, clusterMsgTagLen)...),
		"adapt-golden":     loadAdaptGolden.wire,
		"adapt-minimal":    adaptMinimal,
		"adapt-reserved":   rawClusterMsg(k, byte(ClusterMsgLoadReport), adaptBody(func(b []byte) []byte { b[0] = 0xff; b[3] = 0xff; return b })),
		"adapt-no-section": rawClusterMsg(k, byte(ClusterMsgLoadReport), loadBody(func(b []byte) []byte { b[0] |= 0x04; return b })),
		"adapt-no-flag":    rawClusterMsg(k, byte(ClusterMsgLoadReport), adaptBody(func(b []byte) []byte { b[0] &^= 0x04; return b })),
		"adapt-short":      rawClusterMsg(k, byte(ClusterMsgLoadReport), adaptBody(func(b []byte) []byte { return b[:len(b)-1] })),
		"adapt-id-off":     rawClusterMsg(k, byte(ClusterMsgLoadReport), adaptBody(func(b []byte) []byte { b[1] = 6; return b })),
		"ops-full":         rawClusterMsg(k, byte(ClusterMsgLoadReport), opsBody(func(b []byte) []byte { return b })),
		"ops-no-section":   rawClusterMsg(k, byte(ClusterMsgLoadReport), loadBody(func(b []byte) []byte { b[0] |= 0x08; return b })),
		"ops-short":        rawClusterMsg(k, byte(ClusterMsgLoadReport), opsBody(func(b []byte) []byte { return b[:len(b)-1] })),
		"ops-region-off":   rawClusterMsg(k, byte(ClusterMsgLoadReport), opsBody(func(b []byte) []byte { b[len(b)-36] = 9; return b })),
		"rtt-full":         rawClusterMsg(k, byte(ClusterMsgLoadReport), rttBody(func(b []byte) []byte { return b })),
		"rtt-no-rows":      rawClusterMsg(k, byte(ClusterMsgLoadReport), opsBody(func(b []byte) []byte { b[0] |= 0x10; return append(b, 0) })),
		"rtt-short":        rawClusterMsg(k, byte(ClusterMsgLoadReport), rttBody(func(b []byte) []byte { return b[:len(b)-1] })),
		"rtt-unordered":    rawClusterMsg(k, byte(ClusterMsgLoadReport), rttBody(func(b []byte) []byte { b[len(b)-10] = 'a'; return b })),
	}
	maps.Copy(seeds, spillFuzzSeeds(k))
	return seeds
}

// FuzzLoadReport: decoding never panics and fails only with the cluster
// sentinels; whatever decodes re-encodes to the same bytes (reserved bits
// aside) and decodes equal. Each input is also tried with its tag
// recomputed, so mutated bodies reach the body checks.
func FuzzLoadReport(f *testing.F) {
	for _, b := range loadReportFuzzSeeds(f) {
		f.Add(b)
	}
	k := testClusterKey(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		check := func(b []byte) error {
			var r LoadReport
			if err := r.Unmarshal(b, k); err != nil {
				if !errors.Is(err, ErrClusterMsgInvalid) && !errors.Is(err, ErrClusterMsgAuth) {
					t.Fatalf("error without a sentinel: %v", err)
				}
				if !reflect.DeepEqual(r, LoadReport{}) {
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
			var r2 LoadReport
			if err := r2.Unmarshal(out, k); err != nil || !reflect.DeepEqual(r, r2) {
				t.Fatalf("round trip: %+v -> %x -> %+v (%v)", r, out, r2, err)
			}
			out2, err := r2.Marshal(nil, k)
			if err != nil || !bytes.Equal(out, out2) {
				t.Fatalf("encoding not stable: %x vs %x (%v)", out, out2, err)
			}
			return nil
		}
		if check(b) == nil || len(b) < clusterMsgOverhead {
			return
		}
		checkResealed(t, k, b, check)
	})
}

// loadOpsMsg is loadAdaptGolden with the operations section: region
// "e-u", 40 Redis writes in 120 ms, 3 NATS round trips in 1.5 ms.
func loadOpsMsg() LoadReport {
	r := loadAdaptGolden.msg
	r.HasOps = true
	r.Ops = LoadOps{Region: "e-u", StoreWrites: 40, StoreWriteUs: 120_000, NATSRTTs: 3, NATSRTTUs: 1500}
	return r
}

func opsBody(edit func(b []byte) []byte) []byte {
	r := loadOpsMsg()
	g, err := r.Marshal(nil, ClusterKey{})
	if err != nil {
		panic(err)
	}
	return edit(bytes.Clone(g[clusterMsgHeaderLen : len(g)-clusterMsgTagLen]))
}

// The operations section: after the adaptation section, or right after
// the id without it; 1 + region + 32 bytes; round trips either way.
func TestLoadReportOps(t *testing.T) {
	k := testClusterKey(t)
	withAdapt := loadOpsMsg()
	without := withAdapt
	without.HasAdapt, without.Adapt = false, LoadAdapt{}
	noRegion := without
	noRegion.Ops.Region = ""
	for _, r := range []LoadReport{withAdapt, without, noRegion} {
		b, err := r.Marshal(nil, k)
		require.NoError(t, err)
		body := b[clusterMsgHeaderLen : len(b)-clusterMsgTagLen]
		want := loadReportFixedLen + len(r.Forwarder) + 1 + len(r.Ops.Region) + loadOpsCountersLen
		if r.HasAdapt {
			want += loadAdaptLen
		}
		require.Len(t, body, want)
		require.Equal(t, byte(0x08), body[0]&0x08)
		var got LoadReport
		require.NoError(t, got.Unmarshal(b, k))
		require.Equal(t, r, got)
	}
	bad := without
	bad.Ops.Region = "eu west"
	_, err := bad.Marshal(nil, k)
	require.ErrorIs(t, err, ErrClusterMsgInvalid)
	bad = loadReportGolden.msg
	bad.Ops.NATSRTTs = 1
	_, err = bad.Marshal(nil, k)
	require.ErrorContains(t, err, "not HasOps")
}
