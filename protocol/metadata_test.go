package protocol

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var (
	_ clusterMsg = (*MetadataBatch)(nil)
	_ clusterMsg = (*CallDecision)(nil)
)

var clusterTestPart3 = ID{0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33}

// metaGoldenTests are batches sealed with testClusterKey (tags checked with
// Python's hmac).
var metaGoldenTests = []struct {
	name string
	msg  *MetadataBatch
	wire []byte
}{
	{
		name: "one call, two members",
		msg: &MetadataBatch{
			Forwarder: "fwd-a", Partition: 7, Seq: 42, At: clusterTestAt, TickMillis: 100,
			Calls: []CallMetadata{{Call: clusterTestCall, Members: []MemberMetadata{
				{Participant: clusterTestPart, Packets: 5, VoicePackets: 5, PayloadBytes: 400,
					MeanLevel: 30, MaxLevel: 22, Flags: MetaOnset, UplinkBps: 36000},
				{Participant: clusterTestPart3, Packets: 4, PayloadBytes: 12,
					MeanLevel: 127, MaxLevel: 127, Flags: MetaLeft, UplinkBps: 8000, LossPermille: 200},
			}}},
		},
		wire: []byte{
			0x43, 0x52, 0x4c, 0x43, // "CRLC"
			0x01, 0x03, 0x00, 0x6f, // version 1, type 3 (metadata), body 111 bytes
			0x05,       // forwarder id 5 bytes
			0x00, 0x07, // partition 7
			0x00, 0x64, // tick 100 ms
			0x00, 0x01, // 1 call
			0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a, // sequence 42
			0x00, 0x00, 0x01, 0xa3, 0x18, 0x5c, 0x50, 0x7b, // at 1800000000123 ms
			0x66, 0x77, 0x64, 0x2d, 0x61, // "fwd-a"
			0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, // call id
			0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11,
			0x02,                                           // 2 members
			0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, // participant id
			0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
			0x00, 0x05, // 5 packets
			0x00, 0x05, // 5 with voice
			0x00, 0x00, 0x01, 0x90, // 400 payload bytes
			0x00, 0x00, 0x8c, 0xa0, // uplink 36000 bit/s
			0x00, 0x00, // loss 0 permille
			0x1e, 0x16, 0x01, // mean level 30, max level 22, flags: onset
			0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, // participant id
			0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33,
			0x00, 0x04, // 4 packets
			0x00, 0x00, // none with voice
			0x00, 0x00, 0x00, 0x0c, // 12 payload bytes
			0x00, 0x00, 0x1f, 0x40, // uplink 8000 bit/s
			0x00, 0xc8, // loss 200 permille
			0x7f, 0x7f, 0x02, // mean level 127, max level 127, flags: left
			0x54, 0x4b, 0x58, 0xa2, 0x00, 0x60, 0xac, 0x70, // tag
			0xcf, 0x99, 0x68, 0xa7, 0x67, 0x14, 0x21, 0x41,
		},
	},
	{
		name: "member with video",
		msg: &MetadataBatch{
			Forwarder: "fwd-a", Partition: 7, Seq: 44, At: clusterTestAt, TickMillis: 100,
			Calls: []CallMetadata{{Call: clusterTestCall, Members: []MemberMetadata{{
				Participant: clusterTestPart, Packets: 5, VoicePackets: 5, PayloadBytes: 400,
				MeanLevel: 30, MaxLevel: 22, Flags: MetaVideo, UplinkBps: 736000,
				Video: MemberVideo{
					UplinkEstBps: 2_000_000, DownlinkEstBps: 3_000_000,
					Layers: 2, LayerBps: [MaxSimulcastLayers]uint32{150_000, 600_000},
					NumSubs: 1, Subs: [MaxSubscriptions]VideoSub{{Participant: clusterTestPart3, MaxHeight: 720}},
				},
			}}}},
		},
		wire: []byte{
			0x43, 0x52, 0x4c, 0x43, // "CRLC"
			0x01, 0x03, 0x00, 0x72, // version 1, type 3 (metadata), body 114 bytes
			0x05,       // forwarder id 5 bytes
			0x00, 0x07, // partition 7
			0x00, 0x64, // tick 100 ms
			0x00, 0x01, // 1 call
			0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2c, // sequence 44
			0x00, 0x00, 0x01, 0xa3, 0x18, 0x5c, 0x50, 0x7b, // at 1800000000123 ms
			0x66, 0x77, 0x64, 0x2d, 0x61, // "fwd-a"
			0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, // call id
			0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11,
			0x01,                                           // 1 member
			0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, // participant id
			0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
			0x00, 0x05, // 5 packets
			0x00, 0x05, // 5 with voice
			0x00, 0x00, 0x01, 0x90, // 400 payload bytes
			0x00, 0x0b, 0x3b, 0x00, // uplink 736000 bit/s
			0x00, 0x00, // loss 0 permille
			0x1e, 0x16, 0x04, // mean level 30, max level 22, flags: video
			0x00, 0x1e, 0x84, 0x80, // video: uplink estimate 2000000 bit/s
			0x00, 0x2d, 0xc6, 0xc0, // downlink estimate 3000000 bit/s
			0x02, 0x01, // 2 layers, 1 subscription
			0x00, 0x02, 0x49, 0xf0, // layer 0: 150000 bit/s
			0x00, 0x09, 0x27, 0xc0, // layer 1: 600000 bit/s
			0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, // subscribes to 3333...
			0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33,
			0x02, 0xd0, // up to 720 pixels high
			0xe4, 0x67, 0x08, 0x1d, 0xb0, 0xb2, 0x9e, 0x9f, // tag
			0x58, 0x9d, 0xac, 0x51, 0xf4, 0xda, 0x0c, 0xfc,
		},
	},
	{
		name: "no calls",
		msg:  &MetadataBatch{Forwarder: "fwd-a", Partition: 7, Seq: 43, At: clusterTestAt, TickMillis: 100},
		wire: []byte{
			0x43, 0x52, 0x4c, 0x43, // "CRLC"
			0x01, 0x03, 0x00, 0x1c, // version 1, type 3 (metadata), body 28 bytes
			0x05,       // forwarder id 5 bytes
			0x00, 0x07, // partition 7
			0x00, 0x64, // tick 100 ms
			0x00, 0x00, // no calls
			0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2b, // sequence 43
			0x00, 0x00, 0x01, 0xa3, 0x18, 0x5c, 0x50, 0x7b, // at 1800000000123 ms
			0x66, 0x77, 0x64, 0x2d, 0x61, // "fwd-a"
			0x2a, 0x20, 0xce, 0xe4, 0x93, 0x60, 0x97, 0xd8, // tag
			0xea, 0x13, 0xac, 0x88, 0x37, 0xad, 0x89, 0xc5,
		},
	},
}

