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
	{
		name: "video section",
		msg: &CallDecision{
			Call: clusterTestCall, Partition: 7, Epoch: 3, Seq: 18, At: clusterTestAt,
			Dominant: clusterTestPart, Forward: []ID{clusterTestPart, clusterTestPart3}, Conductor: "cond-1",
			Video: true,
			Senders: []SenderTarget{
				{Participant: clusterTestPart, Layers: 2, TotalBps: 1_200_000, LayerBps: [MaxSimulcastLayers]uint32{200_000, 900_000}},
				{Participant: clusterTestPart3, Layers: 1, TotalBps: 500_000, LayerBps: [MaxSimulcastLayers]uint32{450_000}},
			},
			Layers: []LayerAssign{
				{Receiver: clusterTestPart3, Sender: clusterTestPart, Rank: 2},
				{Receiver: decisionTestPart4, Sender: clusterTestPart, Rank: 1},
				{Receiver: decisionTestPart4, Sender: clusterTestPart3, Rank: RankNone},
			},
		},
		wire: []byte{
			0x43, 0x52, 0x4c, 0x43, // "CRLC"
			0x01, 0x04, 0x01, 0x09, // version 1, type 4 (decision), body 265 bytes
			0x06, 0x02, // conductor id 6 bytes, 2 forwarded
			0x00, 0x07, // partition 7
			0x00, 0x00, 0x00, 0x03, // epoch 3
			0x00, 0x00, 0x00, 0x12, // sequence 18
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
			0x02, 0x00, // video: 2 senders, reserved
			0x00, 0x03, // 3 assignments
			0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, // sender 2222...
			0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
			0x02, 0x00, 0x00, 0x00, // 2 layers (simulcast), reserved
			0x00, 0x12, 0x4f, 0x80, // total 1200000 bit/s
			0x00, 0x03, 0x0d, 0x40, // layer 0: 200000 bit/s
			0x00, 0x0d, 0xbb, 0xa0, // layer 1: 900000 bit/s
			0x00, 0x00, 0x00, 0x00, // layer 2: none
			0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, // sender 3333...
			0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33,
			0x01, 0x00, 0x00, 0x00, // 1 layer (one stream), reserved
			0x00, 0x07, 0xa1, 0x20, // total 500000 bit/s
			0x00, 0x06, 0xdd, 0xd0, // layer 0: 450000 bit/s
			0x00, 0x00, 0x00, 0x00, // layer 1: none
			0x00, 0x00, 0x00, 0x00, // layer 2: none
			0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, // receiver 3333...
			0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33,
			0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, // gets 2222...
			0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
			0x02,                                           // up to rank 2 (its high layer)
			0x44, 0x44, 0x44, 0x44, 0x44, 0x44, 0x44, 0x44, // receiver 4444...
			0x44, 0x44, 0x44, 0x44, 0x44, 0x44, 0x44, 0x44,
			0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, // gets 2222...
			0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
			0x01,                                           // up to rank 1 (its low layer)
			0x44, 0x44, 0x44, 0x44, 0x44, 0x44, 0x44, 0x44, // receiver 4444...
			0x44, 0x44, 0x44, 0x44, 0x44, 0x44, 0x44, 0x44,
			0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, // does not get 3333...
			0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33,
			0xff,                                           // RankNone
			0xe9, 0xa5, 0x46, 0x5f, 0x5b, 0x1f, 0xbf, 0x70, // tag
			0x94, 0xdc, 0x9d, 0xa2, 0x52, 0x6d, 0x20, 0xec,
		},
	},
}

var decisionTestPart4 = ID{0x44, 0x44, 0x44, 0x44, 0x44, 0x44, 0x44, 0x44, 0x44, 0x44, 0x44, 0x44, 0x44, 0x44, 0x44, 0x44}

func decisionBody(edit func(b []byte) []byte) []byte {
	return decisionBodyOf(0, edit)
}

// decisionVideoBody edits the body of the golden decision with video.
func decisionVideoBody(edit func(b []byte) []byte) []byte {
	return decisionBodyOf(2, edit)
}

func decisionBodyOf(i int, edit func(b []byte) []byte) []byte {
	w := decisionGoldenTests[i].wire
	return edit(bytes.Clone(w[clusterMsgHeaderLen : len(w)-clusterMsgTagLen]))
}

