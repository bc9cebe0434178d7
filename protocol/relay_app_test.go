package protocol

import (
	"errors"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/pion/rtcp"
	"github.com/stretchr/testify/require"
)

// relayBodyCase is a message and its body on the wire.
type relayBodyCase struct {
	name string
	msg  RelayMessage
	data []byte
}

// relayBadBody is a body a decoder must reject.
type relayBadBody struct {
	name string
	data []byte
	err  error
}

// relayBadMsg is a message an encoder must reject.
type relayBadMsg struct {
	name string
	msg  RelayMessage
}

// relayRunBodyTests checks that every good case encodes to its bytes and
// back, also as a whole CRLY packet, that every prefix of a good body is
// rejected or is itself a valid body, and that bad bodies and messages fail
// with the right sentinel.
func relayRunBodyTests(t *testing.T, zero func() RelayMessage, good []relayBodyCase, bad []relayBadBody, badMsgs []relayBadMsg) {
	t.Helper()
	for _, tt := range good {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.msg.SubType(), zero().SubType())
			data, err := tt.msg.MarshalData(nil)
			require.NoError(t, err)
			require.Equal(t, string(tt.data), string(data))
			require.Zero(t, len(data)%4, "bodies are whole words")

			m := zero()
			require.NoError(t, m.UnmarshalData(tt.data))
			require.Equal(t, tt.msg, m)

			pkt, err := MarshalRelayApp(0x01020304, tt.msg)
			require.NoError(t, err)
			require.Equal(t, KindRTCP, Classify(pkt))
			got, ssrc, err := ParseRelayApp(pkt)
			require.NoError(t, err)
			require.Equal(t, uint32(0x01020304), ssrc)
			require.Equal(t, tt.msg, got)

			for i := range len(tt.data) {
				p := zero()
				if err := p.UnmarshalData(tt.data[:i]); err != nil {
					require.True(t, errors.Is(err, ErrRelayAppTruncated) || errors.Is(err, ErrRelayAppInvalid),
						"prefix %d: %v", i, err)
					continue
				}
				again, err := p.MarshalData(nil)
				require.NoError(t, err)
				require.Equal(t, string(tt.data[:i]), string(again), "prefix %d decoded but is not canonical", i)
			}
		})
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			m := zero()
			require.ErrorIs(t, m.UnmarshalData(tt.data), tt.err)
			require.Equal(t, zero(), m, "a failed decode leaves the zero message")
		})
	}
	for _, tt := range badMsgs {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.msg.MarshalData(nil)
			require.ErrorIs(t, err, ErrRelayAppInvalid)
			_, err = MarshalRelayApp(1, tt.msg)
			require.ErrorIs(t, err, ErrRelayAppInvalid)
		})
	}
}

func TestRelayAppPacket(t *testing.T) {
	// A whole packet, byte by byte: DominantSpeaker from the relay.
	want := []byte{
		0x83, 0xcc, 0x00, 0x08, // V=2 P=0 subtype 3, PT=204 APP, length 8 words (36 bytes)
		0x00, 0x00, 0x00, 0x00, // SSRC 0 (relay)
		0x43, 0x52, 0x4c, 0x59, // "CRLY"
		0x00, 0x11, 0x22, 0x33, // participant id
		0x44, 0x55, 0x66, 0x77,
		0x88, 0x99, 0xaa, 0xbb,
		0xcc, 0xdd, 0xee, 0xff,
		0x00, 0x00, 0x00, 0x02, // epoch 2
		0x00, 0x00, 0x00, 0x2a, // sequence 42
	}
	msg := &DominantSpeaker{
		Participant: [16]byte{0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff},
		Epoch:       2, Sequence: 42,
	}
	got, err := MarshalRelayApp(0, msg)
	require.NoError(t, err)
	require.Equal(t, want, got)

	// pion/rtcp reads it as an APP packet, and DecodeRelayApp decodes that.
	pkts, err := rtcp.Unmarshal(got)
	require.NoError(t, err)
	require.Len(t, pkts, 1)
	app, ok := pkts[0].(*rtcp.ApplicationDefined)
	require.True(t, ok)
	require.Equal(t, "CRLY", app.Name)
	require.Equal(t, SubTypeDominantSpeaker, app.SubType)
	m, err := DecodeRelayApp(app)
	require.NoError(t, err)
	require.Equal(t, msg, m)

	// The smallest packet: a Rejoin without reason is 12 bytes.
	rejoin, err := MarshalRelayApp(0, &Rejoin{})
	require.NoError(t, err)
	require.Equal(t, []byte{
		0x87, 0xcc, 0x00, 0x02, // V=2 subtype 7, PT=204, length 2 words (12 bytes)
		0x00, 0x00, 0x00, 0x00, // SSRC
		0x43, 0x52, 0x4c, 0x59, // "CRLY"
	}, rejoin)
}