// metaTestMember returns a valid member that differs with i.
func metaTestMember(i int) MemberMetadata {
	return MemberMetadata{
		Participant:  ID{0xa0, 15: byte(i), 14: byte(i >> 8)},
		Packets:      5,
		VoicePackets: uint16(i % 6),
		PayloadBytes: uint32(400 + i),
		MeanLevel:    uint8(20 + i%100),
		MaxLevel:     uint8(10 + i%10),
		Flags:        uint8(i % 4),
		UplinkBps:    36000 + uint32(i),
		LossPermille: uint16(i % 1001),
	}
}

// metaTestBatch returns a valid batch from "fwd-a" of calls calls with
// members members each.
func metaTestBatch(calls, members int) *MetadataBatch {
	b := &MetadataBatch{Forwarder: "fwd-a", Partition: 3, Seq: 1000, At: clusterTestAt, TickMillis: 100}
	for c := range calls {
		cm := CallMetadata{Call: ID{0xc0, 14: byte(c >> 8), 15: byte(c)}}
		for m := range members {
			cm.Members = append(cm.Members, metaTestMember(c*members+m))
		}
		b.Calls = append(b.Calls, cm)
	}
	return b
}

// metaTestVideo returns a valid video section that differs with i: i%4
// layers and i%17 subscriptions.
func metaTestVideo(i int) MemberVideo {
	v := MemberVideo{
		UplinkEstBps: 1_000_000 + uint32(i), DownlinkEstBps: uint32(i * 1000),
		Layers: uint8(i % 4), NumSubs: uint8(i % 17),
	}
	for l := range int(v.Layers) {
		v.LayerBps[l] = uint32(100_000 * (l + 1))
	}
	for j := range int(v.NumSubs) {
		v.Subs[j] = VideoSub{Participant: ID{0xb0, 14: byte(i), 15: byte(j)}, MaxHeight: uint16(180 * j)}
	}
	return v
}

// metaTestVideoBatch is metaTestBatch with a video section on every member.
func metaTestVideoBatch(calls, members int) *MetadataBatch {
	b := metaTestBatch(calls, members)
	for c := range b.Calls {
		for m := range b.Calls[c].Members {
			mm := &b.Calls[c].Members[m]
			mm.Flags |= MetaVideo
			mm.Video = metaTestVideo(c*members + m)
		}
	}
	return b
}

func metaBody(edit func(b []byte) []byte) []byte {
	return metaBodyOf(0, edit)
}

// metaBodyOf edits a clone of golden batch i's body.
func metaBodyOf(i int, edit func(b []byte) []byte) []byte {
	w := metaGoldenTests[i].wire
	return edit(bytes.Clone(w[clusterMsgHeaderLen : len(w)-clusterMsgTagLen]))
}

// metaVideoBody edits the body of the golden batch with video.
func metaVideoBody(edit func(b []byte) []byte) []byte { return metaBodyOf(1, edit) }

