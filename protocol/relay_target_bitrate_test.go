package protocol

import "testing"

func TestTargetBitrate(t *testing.T) {
	relayRunBodyTests(t, func() RelayMessage { return new(TargetBitrate) },
		[]relayBodyCase{
			{
				name: "total only",
				msg:  &TargetBitrate{Total: 64_000},
				data: []byte{
					0x00, 0x00, 0xfa, 0x00, // total 64000 bit/s
					0x00, 0x00, 0x00, 0x00, // 0 layers
				},
			},
			{
				name: "three layers",
				msg:  &TargetBitrate{Total: 2_500_000, LayerCount: 3, Layers: [3]uint32{150_000, 500_000, 1_800_000}},
				data: []byte{
					0x00, 0x26, 0x25, 0xa0, // total 2500000
					0x03, 0x00, 0x00, 0x00, // 3 layers
					0x00, 0x02, 0x49, 0xf0, // layer 0: 150000
					0x00, 0x07, 0xa1, 0x20, // layer 1: 500000
					0x00, 0x1b, 0x77, 0x40, // layer 2: 1800000
				},
			},
			{
				name: "top layer paused",
				msg:  &TargetBitrate{Total: 400_000, LayerCount: 2, Layers: [3]uint32{100_000, 0}},
				data: []byte{
					0x00, 0x06, 0x1a, 0x80, // total 400000
					0x02, 0x00, 0x00, 0x00, // 2 layers
					0x00, 0x01, 0x86, 0xa0, // layer 0: 100000
					0x00, 0x00, 0x00, 0x00, // layer 1: 0 = do not send
				},
			},
		},
		[]relayBadBody{
			{"empty", nil, ErrRelayAppTruncated},
			{"half", []byte{0x00, 0x00, 0xfa, 0x00}, ErrRelayAppTruncated},
			{
				"layer missing",
				[]byte{
					0x00, 0x00, 0xfa, 0x00, // total
					0x02, 0x00, 0x00, 0x00, // 2 layers
					0x00, 0x00, 0x00, 0x01, // one present
				},
				ErrRelayAppTruncated,
			},
			{
				"extra word",
				[]byte{
					0x00, 0x00, 0xfa, 0x00, // total
					0x00, 0x00, 0x00, 0x00, // 0 layers
					0x00, 0x00, 0x00, 0x01, // extra
				},
				ErrRelayAppOversized,
			},
			{
				"four layers",
				[]byte{
					0x00, 0x00, 0xfa, 0x00, // total
					0x04, 0x00, 0x00, 0x00, // 4 layers
					0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4,
				},
				ErrRelayAppInvalid,
			},
		},
		[]relayBadMsg{{"four layers", &TargetBitrate{LayerCount: 4}}},
	)
}