func TestParseRelayAppCompound(t *testing.T) {
	sub := &Subscription{Sequence: 9, Videos: []VideoSubscription{{Participant: [16]byte{1}, MaxHeight: 360, MaxFrameRate: 15}}}
	app, err := NewRelayApp(0xaabbccdd, sub)
	require.NoError(t, err)
	other := &rtcp.ApplicationDefined{SubType: 1, SSRC: 5, Name: "ABCD", Data: []byte{1, 2, 3, 4}}
	rr := &rtcp.ReceiverReport{SSRC: 0xaabbccdd, Reports: []rtcp.ReceptionReport{{SSRC: 7, LastSequenceNumber: 100}}}
	remb := &rtcp.ReceiverEstimatedMaximumBitrate{SenderSSRC: 1, Bitrate: 1e6, SSRCs: []uint32{7}}

	raw, err := rtcp.Marshal([]rtcp.Packet{rr, other, remb, app, &rtcp.PictureLossIndication{MediaSSRC: 7}})
	require.NoError(t, err)
	m, ssrc, err := ParseRelayApp(raw)
	require.NoError(t, err)
	require.Equal(t, uint32(0xaabbccdd), ssrc)
	require.Equal(t, sub, m)

	// Without a CRLY packet.
	raw, err = rtcp.Marshal([]rtcp.Packet{rr, other})
	require.NoError(t, err)
	_, _, err = ParseRelayApp(raw)
	require.ErrorIs(t, err, ErrRelayAppNotFound)

	// The first CRLY packet wins.
	first, err := NewRelayApp(1, &Rejoin{Reason: RejoinSessionExpired})
	require.NoError(t, err)
	raw, err = rtcp.Marshal([]rtcp.Packet{rr, first, app})
	require.NoError(t, err)
	m, ssrc, err = ParseRelayApp(raw)
	require.NoError(t, err)
	require.Equal(t, uint32(1), ssrc)
	require.Equal(t, &Rejoin{Reason: RejoinSessionExpired}, m)
}

func TestParseRelayAppErrors(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		err  error
	}{
		{"empty", nil, ErrRelayAppMalformed},
		{"three bytes", []byte{0x80, 0xcc, 0x00}, ErrRelayAppMalformed},
		{
			"version 1",
			[]byte{
				0x47, 0xcc, 0x00, 0x02, // V=1
				0x00, 0x00, 0x00, 0x00,
				0x43, 0x52, 0x4c, 0x59, // "CRLY"
			},
			ErrRelayAppMalformed,
		},
		{
			"RTP, not RTCP",
			[]byte{
				0x80, 0x6f, 0x00, 0x01, // PT=111
				0x00, 0x00, 0x00, 0x00,
				0x00, 0x00, 0x00, 0x01,
			},
			ErrRelayAppMalformed,
		},
		{
			"length past the end",
			[]byte{
				0x87, 0xcc, 0x00, 0x03, // length 3 words = 16 bytes
				0x00, 0x00, 0x00, 0x00,
				0x43, 0x52, 0x4c, 0x59, // "CRLY", 12 bytes only
			},
			ErrRelayAppMalformed,
		},
		{
			"trailing garbage after a receiver report",
			[]byte{
				0x80, 0xc9, 0x00, 0x01, // RR, length 1
				0x00, 0x00, 0x00, 0x01, // SSRC
				0x00, 0x00, // garbage
			},
			ErrRelayAppMalformed,
		},
		{
			"APP too short for a name is skipped",
			[]byte{
				0x80, 0xcc, 0x00, 0x01, // APP, length 1 (8 bytes)
				0x00, 0x00, 0x00, 0x01, // SSRC, no name
			},
			ErrRelayAppNotFound,
		},
		{
			"other APP name",
			[]byte{
				0x81, 0xcc, 0x00, 0x02, // APP subtype 1, length 2
				0x00, 0x00, 0x00, 0x01, // SSRC
				0x43, 0x52, 0x4c, 0x5a, // "CRLZ"
			},
			ErrRelayAppNotFound,
		},
		{
			"unknown subtype",
			[]byte{
				0x88, 0xcc, 0x00, 0x02, // subtype 8
				0x00, 0x00, 0x00, 0x00,
				0x43, 0x52, 0x4c, 0x59, // "CRLY"
			},
			ErrRelayAppSubType,
		},
		{
			"subtype 0",
			[]byte{
				0x80, 0xcc, 0x00, 0x02, // subtype 0
				0x00, 0x00, 0x00, 0x00,
				0x43, 0x52, 0x4c, 0x59, // "CRLY"
			},
			ErrRelayAppSubType,
		},
		{
			"body truncated",
			[]byte{
				0x85, 0xcc, 0x00, 0x03, // subtype 5 LoudOnset, length 3 (one body word)
				0x00, 0x00, 0x00, 0x00,
				0x43, 0x52, 0x4c, 0x59, // "CRLY"
				0x00, 0x00, 0x00, 0x01, // audio SSRC, level word missing
			},
			ErrRelayAppTruncated,
		},
		{
			"body oversized",
			[]byte{
				0x82, 0xcc, 0x00, 0x04, // subtype 2 SimulcastControl, length 4 (two body words)
				0x00, 0x00, 0x00, 0x00,
				0x43, 0x52, 0x4c, 0x59, // "CRLY"
				0x80, 0x02, 0x00, 0x00, // S=1, 2 layers
				0x00, 0x00, 0x00, 0x00, // extra word
			},
			ErrRelayAppOversized,
		},
		{
			"RTCP padding eats the body",
			[]byte{
				0xa5, 0xcc, 0x00, 0x04, // P=1 subtype 5, length 4
				0x00, 0x00, 0x00, 0x00,
				0x43, 0x52, 0x4c, 0x59, // "CRLY"
				0x00, 0x00, 0x00, 0x01, // audio SSRC
				0x1e, 0x00, 0x00, 0x04, // would be level 30, but 4 bytes of padding
			},
			ErrRelayAppTruncated,
		},
		{
			"RTCP padding past the body",
			[]byte{
				0xa7, 0xcc, 0x00, 0x03, // P=1 subtype 7, length 3
				0x00, 0x00, 0x00, 0x00,
				0x43, 0x52, 0x4c, 0x59, // "CRLY"
				0x00, 0x00, 0x00, 0x09, // padding count 9 > 4 bytes of data
			},
			ErrRelayAppMalformed,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, _, err := ParseRelayApp(tt.in)
			require.ErrorIs(t, err, tt.err)
			require.Nil(t, m)
		})
	}
	_, err := DecodeRelayApp(&rtcp.ApplicationDefined{Name: "XXXX", SubType: 1})
	require.ErrorIs(t, err, ErrRelayAppNotFound)
}

