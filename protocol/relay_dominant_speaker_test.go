package protocol

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestDominantSpeaker(t *testing.T) {
	relayRunBodyTests(t, func() RelayMessage { return new(DominantSpeaker) },
		[]relayBodyCase{
			{
				name: "speaker",
				msg: &DominantSpeaker{
					Participant: [16]byte{0x6b, 0xa7, 0xb8, 0x10, 0x9d, 0xad, 0x11, 0xd1, 0x80, 0xb4, 0x00, 0xc0, 0x4f, 0xd4, 0x30, 0xc8},
					Epoch:       3, Sequence: 0x01020304,
				},
				data: []byte{
					0x6b, 0xa7, 0xb8, 0x10, // participant id 6ba7b810-9dad-11d1-80b4-00c04fd430c8
					0x9d, 0xad, 0x11, 0xd1,
					0x80, 0xb4, 0x00, 0xc0,
					0x4f, 0xd4, 0x30, 0xc8,
					0x00, 0x00, 0x00, 0x03, // epoch 3
					0x01, 0x02, 0x03, 0x04, // sequence
				},
			},
			{
				name: "nobody",
				msg:  &DominantSpeaker{Epoch: 1, Sequence: 1},
				data: []byte{
					0x00, 0x00, 0x00, 0x00, // participant id: zero = nobody
					0x00, 0x00, 0x00, 0x00,
					0x00, 0x00, 0x00, 0x00,
					0x00, 0x00, 0x00, 0x00,
					0x00, 0x00, 0x00, 0x01, // epoch 1
					0x00, 0x00, 0x00, 0x01, // sequence 1
				},
			},
		},
		[]relayBadBody{
			{"empty", nil, ErrRelayAppTruncated},
			{"id only", make([]byte, 16), ErrRelayAppTruncated},
			{"no sequence", make([]byte, 20), ErrRelayAppTruncated},
			{"extra word", make([]byte, 28), ErrRelayAppOversized},
		},
		nil,
	)
}

func TestDominantSpeakerNewer(t *testing.T) {
	last := DominantSpeaker{Epoch: 5, Sequence: 10}
	require.True(t, (&DominantSpeaker{Epoch: 5, Sequence: 11}).Newer(last))
	require.True(t, (&DominantSpeaker{Epoch: 6, Sequence: 0}).Newer(last), "a new conductor wins")
	require.False(t, (&DominantSpeaker{Epoch: 5, Sequence: 10}).Newer(last), "a repeat changes nothing")
	require.False(t, (&DominantSpeaker{Epoch: 5, Sequence: 9}).Newer(last), "a late packet is ignored")
	require.False(t, (&DominantSpeaker{Epoch: 4, Sequence: 99}).Newer(last), "a deposed conductor is ignored")
	require.True(t, (&DominantSpeaker{Epoch: 1}).Newer(DominantSpeaker{}))
}
