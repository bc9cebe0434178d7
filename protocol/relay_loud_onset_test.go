package protocol

import "testing"

func TestLoudOnset(t *testing.T) {
	relayRunBodyTests(t, func() RelayMessage { return new(LoudOnset) },
		[]relayBodyCase{
			{
				name: "loud",
				msg:  &LoudOnset{AudioSSRC: 0xdeadbeef, Level: 12},
				data: []byte{
					0xde, 0xad, 0xbe, 0xef, // audio SSRC
					0x0c, 0x00, 0x00, 0x00, // level 12 (-12 dBov)
				},
			},
			{
				name: "level 127",
				msg:  &LoudOnset{AudioSSRC: 1, Level: 127},
				data: []byte{
					0x00, 0x00, 0x00, 0x01, // audio SSRC
					0x7f, 0x00, 0x00, 0x00, // level 127
				},
			},
		},
		[]relayBadBody{
			{"empty", nil, ErrRelayAppTruncated},
			{"ssrc only", []byte{0xde, 0xad, 0xbe, 0xef}, ErrRelayAppTruncated},
			{"extra word", make([]byte, 12), ErrRelayAppOversized},
			{"level high bit", []byte{0, 0, 0, 1, 0x80, 0, 0, 0}, ErrRelayAppInvalid},
		},
		[]relayBadMsg{{"level 128", &LoudOnset{Level: 128}}},
	)
}
