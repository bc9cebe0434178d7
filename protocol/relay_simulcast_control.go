package protocol

import "fmt"

// SimulcastControl (subtype 2, relay -> sender) turns simulcast on or off.
// The relay asks a sender to split only when its receivers' capacities
// differ; a single stream costs the sender less uplink and CPU.
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|S| reserved(0) |    layers     |          reserved (0)         |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// S=1: send layers simulcast layers (2 or 3), each on its own SSRC.
// S=0: send one stream; layers must be 1.
type SimulcastControl struct {
	Enabled bool  // S: split into simulcast layers
	Layers  uint8 // 1 when !Enabled, 2..MaxSimulcastLayers when Enabled
}

const simulcastFlag = 0x80

// SubType returns SubTypeSimulcastControl.
func (*SimulcastControl) SubType() uint8 { return SubTypeSimulcastControl }

func (s *SimulcastControl) check() error {
	if s.Enabled && (s.Layers < 2 || s.Layers > MaxSimulcastLayers) ||
		!s.Enabled && s.Layers != 1 {
		return fmt.Errorf("%w: simulcast enabled=%t with %d layers", ErrRelayAppInvalid, s.Enabled, s.Layers)
	}
	return nil
}

// MarshalData appends the 4-byte body.
func (s *SimulcastControl) MarshalData(dst []byte) ([]byte, error) {
	if err := s.check(); err != nil {
		return dst, err
	}
	var flags byte
	if s.Enabled {
		flags = simulcastFlag
	}
	return append(dst, flags, s.Layers, 0, 0), nil
}

// UnmarshalData decodes the 4-byte body.
func (s *SimulcastControl) UnmarshalData(b []byte) error {
	*s = SimulcastControl{}
	if err := relayCheckLen("simulcast control", b, 4); err != nil {
		return err
	}
	m := SimulcastControl{Enabled: b[0]&simulcastFlag != 0, Layers: b[1]}
	if err := m.check(); err != nil {
		return err
	}
	*s = m
	return nil
}