// checkClusterMsgRejects runs the checks every message type shares on an
// authentic message: truncation at every length, every bit flipped, a
// trailing byte, a wrong key and another type's Unmarshal. fresh returns
// the empty message that a rejected decode must leave behind.
func checkClusterMsgRejects(t *testing.T, wire []byte, fresh func() clusterMsg, other clusterMsg) {
	t.Helper()
	k := testClusterKey(t)
	typ, err := PeekClusterMsgType(wire)
	require.NoError(t, err)
	unmarshal := func(b []byte, k ClusterKey) error {
		t.Helper()
		m := fresh()
		err := m.Unmarshal(b, k)
		require.Equal(t, fresh(), m, "a rejected message leaves the zero value")
		return err
	}
	for i := range len(wire) {
		require.ErrorIs(t, unmarshal(wire[:i], k), ErrClusterMsgInvalid, "prefix %d", i)
	}
	for i := range len(wire) * 8 {
		b := bytes.Clone(wire)
		b[i/8] ^= 1 << (i % 8)
		err := unmarshal(b, k)
		if _, perr := PeekClusterMsgType(b); i/8 < clusterMsgHeaderLen && perr == nil {
			require.ErrorIs(t, err, ErrClusterMsgAuth, "bit %d turns the type into another known one", i)
		} else if i/8 < clusterMsgHeaderLen {
			require.ErrorIs(t, err, ErrClusterMsgInvalid, "bit %d of the envelope header", i)
		} else {
			require.ErrorIs(t, err, ErrClusterMsgAuth, "bit %d", i)
		}
	}
	require.ErrorContains(t, unmarshal(append(bytes.Clone(wire), 0), k), "trailing bytes")
	wrongKey := k
	wrongKey[31] ^= 0x01
	require.ErrorIs(t, unmarshal(wire, wrongKey), ErrClusterMsgAuth, "wrong key")
	err = other.Unmarshal(wire, k)
	require.ErrorIs(t, err, ErrClusterMsgInvalid)
	require.ErrorContains(t, err, "got a "+typ.String())
}

func TestMetadataGolden(t *testing.T) {
	k := testClusterKey(t)
	for _, tt := range metaGoldenTests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, len(tt.wire), tt.msg.MarshalSize())
			b, err := tt.msg.Marshal([]byte("prefix"), k)
			require.NoError(t, err)
			require.Equal(t, append([]byte("prefix"), tt.wire...), b, "Marshal appends")

			typ, err := PeekClusterMsgType(tt.wire)
			require.NoError(t, err)
			require.Equal(t, ClusterMsgMetadata, typ)
			m, err := decodeClusterMsg(tt.wire, k)
			require.NoError(t, err)
			require.Equal(t, tt.msg, m)

			checkClusterMsgRejects(t, tt.wire, func() clusterMsg { return new(MetadataBatch) }, new(CallDecision))
		})
	}
	require.Equal(t, "metadata", ClusterMsgMetadata.String())
}

