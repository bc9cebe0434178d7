package protocol

import "encoding/binary"

// DominantSpeaker (subtype 3, relay -> device) names the call's dominant
// speaker, for the device's UI (who is shown big).
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                                                               |
//	+                 participant id (16 bytes, GUID)               +
//	|                                                               |
//	+                                                               +
//	|                                                               |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                            epoch                              |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                           sequence                            |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// An all-zero participant id means nobody is dominant. Epoch is the lease
// epoch of the conductor that decided; sequence counts its decisions for
// the call. A device applies a message only when it is Newer than the last
// one it applied, so a late or repeated packet never flips the UI back, and
// a conductor that takes over (a higher epoch) wins without knowing the old
// one's sequence.
type DominantSpeaker struct {
	Participant [16]byte
	Epoch       uint32
	Sequence    uint32
}

const dominantSpeakerLen = 24

// SubType returns SubTypeDominantSpeaker.
func (*DominantSpeaker) SubType() uint8 { return SubTypeDominantSpeaker }

// Newer reports whether d was decided after prev: a higher epoch, or the
// same epoch and a higher sequence.
func (d *DominantSpeaker) Newer(prev DominantSpeaker) bool {
	if d.Epoch != prev.Epoch {
		return d.Epoch > prev.Epoch
	}
	return d.Sequence > prev.Sequence
}

// MarshalData appends the 24-byte body.
func (d *DominantSpeaker) MarshalData(dst []byte) ([]byte, error) {
	dst = append(dst, d.Participant[:]...)
	dst = binary.BigEndian.AppendUint32(dst, d.Epoch)
	return binary.BigEndian.AppendUint32(dst, d.Sequence), nil
}

// UnmarshalData decodes the 24-byte body.
func (d *DominantSpeaker) UnmarshalData(b []byte) error {
	*d = DominantSpeaker{}
	if err := relayCheckLen("dominant speaker", b, dominantSpeakerLen); err != nil {
		return err
	}
	copy(d.Participant[:], b[0:16])
	d.Epoch = binary.BigEndian.Uint32(b[16:20])
	d.Sequence = binary.BigEndian.Uint32(b[20:24])
	return nil
}