// decisionTestVideo returns senders distinct sender targets, with 1..3
// layers, and assigns distinct assignments of every rank, RankNone
// included.
func decisionTestVideo(senders, assigns int) ([]SenderTarget, []LayerAssign) {
	ss := make([]SenderTarget, senders)
	for i := range ss {
		s := SenderTarget{Participant: ID{0x5e, 15: byte(i)}, Layers: uint8(1 + i%3), TotalBps: 100_000 * uint32(i+1)}
		for l := range int(s.Layers) {
			s.LayerBps[l] = 50_000 * uint32(l+1)
		}
		ss[i] = s
	}
	as := make([]LayerAssign, assigns)
	ranks := [...]uint8{0, 1, 2, RankNone}
	for i := range as {
		as[i] = LayerAssign{Receiver: ID{0x7e, 14: byte(i >> 8), 15: byte(i)}, Sender: ID{0x5e, 15: byte(i % 7)}, Rank: ranks[i%4]}
	}
	return ss, as
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
		{"1 forwarded, 2 present: the rest is no video section", decisionBody(clusterSet(1, 1)), "video section reserved byte 0x33"},
		{"byte after the body", decisionBody(func(b []byte) []byte { return append(b, 0) }), "1 trailing bytes after the forward list, too few for a video section"},
		{"3 bytes after the body", decisionBody(func(b []byte) []byte { return append(b, 0, 0, 0) }), "3 trailing bytes"},
		{"duplicate", decisionBody(clusterSet(74, bytes.Repeat([]byte{0x22}, 16)...)), "forwards 22222222222222222222222222222222 twice"},
		{"zero forwarded", decisionBody(clusterSet(58, make([]byte, 16)...)), "zero participant id"},
		// The golden decision with video: the section at 90 (sender count
		// 90, reserved 91, assignment count 92); sender 0 at 94 (layers
		// 110, reserved 111, total 114, layer targets 118, 122, 126),
		// sender 1 at 130 (layers 146, layer targets 154, 158, 162); the
		// assignments at 166, 199 and 232 (receiver, sender +16, rank +32).
		{"video: reserved byte", decisionVideoBody(clusterSet(91, 1)), "video section reserved byte 0x01"},
		{"video: 3 senders, 2 present", decisionVideoBody(clusterSet(90, 3)), "video section truncated: 3 senders and 3 assignments in 175 bytes"},
		{"video: 4 assignments, 3 present", decisionVideoBody(clusterSet(92, 0, 4)), "video section truncated: 2 senders and 4 assignments"},
		{"video: 2 assignments, 3 present", decisionVideoBody(clusterSet(92, 0, 2)), "video section trailing bytes: 2 senders and 2 assignments"},
		{"video: byte after the body", decisionVideoBody(func(b []byte) []byte { return append(b, 0) }), "video section trailing bytes"},
		{"video: sender reserved", decisionVideoBody(clusterSet(112, 1)), "sender 22222222222222222222222222222222 reserved bytes 000100"},
		{"video: zero sender", decisionVideoBody(clusterSet(94, make([]byte, 16)...)), "targets the zero participant id"},
		{"video: sender twice", decisionVideoBody(clusterSet(130, bytes.Repeat([]byte{0x22}, 16)...)), "targets sender 22222222222222222222222222222222 twice"},
		{"video: 0 layers", decisionVideoBody(clusterSet(110, 0)), "with 0 layers, want 1..3"},
		{"video: 4 layers", decisionVideoBody(clusterSet(146, 4)), "with 4 layers, want 1..3"},
		{"video: a target beyond the layers", decisionVideoBody(clusterSet(162, 0, 0, 0, 1)), "has 1 layers but a target for layer 2"},
		{"video: zero receiver", decisionVideoBody(clusterSet(166, make([]byte, 16)...)), "assigns a layer with a zero participant id"},
		{"video: zero assigned sender", decisionVideoBody(clusterSet(215, make([]byte, 16)...)), "assigns a layer with a zero participant id"},
		{"video: rank 3", decisionVideoBody(clusterSet(198, 3)), "rank 3, want 0..2 or 255"},
		{"video: rank 254", decisionVideoBody(clusterSet(264, 254)), "rank 254"},
		{"video: pair twice", decisionVideoBody(clusterSet(248, bytes.Repeat([]byte{0x22}, 16)...)),
			"assigns receiver 44444444444444444444444444444444 sender 22222222222222222222222222222222 twice"},
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
		{"video targets without Video", "has video targets but not Video", edit(func(d *CallDecision) {
			d.Senders, _ = decisionTestVideo(1, 0)
		})},
		{"video assignments without Video", "has video targets but not Video", edit(func(d *CallDecision) {
			_, d.Layers = decisionTestVideo(0, 1)
		})},
		{"256 senders", "targets 256 senders", edit(func(d *CallDecision) {
			d.Video, d.Senders = true, make([]SenderTarget, 256)
		})},
		{"65536 assignments", "65536 layer assignments", edit(func(d *CallDecision) {
			d.Video, d.Layers = true, make([]LayerAssign, 65536)
		})},
		{"body too large", "decision body of 65563 bytes", edit(func(d *CallDecision) {
			d.Video = true // 52 + 6 + 5*16 + 4 + 5*36 + 1977*33
			d.Senders, d.Layers = decisionTestVideo(5, 1977)
		})},
		{"zero sender", "targets the zero participant id", edit(func(d *CallDecision) {
			d.Video, d.Senders = true, []SenderTarget{{Layers: 1}}
		})},
		{"sender twice", "twice", edit(func(d *CallDecision) {
			d.Video = true
			d.Senders, _ = decisionTestVideo(4, 0)
			d.Senders[3].Participant = d.Senders[0].Participant
		})},
		{"sender with 0 layers", "with 0 layers", edit(func(d *CallDecision) {
			d.Video, d.Senders = true, []SenderTarget{{Participant: clusterTestPart}}
		})},
		{"sender with 4 layers", "with 4 layers", edit(func(d *CallDecision) {
			d.Video, d.Senders = true, []SenderTarget{{Participant: clusterTestPart, Layers: 4}}
		})},
		{"zero receiver", "zero participant id", edit(func(d *CallDecision) {
			d.Video, d.Layers = true, []LayerAssign{{Sender: clusterTestPart}}
		})},
		{"rank 3", "rank 3", edit(func(d *CallDecision) {
			d.Video, d.Layers = true, []LayerAssign{{Receiver: clusterTestPart3, Sender: clusterTestPart, Rank: 3}}
		})},
		{"pair twice", "twice", edit(func(d *CallDecision) {
			d.Video = true
			_, d.Layers = decisionTestVideo(0, 30)
			d.Layers[29].Receiver, d.Layers[29].Sender = d.Layers[2].Receiver, d.Layers[2].Sender
		})},
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
			name: "video, largest",
			in: func() *CallDecision {
				d := &CallDecision{Call: clusterTestCall, Epoch: 1, Forward: decisionTestForward(255), Conductor: strings.Repeat("~", 64), Video: true}
				d.Senders, d.Layers = decisionTestVideo(255, 1500)
				d.Senders[7].TotalBps, d.Senders[7].LayerBps = 1<<32-1, [MaxSimulcastLayers]uint32{1<<32 - 1, 1<<32 - 1}
				return d
			}(),
		},
		{
			name: "video section present but empty",
			in:   &CallDecision{Call: clusterTestCall, Epoch: 1, Conductor: "c", Video: true},
		},
		{
			name: "video, targets beyond the layers are not sent",
			in: &CallDecision{Call: clusterTestCall, Epoch: 1, Conductor: "c", Video: true, Senders: []SenderTarget{
				{Participant: clusterTestPart, Layers: 1, TotalBps: 9, LayerBps: [MaxSimulcastLayers]uint32{1, 2, 3}},
			}},
			out: &CallDecision{Call: clusterTestCall, Epoch: 1, Conductor: "c", Video: true, Senders: []SenderTarget{
				{Participant: clusterTestPart, Layers: 1, TotalBps: 9, LayerBps: [MaxSimulcastLayers]uint32{1}},
			}},
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
			size := clusterMsgOverhead + decisionFixedLen + len(tt.in.Conductor) + 16*len(tt.in.Forward)
			if tt.in.Video {
				size += 4 + 36*len(tt.in.Senders) + 33*len(tt.in.Layers)
			}
			require.Len(t, b, size)
			require.Equal(t, size, tt.in.MarshalSize())
			got, err := decodeClusterMsg(b, k)
			require.NoError(t, err)
			require.Equal(t, tt.out, got)
		})
	}
}