// TestMetadataBadBodies: authentic batches whose bodies break the rules.
func TestMetadataBadBodies(t *testing.T) {
	k := testClusterKey(t)
	// Offsets in the golden body: id length 0, partition 1, tick 3, call
	// count 5, sequence 7, at 15, id 23, call id 28, member count 44; the
	// first member at 45 (packets 61, voice 63, payload 65, uplink 69, loss
	// 73, mean 75, max 76, flags 77), the second at 78.
	for _, tt := range []struct {
		name string
		body []byte
		msg  string
	}{
		{"short body", metaBody(func(b []byte) []byte { return b[:22] }), "body of 22 bytes"},
		{"id length 0", metaBody(clusterSet(0, 0)), "forwarder id of 0 bytes"},
		{"id longer than the body", metaBody(clusterSet(0, 200)), "forwarder id truncated"},
		{"id with a space", metaBody(clusterSet(25, ' ')), "not printable"},
		{"tick 0", metaBody(clusterSet(3, 0, 0)), "tick of 0 ms"},
		{"tick 10001", metaBody(clusterSet(3, 0x27, 0x11)), "tick of 10001 ms"},
		{"2 calls, 1 present", metaBody(clusterSet(5, 0, 2)), "calls truncated"},
		{"0 calls, 1 present", metaBody(clusterSet(5, 0, 0)), "83 trailing bytes"},
		{"zero call id", metaBody(clusterSet(28, make([]byte, 16)...)), "without call id"},
		{"0 members", metaBody(clusterSet(44, 0)), "without members"},
		{"3 members, 2 present", metaBody(clusterSet(44, 3)), "3 members truncated"},
		{"1 member, 2 present", metaBody(clusterSet(44, 1)), "33 trailing bytes"},
		{"byte after the body", metaBody(func(b []byte) []byte { return append(b, 0) }), "1 trailing bytes"},
		{"zero participant", metaBody(clusterSet(78, make([]byte, 16)...)), "without participant id"},
		{"voice > packets", metaBody(clusterSet(63, 0, 6)), "6 voice packets of 5"},
		{"mean level 128", metaBody(clusterSet(75, 128)), "level mean 128"},
		{"max level 255", metaBody(clusterSet(109, 255)), "max 255"},
		{"flag 0x10", metaBody(clusterSet(77, 0x11)), "unknown flags 0x10"},
		{"RTT flag, section garbled", metaBody(clusterSet(77, 0x09)), "malformed candidate RTTs"},
		{"flag 0x80", metaBody(clusterSet(110, 0x80)), "unknown flags 0x80"},
		{"loss 1001", metaBody(clusterSet(73, 0x03, 0xe9)), "loss 1001 permille"},
		// The golden batch with video: flags at 77, then the video section
		// at 78: estimates 78 and 82, layers 86, subscriptions 87, layer
		// rates 88 and 92, the subscription at 96 (height 112).
		{"video: 4 layers", metaVideoBody(clusterSet(86, 4)), "4 video layers, want 0..3"},
		{"video: 17 subscriptions", metaVideoBody(clusterSet(87, 17)), "17 subscriptions, want 0..16"},
		{"video: section cut short", metaVideoBody(func(b []byte) []byte { return b[:85] }), "video section truncated"},
		{"video: 3 layers, 2 present", metaVideoBody(clusterSet(86, 3)), "3 layers and 1 subscriptions truncated"},
		{"video: subscription cut short", metaVideoBody(func(b []byte) []byte { return b[:113] }), "2 layers and 1 subscriptions truncated"},
		{"video: zero subscription", metaVideoBody(clusterSet(96, make([]byte, 16)...)), "subscribes to the zero participant id"},
		{"video: subscription twice", metaVideoBody(func(b []byte) []byte {
			b[87] = 2
			return append(b, b[96:114]...)
		}), "subscribes to 33333333333333333333333333333333 twice"},
		{"video: flag off, section left", metaVideoBody(clusterSet(77, 0)), "36 trailing bytes"},
		{"video: 1 layer, 2 present", metaVideoBody(clusterSet(86, 1)), "4 trailing bytes"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var m MetadataBatch
			err := m.Unmarshal(rawClusterMsg(k, byte(ClusterMsgMetadata), tt.body), k)
			require.ErrorIs(t, err, ErrClusterMsgInvalid)
			require.ErrorContains(t, err, tt.msg)
			require.Equal(t, &MetadataBatch{}, metaNormalize(&m), "a rejected batch holds nothing")
		})
	}
}

func TestMetadataMarshalRejects(t *testing.T) {
	k := testClusterKey(t)
	edit := func(f func(b *MetadataBatch)) *MetadataBatch {
		b := metaTestBatch(2, 3)
		f(b)
		return b
	}
	member := func(f func(m *MemberMetadata)) *MetadataBatch {
		return edit(func(b *MetadataBatch) { f(&b.Calls[1].Members[2]) })
	}
	far := time.Date(300_000_000, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		name, msg string
		b         *MetadataBatch
	}{
		{"zero value", "forwarder id of 0 bytes", &MetadataBatch{}},
		{"forwarder 65 bytes", "65 bytes", edit(func(b *MetadataBatch) { b.Forwarder = strings.Repeat("f", 65) })},
		{"forwarder with space", "not printable", edit(func(b *MetadataBatch) { b.Forwarder = "fwd a" })},
		{"tick 0", "tick of 0 ms", edit(func(b *MetadataBatch) { b.TickMillis = 0 })},
		{"tick 10001", "tick of 10001 ms", edit(func(b *MetadataBatch) { b.TickMillis = 10001 })},
		{"time out of range", "out of range", edit(func(b *MetadataBatch) { b.At = far })},
		{"zero call id", "without call id", edit(func(b *MetadataBatch) { b.Calls[1].Call = ID{} })},
		{"no members", "with 0 members", edit(func(b *MetadataBatch) { b.Calls[0].Members = nil })},
		{"256 members", "with 256 members", edit(func(b *MetadataBatch) { b.Calls[0] = metaTestBatch(1, 256).Calls[0] })},
		{"zero participant", "without participant id", member(func(m *MemberMetadata) { m.Participant = ID{} })},
		{"voice > packets", "6 voice packets of 5", member(func(m *MemberMetadata) { m.VoicePackets = 6 })},
		{"mean level 128", "level mean 128", member(func(m *MemberMetadata) { m.MeanLevel = 128 })},
		{"max level 200", "max 200", member(func(m *MemberMetadata) { m.MaxLevel = 200 })},
		{"flag 0x10", "unknown flags 0x10", member(func(m *MemberMetadata) { m.Flags = MetaOnset | 0x10 })},
		{"RTT flag without entries", "0 entries", member(func(m *MemberMetadata) { m.Flags = MetaRTT })},
		{"RTTs without the flag", "RTTs set without the RTT flag", member(func(m *MemberMetadata) { m.RTTs.N = 1 })},
		{"loss 1001", "loss 1001 permille", member(func(m *MemberMetadata) { m.LossPermille = 1001 })},
		{"video without the flag", "video fields set without the video flag", member(func(m *MemberMetadata) { m.Video.DownlinkEstBps = 1 })},
		{"video: 4 layers", "4 video layers", member(func(m *MemberMetadata) { m.Flags, m.Video.Layers = MetaVideo, 4 })},
		{"video: 17 subscriptions", "17 subscriptions", member(func(m *MemberMetadata) { m.Flags, m.Video.NumSubs = MetaVideo, 17 })},
		{"video: zero subscription", "subscribes to the zero participant id", member(func(m *MemberMetadata) {
			m.Flags, m.Video = MetaVideo, metaTestVideo(5)
			m.Video.Subs[4].Participant = ID{}
		})},
		{"video: subscription twice", "twice", member(func(m *MemberMetadata) {
			m.Flags, m.Video = MetaVideo, metaTestVideo(16)
			m.Video.Subs[15] = m.Video.Subs[0]
		})},
		{"body too large with video", "split the batch", metaTestVideoBatch(60, 6)},
		{"65536 calls", "65536 calls", edit(func(b *MetadataBatch) { b.Calls = make([]CallMetadata, 65536) })},
		{"body too large", "split the batch", metaTestBatch(400, 6)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, err := tt.b.Marshal([]byte("keep"), k)
			require.ErrorIs(t, err, ErrClusterMsgInvalid)
			require.ErrorContains(t, err, tt.msg)
			require.Equal(t, "keep", string(out), "dst comes back as it was")
		})
	}
}

