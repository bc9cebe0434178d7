package protocol

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSubscription(t *testing.T) {
	a := [16]byte{0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0x01}
	b := [16]byte{0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0x02}
	full := &Subscription{Sequence: 1}
	fullData := []byte{0x10, 0x00, 0x00, 0x01} // 16 entries, sequence 1
	for i := range MaxSubscriptions {
		id := [16]byte{15: byte(i + 1)}
		full.Videos = append(full.Videos, VideoSubscription{Participant: id, MaxHeight: 180})
		fullData = append(fullData, id[:]...)
		fullData = append(fullData, 0x00, 0xb4, 0x00, 0x00) // height 180, any frame rate
	}
	relayRunBodyTests(t, func() RelayMessage { return new(Subscription) },
		[]relayBodyCase{
			{
				name: "no video",
				msg:  &Subscription{Sequence: 0x0102},
				data: []byte{0x00, 0x00, 0x01, 0x02}, // 0 entries, sequence 0x0102
			},
			{
				name: "two videos",
				msg: &Subscription{Sequence: 7, Videos: []VideoSubscription{
					{Participant: a, MaxHeight: 720, MaxFrameRate: 30},
					{Participant: b},
				}},
				data: []byte{
					0x02, 0x00, 0x00, 0x07, // 2 entries, sequence 7
					0xaa, 0xaa, 0xaa, 0xaa, // participant a
					0xaa, 0xaa, 0xaa, 0xaa,
					0xaa, 0xaa, 0xaa, 0xaa,
					0xaa, 0xaa, 0xaa, 0x01,
					0x02, 0xd0, 0x1e, 0x00, // max height 720, max 30 fps
					0xbb, 0xbb, 0xbb, 0xbb, // participant b
					0xbb, 0xbb, 0xbb, 0xbb,
					0xbb, 0xbb, 0xbb, 0xbb,
					0xbb, 0xbb, 0xbb, 0x02,
					0x00, 0x00, 0x00, 0x00, // no limits
				},
			},
			{name: "sixteen videos", msg: full, data: fullData},
		},
		[]relayBadBody{
			{"empty", nil, ErrRelayAppTruncated},
			{"entry missing", []byte{0x01, 0x00, 0x00, 0x01}, ErrRelayAppTruncated},
			{"entry cut", append([]byte{0x01, 0x00, 0x00, 0x01}, make([]byte, 19)...), ErrRelayAppTruncated},
			{"extra word", []byte{0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00}, ErrRelayAppOversized},
			{"seventeen", append([]byte{0x11, 0x00, 0x00, 0x01}, make([]byte, 17*20)...), ErrRelayAppInvalid},
			{
				"same participant twice",
				append(append([]byte{0x02, 0x00, 0x00, 0x01}, // 2 entries
					append(a[:], 0x00, 0xb4, 0x0f, 0x00)...), // a, 180p 15 fps
					append(a[:], 0x02, 0xd0, 0x1e, 0x00)...), // a again, 720p 30 fps
				ErrRelayAppInvalid,
			},
		},
		[]relayBadMsg{
			{"seventeen", &Subscription{Videos: make([]VideoSubscription, 17)}},
			{"same participant twice", &Subscription{Videos: []VideoSubscription{{Participant: a}, {Participant: b}, {Participant: a}}}},
		},
	)
}

func TestSubscriptionNewer(t *testing.T) {
	require.True(t, (&Subscription{Sequence: 2}).Newer(1))
	require.True(t, (&Subscription{Sequence: 0}).Newer(0xffff), "wraps")
	require.True(t, (&Subscription{Sequence: 0x7fff}).Newer(0))
	require.False(t, (&Subscription{Sequence: 0x8000}).Newer(0))
	require.False(t, (&Subscription{Sequence: 1}).Newer(1))
	require.False(t, (&Subscription{Sequence: 0xffff}).Newer(0), "older across the wrap")
}

func TestSubscriptionReusesCapacity(t *testing.T) {
	s := Subscription{Videos: make([]VideoSubscription, 0, MaxSubscriptions)}
	body := append([]byte{0x01, 0x00, 0x00, 0x05}, make([]byte, 20)...)
	body[4] = 9
	allocs := testing.AllocsPerRun(50, func() {
		if err := s.UnmarshalData(body); err != nil {
			panic(err)
		}
	})
	require.Zero(t, allocs)
	require.Equal(t, uint16(5), s.Sequence)
	require.Equal(t, [16]byte{9}, s.Videos[0].Participant)
}