// TestDecisionLargest: a body of exactly 65535 bytes is the largest
// decision: 52 + 7 (id) + 4 + 1984 assignments of 33 bytes.
func TestDecisionLargest(t *testing.T) {
	k := testClusterKey(t)
	d := &CallDecision{Call: clusterTestCall, Epoch: 1, Conductor: "cond-01", Video: true}
	_, d.Layers = decisionTestVideo(0, 1984)
	require.Equal(t, clusterMsgOverhead+65535, d.MarshalSize())
	wire, err := d.Marshal(nil, k)
	require.NoError(t, err)
	require.Len(t, wire, d.MarshalSize())
	var got CallDecision
	require.NoError(t, got.Unmarshal(wire, k))
	require.Equal(t, d, decisionNormalize(&got))

	_, d.Layers = decisionTestVideo(0, 1985)
	_, err = d.Marshal(nil, k)
	require.ErrorIs(t, err, ErrClusterMsgInvalid)
	require.ErrorContains(t, err, "body of 65568 bytes")
}

// TestDecisionWithoutVideoUnchanged: a decision without video encodes as
// before the video section existed, and so does one whose Video is unset.
func TestDecisionWithoutVideoUnchanged(t *testing.T) {
	k := testClusterKey(t)
	d := *decisionGoldenTests[0].msg
	d.Senders, d.Layers = []SenderTarget{}, []LayerAssign{}
	b, err := d.Marshal(nil, k)
	require.NoError(t, err)
	require.Equal(t, decisionGoldenTests[0].wire, b)
	require.Equal(t, len(b), d.MarshalSize())

	d.Video = true
	b, err = d.Marshal(nil, k)
	require.NoError(t, err)
	require.Len(t, b, len(decisionGoldenTests[0].wire)+4, "an empty section is 4 bytes")
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

	// The video slices likewise.
	video := &CallDecision{Call: clusterTestCall, Epoch: 2, Seq: 6, Conductor: "cond-2", Video: true}
	video.Senders, video.Layers = decisionTestVideo(20, 100)
	videoWire, err := video.Marshal(nil, k)
	require.NoError(t, err)
	require.NoError(t, d.Unmarshal(videoWire, k))
	require.Equal(t, video, decisionNormalize(&d))
	senders, layers := &d.Senders[0], &d.Layers[0]
	require.NoError(t, d.Unmarshal(decisionGoldenTests[0].wire, k))
	require.Equal(t, decisionGoldenTests[0].msg, decisionNormalize(&d), "no video section: Video false, no targets")
	require.NoError(t, d.Unmarshal(decisionGoldenTests[2].wire, k))
	require.Equal(t, decisionGoldenTests[2].msg, &d)
	require.Same(t, senders, &d.Senders[0], "Senders keeps its array")
	require.Same(t, layers, &d.Layers[0], "Layers keeps its array")
	require.ErrorIs(t, d.Unmarshal(videoWire[:len(videoWire)-1], k), ErrClusterMsgInvalid)
	require.Equal(t, CallDecision{Forward: []ID{}, Senders: []SenderTarget{}, Layers: []LayerAssign{}}, d)
}

