package client

import (
	"bytes"
	"testing"

	"github.com/pion/rtp"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

func newPair(t *testing.T, cfg SenderConfig) (*Sender, *Receiver) {
	t.Helper()
	s, err := NewSender(cfg)
	require.NoError(t, err)
	r := NewReceiver()
	require.NoError(t, r.AddSender(cfg.SSRC, cfg.Key))
	return s, r
}

func TestE2EERoundTrip(t *testing.T) {
	key := NewMediaKey()
	s, r := newPair(t, SenderConfig{SSRC: 0xCAFE, PayloadType: 111, Key: key})
	var seq uint16
	for i := range 20 {
		plain := bytes.Repeat([]byte{byte(i)}, 20+i)
		smp := Sample{Payload: plain, Timestamp: uint32(960 * i), Marker: i == 0, AudioLevel: AudioLevel{Level: uint8(i), Voice: i%2 == 0}}
		pkt, err := s.Seal(nil, smp)
		require.NoError(t, err)

		var hdr rtp.Header
		got, err := r.Open(nil, pkt, &hdr)
		require.NoError(t, err)
		require.Equal(t, plain, got, "byte-exact plaintext")
		require.Equal(t, uint32(0xCAFE), hdr.SSRC)
		require.Equal(t, uint8(111), hdr.PayloadType)
		require.Equal(t, smp.Timestamp, hdr.Timestamp)
		require.Equal(t, smp.Marker, hdr.Marker)
		if i > 0 {
			require.Equal(t, seq+1, hdr.SequenceNumber)
		}
		seq = hdr.SequenceNumber
	}
}

func TestE2EEHeaderInClearPayloadOpaque(t *testing.T) {
	for _, tc := range []struct {
		name string
		id   uint8 // configured id; 0 means the default
		want uint8
	}{{"default id", 0, 1}, {"id 5", 5, 5}} {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := newPair(t, SenderConfig{SSRC: 7, PayloadType: 111, Key: NewMediaKey(), AudioLevelID: tc.id})
			plain := []byte("first words of the meeting, in clear nowhere")
			pkt, err := s.Seal(nil, Sample{Payload: plain, Timestamp: 1, AudioLevel: AudioLevel{Level: 42, Voice: true}})
			require.NoError(t, err)

			// What the relay does: parse the clear header with a stock parser.
			var p rtp.Packet
			require.NoError(t, p.Unmarshal(pkt))
			require.Equal(t, uint16(rtp.ExtensionProfileOneByte), p.ExtensionProfile)
			require.Equal(t, []byte{0x80 | 42}, p.GetExtension(tc.want), "audio level readable by the relay")
			require.Len(t, p.Payload, len(plain)+10, "payload + 80-bit auth tag")
			require.NotEqual(t, plain, p.Payload[:len(plain)])
			require.False(t, bytes.Contains(pkt, plain[:8]), "no plaintext on the wire")
		})
	}
}

func TestE2EEVideoHasNoAudioLevel(t *testing.T) {
	s, r := newPair(t, SenderConfig{SSRC: 9, PayloadType: 96, Key: NewMediaKey(), NoAudioLevel: true})
	pkt, err := s.Seal(nil, Sample{Payload: []byte("frame"), Timestamp: 90000})
	require.NoError(t, err)
	var hdr rtp.Header
	got, err := r.Open(nil, pkt, &hdr)
	require.NoError(t, err)
	require.Equal(t, []byte("frame"), got)
	require.Nil(t, hdr.GetExtension(protocol.DefaultAudioLevelExtensionID))
	require.Equal(t, []uint8{protocol.DefaultRolloverCounterExtensionID}, hdr.GetExtensionIDs(), "only the rollover counter")
}

