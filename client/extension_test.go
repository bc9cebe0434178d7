package client

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// An audio Sender carries abs-send-time next to the audio level once asked
// to; the value is rewritten in place for every packet.
func TestSenderAbsSendTime(t *testing.T) {
	snd, rcv := newPair(t, SenderConfig{SSRC: 0x10, PayloadType: 111})
	for i, at := range []time.Time{t0, t0.Add(20 * time.Millisecond), t0.Add(time.Minute)} {
		require.NoError(t, snd.SetAbsSendTime(protocol.DefaultAbsSendTimeExtensionID, at))
		pkt, err := snd.Seal(nil, Sample{Payload: []byte{byte(i)}, AudioLevel: AudioLevel{Level: 40, Voice: true}})
		require.NoError(t, err)
		var h protocol.RTPHeader
		require.NoError(t, h.Parse(pkt))
		abs, ok := h.AbsSendTime(protocol.DefaultAbsSendTimeExtensionID)
		require.True(t, ok)
		require.Equal(t, protocol.AbsSendTime(at), abs)
		voice, level, ok := h.AudioLevel(protocol.DefaultAudioLevelExtensionID)
		require.True(t, ok)
		require.True(t, voice)
		require.Equal(t, uint8(40), level)
		plain, err := rcv.Open(nil, pkt, nil)
		require.NoError(t, err)
		require.Equal(t, []byte{byte(i)}, plain)
	}
	allocs := testing.AllocsPerRun(100, func() {
		_ = snd.SetAbsSendTime(protocol.DefaultAbsSendTimeExtensionID, t0)
	})
	require.Zero(t, allocs, "rewritten in place")

	require.Error(t, snd.SetAbsSendTime(protocol.DefaultAudioLevelExtensionID, t0), "the audio level's id")
	require.Error(t, snd.SetAbsSendTime(0, t0))
	require.Error(t, snd.SetAbsSendTime(15, t0))
}
