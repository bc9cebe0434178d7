package protocol

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRejoin(t *testing.T) {
	relayRunBodyTests(t, func() RelayMessage { return new(Rejoin) },
		[]relayBodyCase{
			{name: "no reason", msg: &Rejoin{}, data: nil},
			{
				name: "unknown address",
				msg:  &Rejoin{Reason: RejoinUnknownAddress},
				data: []byte{0x01, 0x00, 0x00, 0x00}, // reason 1
			},
			{
				name: "future reason",
				msg:  &Rejoin{Reason: 200},
				data: []byte{0xc8, 0x00, 0x00, 0x00}, // reason 200, accepted
			},
		},
		[]relayBadBody{
			{"two bytes", []byte{0x01, 0x00}, ErrRelayAppTruncated},
			{"two words", []byte{0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}, ErrRelayAppOversized},
		},
		nil,
	)
	var r Rejoin
	require.NoError(t, r.UnmarshalData([]byte{0x00, 0x00, 0x00, 0x00}), "an explicit unspecified reason is fine")
	require.Equal(t, Rejoin{}, r)
}

func TestRejoinReasonString(t *testing.T) {
	require.Equal(t, "unspecified", RejoinUnspecified.String())
	require.Equal(t, "unknown-address", RejoinUnknownAddress.String())
	require.Equal(t, "session-expired", RejoinSessionExpired.String())
	require.Equal(t, "reason-9", RejoinReason(9).String())
}
