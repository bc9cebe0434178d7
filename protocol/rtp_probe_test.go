package protocol

import (
	"testing"

	"github.com/pion/rtp"
	"github.com/stretchr/testify/require"
)

func TestRelayProbeParses(t *testing.T) {
	for _, size := range []int{32, 100, 267, 1000, 1200} {
		b, err := AppendRelayProbe(nil, 7, 0x123456, DefaultAbsSendTimeExtensionID, size)
		require.NoError(t, err)
		var h RTPHeader
		require.NoError(t, h.Parse(b))
		require.Equal(t, RelayProbeSSRC, h.SSRC)
		require.Equal(t, uint16(7), h.SequenceNumber)
		abs, ok := h.AbsSendTime(DefaultAbsSendTimeExtensionID)
		require.True(t, ok)
		require.Equal(t, uint32(0x123456), abs)
		require.Len(t, b, size)
		require.Equal(t, make([]byte, size-h.HeaderLen), h.Payload(), "zeros after the header")
		var p rtp.Packet // pion agrees
		require.NoError(t, p.Unmarshal(b))
		require.Equal(t, RelayProbeSSRC, p.SSRC)
		_, _, audio := h.AudioLevel(DefaultAudioLevelExtensionID)
		require.False(t, audio)
	}
	// The README's example.
	b, err := AppendRelayProbe(nil, 5, 0x2a0000, 3, 1000)
	require.NoError(t, err)
	require.Equal(t, []byte{0x90, 0x7f, 0x00, 0x05, 0, 0, 0, 0, 0, 0, 0, 0, 0xbe, 0xde, 0x00, 0x01, 0x32, 0x2a, 0x00, 0x00, 0, 0, 0, 0}, b[:24])
	_, err = AppendRelayProbe(nil, 1, 0, 3, 10)
	require.ErrorIs(t, err, ErrRTPShortBuffer)
}
