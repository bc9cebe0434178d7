package client

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

func speakerMsg(t *testing.T, p protocol.ID, epoch, seq uint32) []byte {
	t.Helper()
	b, err := protocol.MarshalRelayApp(0, &protocol.DominantSpeaker{Participant: p, Epoch: epoch, Sequence: seq})
	require.NoError(t, err)
	return b
}

func TestSpeakerTrackerKeepsTheNewest(t *testing.T) {
	a, b := protocol.NewID(), protocol.NewID()
	var tr SpeakerTracker
	_, ok := tr.Current()
	require.False(t, ok)

	got, changed := tr.Observe(speakerMsg(t, a, 1, 1))
	require.True(t, changed)
	require.Equal(t, a, got)

	_, changed = tr.Observe(speakerMsg(t, a, 1, 1)) // a repeat
	require.False(t, changed)
	_, changed = tr.Observe(speakerMsg(t, b, 1, 0)) // late: older sequence
	require.False(t, changed)
	cur, _ := tr.Current()
	require.Equal(t, a, cur)

	got, changed = tr.Observe(speakerMsg(t, b, 2, 0)) // a new conductor's epoch wins
	require.True(t, changed)
	require.Equal(t, b, got)
	_, changed = tr.Observe(speakerMsg(t, a, 1, 99)) // the old conductor is fenced off
	require.False(t, changed)
	require.Equal(t, 2, tr.Changes())
}

func TestSpeakerTrackerIgnoresGarbage(t *testing.T) {
	var tr SpeakerTracker
	for _, b := range [][]byte{nil, {0x80}, {0x80, 200, 0, 1, 0, 0, 0, 0}, make([]byte, 40)} {
		_, changed := tr.Observe(b)
		require.False(t, changed)
	}
	rejoin, err := protocol.MarshalRelayApp(0, &protocol.Rejoin{Reason: protocol.RejoinUnknownAddress})
	require.NoError(t, err)
	_, changed := tr.Observe(rejoin)
	require.False(t, changed)
	_, ok := tr.Current()
	require.False(t, ok)
}
