package protocol

import (
	"encoding/binary"
	"fmt"
)

// LoudOnset (subtype 5, device -> relay) flags that the device's audio just
// went from silence to loud speech. The forwarder starts forwarding that
// audio stream at once, before the conductor's next decision, so that first
// words are not cut off.
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                       audio stream SSRC                       |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|0|    level    |                  reserved (0)                 |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// Level is in RFC 6464 units: 0..127, -dBov (0 is the loudest).
type LoudOnset struct {
	AudioSSRC uint32
	Level     uint8 // 0..127 -dBov
}

const loudOnsetLen = 8

// SubType returns SubTypeLoudOnset.
func (*LoudOnset) SubType() uint8 { return SubTypeLoudOnset }

// MarshalData appends the 8-byte body.
func (l *LoudOnset) MarshalData(dst []byte) ([]byte, error) {
	if l.Level > rtpAudioLevelMx {
		return dst, fmt.Errorf("%w: loud onset level %d > 127", ErrRelayAppInvalid, l.Level)
	}
	dst = binary.BigEndian.AppendUint32(dst, l.AudioSSRC)
	return append(dst, l.Level, 0, 0, 0), nil
}

// UnmarshalData decodes the 8-byte body.
func (l *LoudOnset) UnmarshalData(b []byte) error {
	*l = LoudOnset{}
	if err := relayCheckLen("loud onset", b, loudOnsetLen); err != nil {
		return err
	}
	if b[4] > rtpAudioLevelMx {
		return fmt.Errorf("%w: loud onset level byte %#x has the high bit set", ErrRelayAppInvalid, b[4])
	}
	l.AudioSSRC = binary.BigEndian.Uint32(b[0:4])
	l.Level = b[4]
	return nil
}