func TestE2EERejects(t *testing.T) {
	key := NewMediaKey()
	s, r := newPair(t, SenderConfig{SSRC: 11, PayloadType: 111, Key: key})
	seal := func() []byte {
		pkt, err := s.Seal(nil, Sample{Payload: []byte("hello, group"), Timestamp: 3, AudioLevel: AudioLevel{Level: 10}})
		require.NoError(t, err)
		return pkt
	}

	t.Run("tampered payload", func(t *testing.T) {
		pkt := seal()
		pkt[len(pkt)-12] ^= 1
		_, err := r.Open(nil, pkt, nil)
		require.ErrorIs(t, err, ErrDecrypt)
	})
	t.Run("tampered audio level", func(t *testing.T) {
		pkt := seal()
		pkt[17] ^= 0x7F // the level byte: the header is authenticated too
		_, err := r.Open(nil, pkt, nil)
		require.ErrorIs(t, err, ErrDecrypt)
	})
	t.Run("unknown SSRC", func(t *testing.T) {
		other, err := NewSender(SenderConfig{SSRC: 12, PayloadType: 111, Key: key})
		require.NoError(t, err)
		pkt, err := other.Seal(nil, Sample{Payload: []byte("x")})
		require.NoError(t, err)
		_, err = r.Open(nil, pkt, nil)
		require.ErrorIs(t, err, ErrUnknownSSRC)
	})
	t.Run("wrong key", func(t *testing.T) {
		r2 := NewReceiver()
		require.NoError(t, r2.AddSender(11, NewMediaKey()))
		_, err := r2.Open(nil, seal(), nil)
		require.ErrorIs(t, err, ErrDecrypt)
	})
	t.Run("replay", func(t *testing.T) {
		pkt := seal()
		_, err := r.Open(nil, pkt, nil)
		require.NoError(t, err)
		_, err = r.Open(nil, pkt, nil)
		require.ErrorIs(t, err, ErrDecrypt)
	})
	t.Run("late but unseen is accepted", func(t *testing.T) {
		early, late := seal(), seal()
		_, err := r.Open(nil, late, nil)
		require.NoError(t, err)
		_, err = r.Open(nil, early, nil) // e.g. a NACK retransmission
		require.NoError(t, err)
	})
	t.Run("removed sender", func(t *testing.T) {
		r.RemoveSender(11)
		_, err := r.Open(nil, seal(), nil)
		require.ErrorIs(t, err, ErrUnknownSSRC)
	})
	t.Run("not RTP", func(t *testing.T) {
		_, err := r.Open(nil, []byte{1, 2, 3}, nil)
		require.ErrorIs(t, err, ErrDecrypt)
	})
}

func TestSenderConfigErrors(t *testing.T) {
	for name, cfg := range map[string]SenderConfig{
		"PT in RTCP range": {PayloadType: 72},
		"PT over 127":      {PayloadType: 200},
		"extension id 15":  {PayloadType: 111, AudioLevelID: 15},
		"ROC id 15":        {PayloadType: 111, ROCID: 15},
		"ROC id = level's": {PayloadType: 111, AudioLevelID: 5, ROCID: 5},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := NewSender(cfg)
			require.Error(t, err)
		})
	}
	s, err := NewSender(SenderConfig{PayloadType: 111, Key: NewMediaKey()})
	require.NoError(t, err)
	_, err = s.Seal(nil, Sample{AudioLevel: AudioLevel{Level: 128}})
	require.Error(t, err)
}

func BenchmarkSealOpen(b *testing.B) {
	key := NewMediaKey()
	s, err := NewSender(SenderConfig{SSRC: 1, PayloadType: 111, Key: key})
	require.NoError(b, err)
	r := NewReceiver()
	require.NoError(b, r.AddSender(1, key))
	payload := make([]byte, 160) // one 20 ms Opus frame at 64 kbit/s
	out := make([]byte, 0, 256)
	plain := make([]byte, 0, 256)
	var hdr rtp.Header
	b.ReportAllocs()
	b.SetBytes(int64(len(payload)))
	for i := 0; b.Loop(); i++ {
		pkt, err := s.Seal(out, Sample{Payload: payload, Timestamp: uint32(960 * i)})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := r.Open(plain, pkt, &hdr); err != nil {
			b.Fatal(err)
		}
	}
}
