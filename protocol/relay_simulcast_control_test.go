package protocol

import "testing"

func TestSimulcastControl(t *testing.T) {
	relayRunBodyTests(t, func() RelayMessage { return new(SimulcastControl) },
		[]relayBodyCase{
			{
				name: "off",
				msg:  &SimulcastControl{Layers: 1},
				data: []byte{0x00, 0x01, 0x00, 0x00}, // S=0, 1 layer
			},
			{
				name: "two layers",
				msg:  &SimulcastControl{Enabled: true, Layers: 2},
				data: []byte{0x80, 0x02, 0x00, 0x00}, // S=1, 2 layers
			},
			{
				name: "three layers",
				msg:  &SimulcastControl{Enabled: true, Layers: 3},
				data: []byte{0x80, 0x03, 0x00, 0x00}, // S=1, 3 layers
			},
		},
		[]relayBadBody{
			{"empty", nil, ErrRelayAppTruncated},
			{"two bytes", []byte{0x80, 0x02}, ErrRelayAppTruncated},
			{"two words", []byte{0x80, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}, ErrRelayAppOversized},
			{"off with 2 layers", []byte{0x00, 0x02, 0x00, 0x00}, ErrRelayAppInvalid},
			{"off with 0 layers", []byte{0x00, 0x00, 0x00, 0x00}, ErrRelayAppInvalid},
			{"on with 1 layer", []byte{0x80, 0x01, 0x00, 0x00}, ErrRelayAppInvalid},
			{"on with 4 layers", []byte{0x80, 0x04, 0x00, 0x00}, ErrRelayAppInvalid},
		},
		[]relayBadMsg{
			{"zero value", &SimulcastControl{}},
			{"on with 1 layer", &SimulcastControl{Enabled: true, Layers: 1}},
			{"on with 4 layers", &SimulcastControl{Enabled: true, Layers: 4}},
		},
	)
}

func TestSimulcastControlIgnoresReservedBits(t *testing.T) {
	var s SimulcastControl
	if err := s.UnmarshalData([]byte{0xff, 0x03, 0xff, 0xff}); err != nil {
		t.Fatal(err)
	}
	if s != (SimulcastControl{Enabled: true, Layers: 3}) {
		t.Fatalf("%+v", s)
	}
}