// relaySeedMessages are one valid message of each kind, for fuzz seeds.
func relaySeedMessages() []RelayMessage {
	id := [16]byte{0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	return []RelayMessage{
		&TargetBitrate{Total: 2_500_000, LayerCount: 3, Layers: [3]uint32{150_000, 500_000, 1_800_000}},
		&TargetBitrate{Total: 64_000},
		&SimulcastControl{Enabled: true, Layers: 3},
		&SimulcastControl{Layers: 1},
		&DominantSpeaker{Participant: id, Epoch: 7, Sequence: 1234},
		&Subscription{Sequence: 3, Videos: []VideoSubscription{
			{Participant: id, MaxHeight: 720, MaxFrameRate: 30},
			{Participant: [16]byte{1}, MaxHeight: 180, MaxFrameRate: 15},
		}},
		&Subscription{Sequence: 0xffff},
		&LoudOnset{AudioSSRC: 0x11223344, Level: 12},
		&MigrateTo{Addr: netip.MustParseAddrPort("192.0.2.10:3478"), Deadline: 5 * time.Second,
			Echo: [12]byte{'c', 'r', 'l', 'y', 11: 2}, MAC: [16]byte{0xb0, 0x36, 0xc5, 0x9b, 15: 0xf4}},
		&MigrateTo{Addr: netip.MustParseAddrPort("[2001:db8::1]:443"), Deadline: 250 * time.Millisecond,
			Echo: [12]byte{1, 2, 3}, MAC: [16]byte{9, 8, 7}},
		&Rejoin{},
		&Rejoin{Reason: RejoinUnknownAddress},
	}
}

func FuzzRelayApp(f *testing.F) {
	for _, m := range relaySeedMessages() {
		pkt, err := MarshalRelayApp(0x55667788, m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(pkt)
		f.Add(pkt[:len(pkt)-1])
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, ssrc, err := ParseRelayApp(b)
		if err != nil {
			for _, s := range []error{ErrRelayAppMalformed, ErrRelayAppNotFound, ErrRelayAppSubType,
				ErrRelayAppTruncated, ErrRelayAppOversized, ErrRelayAppInvalid} {
				if errors.Is(err, s) {
					return
				}
			}
			t.Fatalf("error without a sentinel: %v", err)
		}
		out, err := MarshalRelayApp(ssrc, m)
		if err != nil {
			t.Fatalf("decoded %#v but cannot encode it: %v", m, err)
		}
		m2, ssrc2, err := ParseRelayApp(out)
		if err != nil {
			t.Fatalf("cannot parse own encoding %x: %v", out, err)
		}
		if ssrc2 != ssrc || !reflect.DeepEqual(m, m2) {
			t.Fatalf("round trip: %#v/%d != %#v/%d", m, ssrc, m2, ssrc2)
		}
		// The canonical encoding is a fixed point.
		out2, err := MarshalRelayApp(ssrc2, m2)
		if err != nil || string(out) != string(out2) {
			t.Fatalf("encoding not stable: %x vs %x (%v)", out, out2, err)
		}
	})
}