// TestMetadataLargest: a body of exactly 65535 bytes is the largest batch
// that can be sent: 23 + 3 (id) + 7 calls of 255 members (8432 bytes
// each) + one call of 196 members (6485 bytes).
func TestMetadataLargest(t *testing.T) {
	k := testClusterKey(t)
	b := metaTestBatch(8, 255)
	b.Forwarder = "f-a"
	b.Calls[7].Members = b.Calls[7].Members[:196]
	require.Equal(t, clusterMsgOverhead+65535, b.MarshalSize())
	wire, err := b.Marshal(nil, k)
	require.NoError(t, err)
	require.Len(t, wire, b.MarshalSize())
	var got MetadataBatch
	require.NoError(t, got.Unmarshal(wire, k))
	require.Equal(t, b, &got)

	b.Calls[7].Members = b.Calls[7].Members[:197]
	_, err = b.Marshal(nil, k)
	require.ErrorIs(t, err, ErrClusterMsgInvalid)
	require.ErrorContains(t, err, "body of 65568 bytes")
}

func TestMetadataRoundTrip(t *testing.T) {
	k := testClusterKey(t)
	full := MemberMetadata{Participant: clusterTestPart, Packets: 65535, VoicePackets: 65535, PayloadBytes: 1<<32 - 1,
		MeanLevel: 127, MaxLevel: 127, Flags: MetaOnset | MetaLeft, UplinkBps: 1<<32 - 1, LossPermille: 1000}
	for _, tt := range []struct {
		name    string
		in, out *MetadataBatch
	}{
		{name: "6 calls of 6", in: metaTestBatch(6, 6)},
		{name: "255 members", in: metaTestBatch(1, 255)},
		{
			name: "largest values, zero time, 64-byte id",
			in: &MetadataBatch{Forwarder: strings.Repeat("~", 64), Partition: 65535, Seq: 1<<64 - 1, TickMillis: 10000,
				Calls: []CallMetadata{{Call: clusterTestCall, Members: []MemberMetadata{full}}}},
		},
		{
			name: "local time comes back in UTC, sub-millisecond truncated",
			in:   &MetadataBatch{Forwarder: "!", TickMillis: 1, At: clusterTestAt.Add(999 * time.Microsecond).In(time.FixedZone("x", 3600))},
			out:  &MetadataBatch{Forwarder: "!", TickMillis: 1, At: clusterTestAt},
		},
		{
			name: "before 1970",
			in:   &MetadataBatch{Forwarder: "f", TickMillis: 20, At: time.UnixMilli(-1).UTC()},
		},
		{name: "video, every shape", in: metaTestVideoBatch(4, 17)},
		{
			name: "video, largest values",
			in: &MetadataBatch{Forwarder: "f", TickMillis: 100, Calls: []CallMetadata{{Call: clusterTestCall, Members: []MemberMetadata{
				func() MemberMetadata {
					m := full
					m.Flags |= MetaVideo
					m.Video = metaTestVideo(16 + 3*17) // 3 layers, 16 subscriptions
					m.Video.UplinkEstBps, m.Video.DownlinkEstBps = 1<<32-1, 1<<32-1
					m.Video.LayerBps = [MaxSimulcastLayers]uint32{1<<32 - 1, 1<<32 - 1, 1<<32 - 1}
					m.Video.Subs[3].MaxHeight = 65535
					return m
				}(),
			}}}},
		},
		{
			name: "video, entries beyond the counts are not sent",
			in: &MetadataBatch{Forwarder: "f", TickMillis: 100, Calls: []CallMetadata{{Call: clusterTestCall, Members: []MemberMetadata{{
				Participant: clusterTestPart, Flags: MetaVideo,
				Video: MemberVideo{Layers: 1, LayerBps: [MaxSimulcastLayers]uint32{1, 2, 3},
					NumSubs: 1, Subs: [MaxSubscriptions]VideoSub{{Participant: clusterTestPart3}, {Participant: clusterTestPart3}}},
			}}}}},
			out: &MetadataBatch{Forwarder: "f", TickMillis: 100, Calls: []CallMetadata{{Call: clusterTestCall, Members: []MemberMetadata{{
				Participant: clusterTestPart, Flags: MetaVideo,
				Video: MemberVideo{Layers: 1, LayerBps: [MaxSimulcastLayers]uint32{1},
					NumSubs: 1, Subs: [MaxSubscriptions]VideoSub{{Participant: clusterTestPart3}}},
			}}}}},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.out == nil {
				tt.out = tt.in
			}
			b, err := tt.in.Marshal(nil, k)
			require.NoError(t, err)
			require.Len(t, b, tt.in.MarshalSize())
			got, err := decodeClusterMsg(b, k)
			require.NoError(t, err)
			require.Equal(t, tt.out, got)
		})
	}
}