func TestDecisionUnmarshalAllocs(t *testing.T) {
	k := testClusterKey(t)
	big := &CallDecision{Call: clusterTestCall, Epoch: 2, Seq: 5, Forward: decisionTestForward(40), Conductor: "cond-1"}
	bigWire, err := big.Marshal(nil, k)
	require.NoError(t, err)
	video := &CallDecision{Call: clusterTestCall, Epoch: 2, Seq: 6, Conductor: "cond-1", Video: true}
	video.Senders, video.Layers = decisionTestVideo(16, 240)
	videoWire, err := video.Marshal(nil, k)
	require.NoError(t, err)
	var d CallDecision
	require.NoError(t, d.Unmarshal(bigWire, k), "warm-up")
	require.NoError(t, d.Unmarshal(videoWire, k), "warm-up")
	allocs := testing.AllocsPerRun(100, func() {
		if err := d.Unmarshal(decisionGoldenTests[0].wire, k); err != nil {
			t.Fatal(err)
		}
		if err := d.Unmarshal(bigWire, k); err != nil {
			t.Fatal(err)
		}
		if err := d.Unmarshal(videoWire, k); err != nil {
			t.Fatal(err)
		}
		if err := d.Unmarshal(decisionGoldenTests[2].wire, k); err != nil {
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
	video := &CallDecision{Call: clusterTestCall, Epoch: 9, Seq: 1, Conductor: "c", Forward: decisionTestForward(3), Video: true}
	video.Senders, video.Layers = decisionTestVideo(4, 24)
	videoWire, err := video.Marshal(nil, k)
	require.NoError(t, err)
	seeds["video-4-senders-24-assignments"] = videoWire
	seeds["video-pair-twice"] = rawClusterMsg(k, byte(ClusterMsgDecision), decisionVideoBody(clusterSet(248, bytes.Repeat([]byte{0x22}, 16)...)))
	seeds["video-rank-3"] = rawClusterMsg(k, byte(ClusterMsgDecision), decisionVideoBody(clusterSet(198, 3)))
	seeds["video-short-section"] = rawClusterMsg(k, byte(ClusterMsgDecision), decisionBody(func(b []byte) []byte { return append(b, 1, 0) }))
	seeds["duplicate"] = rawClusterMsg(k, byte(ClusterMsgDecision), decisionBody(clusterSet(74, bytes.Repeat([]byte{0x22}, 16)...)))
	seeds["epoch-0"] = rawClusterMsg(k, byte(ClusterMsgDecision), decisionBody(clusterSet(4, 0, 0, 0, 0)))
	seeds["count-mismatch"] = rawClusterMsg(k, byte(ClusterMsgDecision), decisionBody(clusterSet(1, 3)))
	seeds["a-member-notice"] = clusterGoldenTests[0].wire
	seeds["empty"] = []byte{}
	return seeds
}

// decisionNormalize drops the difference between nil and empty slices.
func decisionNormalize(d *CallDecision) *CallDecision {
	c := *d
	if len(c.Forward) == 0 {
		c.Forward = nil
	}
	if len(c.Senders) == 0 {
		c.Senders = nil
	}
	if len(c.Layers) == 0 {
		c.Layers = nil
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
