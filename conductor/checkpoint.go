package conductor

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// checkpointKind names the conductor's checkpoint in the state store.
const checkpointKind = "conductor"

// checkpoint is a call's ephemeral decision state, saved every
// CheckpointEvery while it changes, so a conductor taking the partition
// over resumes with the same dominant speaker and recent speakers instead
// of starting from silence. Losing it costs a moment of quality, never the
// call. Layout (big-endian):
//
//	version (1 byte, = 1) | epoch (4) | sequence (4) | speaker state length (2) | speaker state
//
// The speaker state is SpeakerState's own binary form.
type checkpoint struct {
	Epoch   uint32
	Seq     uint32
	Speaker SpeakerState
}

const checkpointVersion = 1

// errCheckpoint is wrapped by every decoding error.
var errCheckpoint = errors.New("conductor: malformed checkpoint")

// MarshalBinary encodes the checkpoint.
func (c *checkpoint) MarshalBinary() ([]byte, error) {
	sp, err := c.Speaker.MarshalBinary()
	if err != nil {
		return nil, err
	}
	if len(sp) > 0xffff {
		return nil, fmt.Errorf("%w: speaker state of %d bytes", errCheckpoint, len(sp))
	}
	b := make([]byte, 0, 11+len(sp))
	b = append(b, checkpointVersion)
	b = binary.BigEndian.AppendUint32(b, c.Epoch)
	b = binary.BigEndian.AppendUint32(b, c.Seq)
	b = binary.BigEndian.AppendUint16(b, uint16(len(sp)))
	return append(b, sp...), nil
}

// UnmarshalBinary decodes a checkpoint; anything but an exact, valid one
// is an error wrapping errCheckpoint.
func (c *checkpoint) UnmarshalBinary(b []byte) error {
	*c = checkpoint{}
	if len(b) < 11 {
		return fmt.Errorf("%w: %d bytes, want at least 11", errCheckpoint, len(b))
	}
	if b[0] != checkpointVersion {
		return fmt.Errorf("%w: version %d, want %d", errCheckpoint, b[0], checkpointVersion)
	}
	n := int(binary.BigEndian.Uint16(b[9:11]))
	if len(b) != 11+n {
		return fmt.Errorf("%w: speaker state of %d bytes, %d present", errCheckpoint, n, len(b)-11)
	}
	var sp SpeakerState
	if err := sp.UnmarshalBinary(b[11:]); err != nil {
		return fmt.Errorf("%w: %w", errCheckpoint, err)
	}
	c.Epoch = binary.BigEndian.Uint32(b[1:5])
	c.Seq = binary.BigEndian.Uint32(b[5:9])
	c.Speaker = sp
	return nil
}