// metaNormalize drops the difference between no calls and an empty Calls,
// the one thing that tells a reused batch from a fresh one.
func metaNormalize(b *MetadataBatch) *MetadataBatch {
	c := *b
	if len(c.Calls) == 0 {
		c.Calls = nil
	}
	return &c
}

// TestMetadataReuse: decoding into a used batch gives what a fresh batch
// gets, whatever it held before, and keeps its arrays.
func TestMetadataReuse(t *testing.T) {
	k := testClusterKey(t)
	batches := []*MetadataBatch{metaTestBatch(5, 6), metaTestVideoBatch(3, 17), metaTestBatch(2, 2), metaGoldenTests[0].msg,
		metaTestBatch(0, 0), metaGoldenTests[1].msg, metaTestBatch(7, 1)}
	batches[2].Forwarder = "fwd-b"
	var m MetadataBatch
	for round := range 2 {
		for i, want := range batches {
			wire, err := want.Marshal(nil, k)
			require.NoError(t, err)
			require.NoError(t, m.Unmarshal(wire, k), "round %d batch %d", round, i)
			require.Equal(t, metaNormalize(want), metaNormalize(&m), "round %d batch %d", round, i)
		}
	}
	calls := &m.Calls[:1][0]
	members := &calls.Members[:1][0]
	err := m.Unmarshal(metaGoldenTests[0].wire[:40], k)
	require.ErrorIs(t, err, ErrClusterMsgInvalid)
	require.Equal(t, MetadataBatch{Calls: []CallMetadata{}}, m, "a rejected batch holds nothing")
	require.GreaterOrEqual(t, cap(m.Calls), 7, "but keeps its array")
	require.NoError(t, m.Unmarshal(metaGoldenTests[0].wire, k))
	require.Same(t, calls, &m.Calls[0], "the same call slot")
	require.Same(t, members, &m.Calls[0].Members[0], "the same members array")
}

func TestMetadataUnmarshalAllocs(t *testing.T) {
	k := testClusterKey(t)
	big, err := metaTestBatch(100, 6).Marshal(nil, k)
	require.NoError(t, err)
	small, err := metaTestBatch(3, 4).Marshal(nil, k)
	require.NoError(t, err)
	video, err := metaTestVideoBatch(20, 6).Marshal(nil, k)
	require.NoError(t, err)
	var m MetadataBatch
	require.NoError(t, m.Unmarshal(big, k), "warm-up")
	allocs := testing.AllocsPerRun(100, func() {
		if err := m.Unmarshal(big, k); err != nil {
			t.Fatal(err)
		}
		if err := m.Unmarshal(small, k); err != nil {
			t.Fatal(err)
		}
		if err := m.Unmarshal(video, k); err != nil {
			t.Fatal(err)
		}
	})
	require.Zero(t, allocs, "warmed Unmarshal allocates")

	other := metaTestBatch(3, 4)
	other.Forwarder = "fwd-b"
	otherWire, err := other.Marshal(nil, k)
	require.NoError(t, err)
	allocs = testing.AllocsPerRun(100, func() {
		_ = m.Unmarshal(small, k)
		_ = m.Unmarshal(otherWire, k)
	})
	require.Equal(t, 2.0, allocs, "one string per change of forwarder id")
}

// TestClusterMACShared: the borrowed MACs give the right answer from many
// goroutines at once, with keys that change under them, and when every
// one is busy.
func TestClusterMACShared(t *testing.T) {
	k := testClusterKey(t)
	other := k
	other[0] ^= 0xff
	wire := metaGoldenTests[0].wire
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for g := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var m MetadataBatch
			var d CallDecision
			for i := range 200 {
				if (g+i)%3 == 0 {
					if err := m.Unmarshal(wire, other); !errors.Is(err, ErrClusterMsgAuth) {
						errs <- fmt.Errorf("wrong key: %v", err)
						return
					}
					continue
				}
				if err := m.Unmarshal(wire, k); err != nil {
					errs <- err
					return
				}
				if err := d.Unmarshal(decisionGoldenTests[0].wire, k); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}

	for i := range clusterMACs {
		clusterMACs[i].mu.Lock()
	}
	var m MetadataBatch
	require.NoError(t, m.Unmarshal(wire, k), "all MACs busy")
	require.ErrorIs(t, m.Unmarshal(wire, other), ErrClusterMsgAuth, "all MACs busy")
	for i := range clusterMACs {
		clusterMACs[i].mu.Unlock()
	}
}

func TestMetadataSizes(t *testing.T) {
	k := testClusterKey(t)
	check := func(b *MetadataBatch, size int, what string) {
		t.Helper()
		require.Equal(t, size, b.MarshalSize(), what)
		wire, err := b.Marshal(nil, k)
		if size > clusterMsgOverhead+clusterMaxBody {
			require.ErrorIs(t, err, ErrClusterMsgInvalid, what)
			return
		}
		require.NoError(t, err, what)
		require.Len(t, wire, size, what)
	}
	for _, tt := range []struct{ calls, members, size int }{
		{0, 0, 52},
		{1, 6, 267},      // 24 + 23 + 5 + 17 + 6*33
		{100, 6, 21552},  // 24 + 23 + 5 + 100*(17 + 6*33)
		{304, 6, 65412},  // the most calls of 6 that fit one batch
		{8, 255, 67508},  // too large: split
		{1, 255, 8484},   // 24 + 23 + 5 + 17 + 255*33
		{300, 1, 15052},  // 24 + 23 + 5 + 300*(17 + 33)
		{1300, 1, 65052}, // many one-member calls
	} {
		check(metaTestBatch(tt.calls, tt.members), tt.size, fmt.Sprintf("%d x %d", tt.calls, tt.members))
	}
	// With video, member i of metaTestVideoBatch takes 33 + 10 + 4*(i%4) +
	// 18*(i%17) bytes.
	for _, tt := range []struct{ calls, members, size int }{
		{1, 1, 112},    // 24 + 23 + 5 + 17 + (33 + 10)
		{1, 2, 177},    // and (33 + 10 + 4*1 + 18*1)
		{1, 17, 3344},  // 24 + 23 + 5 + 17 + 17*43 + 4*24 + 18*136
		{56, 6, 65384}, // the most calls of 6 that fit one batch
		{57, 6, 66749}, // too large: split
	} {
		what := fmt.Sprintf("video %d x %d", tt.calls, tt.members)
		require.Equal(t, tt.size, metaVideoSize(tt.calls, tt.members), what)
		check(metaTestVideoBatch(tt.calls, tt.members), tt.size, what)
	}
}

// metaVideoSize is the size of metaTestVideoBatch(calls, members) by the
// README's formula: 24 + 23 + id length + Σ (17 + Σ member length), a
// member taking 33 bytes, or 43 + 4 × layers + 18 × subscriptions with
// video.
func metaVideoSize(calls, members int) int {
	n := clusterMsgOverhead + 23 + len("fwd-a")
	for c := range calls {
		n += 17
		for m := range members {
			i := c*members + m
			n += 43 + 4*(i%4) + 18*(i%17)
		}
	}
	return n
}

// metadataFuzzSeeds are the committed seeds of FuzzMetadataBatch (see
// TestClusterFuzzSeeds): valid batches and broken ones, sealed with
// testClusterKey where a tag matters.
func metadataFuzzSeeds(t testing.TB) map[string][]byte {
	t.Helper()
	k := testClusterKey(t)
	seeds := map[string][]byte{}
	for _, tt := range metaGoldenTests {
		name := mediaSeedName(tt.name)
		seeds[name] = tt.wire
		seeds[name+"-truncated"] = tt.wire[:len(tt.wire)-1]
		altered := bytes.Clone(tt.wire)
		altered[clusterMsgHeaderLen+3] ^= 0x01
		seeds[name+"-altered"] = altered
	}
	for _, shape := range [][2]int{{3, 6}, {1, 255}} {
		wire, err := metaTestBatch(shape[0], shape[1]).Marshal(nil, k)
		require.NoError(t, err)
		seeds[fmt.Sprintf("%d-calls-of-%d", shape[0], shape[1])] = wire
	}
	video, err := metaTestVideoBatch(2, 17).Marshal(nil, k)
	require.NoError(t, err)
	seeds["video-2-calls-of-17"] = video
	seeds["video-4-layers"] = rawClusterMsg(k, byte(ClusterMsgMetadata), metaVideoBody(clusterSet(86, 4)))
	seeds["video-subscription-twice"] = rawClusterMsg(k, byte(ClusterMsgMetadata), metaVideoBody(func(b []byte) []byte {
		b[87] = 2
		return append(b, b[96:114]...)
	}))
	seeds["no-members"] = rawClusterMsg(k, byte(ClusterMsgMetadata), metaBody(clusterSet(44, 0)))
	seeds["unknown-flag"] = rawClusterMsg(k, byte(ClusterMsgMetadata), metaBody(clusterSet(77, 0x81)))
	seeds["call-count-too-large"] = rawClusterMsg(k, byte(ClusterMsgMetadata), metaBody(clusterSet(5, 0xff, 0xff)))
	rtts := metaTestBatch(1, 2)
	seq := exampleRTTs()
	seq.Seq = 1_800_000_000_123
	rtts.Calls[0].Members[0].Flags |= MetaRTT
	rtts.Calls[0].Members[0].RTTs = seq
	rtts.Calls[0].Members[1].Flags |= MetaRTT
	rtts.Calls[0].Members[1].RTTs = exampleRTTs()
	wire, err := rtts.Marshal(nil, k)
	require.NoError(t, err)
	seeds["member-rtts-sequenced-and-not"] = wire
	seeds["a-decision"] = decisionGoldenTests[0].wire
	seeds["empty"] = []byte{}
	return seeds
}

// FuzzMetadataBatch: Unmarshal never panics and fails only with the cluster
// sentinels; a batch it accepts re-encodes to exactly the input (the
// encoding is canonical) and decodes equal, also into a batch that held
// another one before. Each input is tried as it is and with its tag
// recomputed, so mutated bodies get past the tag.
func FuzzMetadataBatch(f *testing.F) {
	for _, b := range metadataFuzzSeeds(f) {
		f.Add(b)
	}
	k := testClusterKey(f)
	used, err := metaTestBatch(4, 7).Marshal(nil, k)
	require.NoError(f, err)
	f.Fuzz(func(t *testing.T, b []byte) {
		check := func(b []byte) error {
			var m MetadataBatch
			if err := m.Unmarshal(b, k); err != nil {
				if !errors.Is(err, ErrClusterMsgInvalid) && !errors.Is(err, ErrClusterMsgAuth) {
					t.Fatalf("error without a sentinel: %v", err)
				}
				return err
			}
			var reused MetadataBatch
			if err := reused.Unmarshal(used, k); err != nil {
				t.Fatal(err)
			}
			if err := reused.Unmarshal(b, k); err != nil || !reflect.DeepEqual(metaNormalize(&m), metaNormalize(&reused)) {
				t.Fatalf("decoding into a used batch: %+v vs %+v (%v)", m, reused, err)
			}
			out, err := m.Marshal(nil, k)
			if err != nil {
				t.Fatalf("decoded %+v but cannot encode it: %v", m, err)
			}
			if !bytes.Equal(out, b) {
				t.Fatalf("re-encoding differs:\n%x\n%x", b, out)
			}
			var m2 MetadataBatch
			if err := m2.Unmarshal(out, k); err != nil || !reflect.DeepEqual(m, m2) {
				t.Fatalf("round trip: %+v -> %+v (%v)", m, m2, err)
			}
			return nil
		}
		if check(b) == nil || len(b) < clusterMsgOverhead {
			return
		}
		checkResealed(t, k, b, check)
	})
}

func BenchmarkMetadataMarshal(b *testing.B) {
	k := testClusterKey(b)
	batch := metaTestBatch(100, 6)
	buf := make([]byte, 0, batch.MarshalSize())
	b.SetBytes(int64(batch.MarshalSize()))
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if buf, err = batch.Marshal(buf[:0], k); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMetadataUnmarshal(b *testing.B) {
	k := testClusterKey(b)
	wire, err := metaTestBatch(100, 6).Marshal(nil, k)
	require.NoError(b, err)
	var m MetadataBatch
	require.NoError(b, m.Unmarshal(wire, k))
	b.SetBytes(int64(len(wire)))
	b.ReportAllocs()
	for b.Loop() {
		if err := m.Unmarshal(wire, k); err != nil {
			b.Fatal(err)
		}
	}
}
