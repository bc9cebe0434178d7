package statestore

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/callrelay/callrelay/protocol"
)

// What the conductor keeps in the state store and other processes read:
// the name of a partition's lease and the layout of a call's checkpoint.
// A successor conductor reads both when it takes a partition over; the
// dashboard reads both to show who decides for a call and whom the
// conductor last took for its dominant speaker. They live here, once,
// so the writer and every reader agree by construction.

// PartitionLease is the lease name (see Leases) a conductor holds to decide
// for partition part (protocol.PartitionOf): "conductor/partition/<part>",
// stored on Redis under the hash tag {lease:conductor/partition/<part>}.
func PartitionLease(part int) string { return "conductor/partition/" + strconv.Itoa(part) }

// ConductorCheckpointKind is the checkpoint kind (Store.SaveCheckpoint) of
// the conductor's ConductorCheckpoint.
const ConductorCheckpointKind = "conductor"

// ConductorCheckpoint is a call's ephemeral decision state, saved by the
// partition's lease holder every few seconds while it changes, so a
// conductor taking the partition over resumes with the same dominant
// speaker and recent speakers instead of starting from silence. Losing it
// costs a moment of quality, never the call. Layout (big-endian):
//
//	version (1 byte, = 1) | epoch (4) | sequence (4) | speaker state length (2) | speaker state
//
// Epoch is the writer's lease epoch and Seq the call's last decision
// sequence; the speaker state is SpeakerState's own layout.
type ConductorCheckpoint struct {
	Epoch   uint32
	Seq     uint32
	Speaker SpeakerState
}

const (
	checkpointVersion = 1
	checkpointHeader  = 1 + 4 + 4 + 2
)

// MarshalBinary encodes the checkpoint in the layout above.
func (c *ConductorCheckpoint) MarshalBinary() ([]byte, error) {
	sp, err := c.Speaker.MarshalBinary()
	if err != nil {
		return nil, err
	}
	if len(sp) > math.MaxUint16 {
		return nil, fmt.Errorf("%w: conductor checkpoint: speaker state of %d bytes, at most %d", ErrInvalid, len(sp), math.MaxUint16)
	}
	b := make([]byte, 0, checkpointHeader+len(sp))
	b = append(b, checkpointVersion)
	b = binary.BigEndian.AppendUint32(b, c.Epoch)
	b = binary.BigEndian.AppendUint32(b, c.Seq)
	b = binary.BigEndian.AppendUint16(b, uint16(len(sp)))
	return append(b, sp...), nil
}

// UnmarshalBinary decodes a checkpoint. Anything but an exact, valid one is
// an error wrapping ErrCorrupt that says what is wrong, and c is left zero.
func (c *ConductorCheckpoint) UnmarshalBinary(b []byte) error {
	*c = ConductorCheckpoint{}
	if len(b) < checkpointHeader {
		return fmt.Errorf("%w: conductor checkpoint of %d bytes, want at least %d", ErrCorrupt, len(b), checkpointHeader)
	}
	if b[0] != checkpointVersion {
		return fmt.Errorf("%w: conductor checkpoint version %d, this build reads %d", ErrCorrupt, b[0], checkpointVersion)
	}
	n := int(binary.BigEndian.Uint16(b[9:11]))
	if len(b) != checkpointHeader+n {
		return fmt.Errorf("%w: conductor checkpoint: speaker state of %d bytes, %d present", ErrCorrupt, n, len(b)-checkpointHeader)
	}
	var sp SpeakerState
	if err := sp.UnmarshalBinary(b[checkpointHeader:]); err != nil {
		return fmt.Errorf("conductor checkpoint: %w", err)
	}
	c.Epoch = binary.BigEndian.Uint32(b[1:5])
	c.Seq = binary.BigEndian.Uint32(b[5:9])
	c.Speaker = sp
	return nil
}

// SpeakerState is the part of a conductor's speaker detector that a
// checkpoint keeps: the dominant speaker (zero for nobody), when it became
// dominant, and each participant's last speech time. Layout, big-endian:
//
//	version (1 byte, = 1)
//	dominant (16 bytes, all zero for nobody)
//	since (8 bytes, int64 Unix nanoseconds; 0 for the zero time)
//	count (2 bytes)
//	count × { participant (16 bytes, non-zero) | last spoke (8 bytes, as since) }
//
// Entries are in strictly ascending participant order (so no participant
// appears twice), which makes the encoding canonical: decoding then
// encoding gives back the same bytes.
type SpeakerState struct {
	Dominant  protocol.ID
	Since     time.Time
	LastSpoke map[protocol.ID]time.Time
}

const (
	speakerStateVersion = 1
	speakerStateHeader  = 1 + 16 + 8 + 2
	speakerStateEntry   = 16 + 8
)

// MarshalBinary encodes the state in the layout above.
func (s *SpeakerState) MarshalBinary() ([]byte, error) {
	if len(s.LastSpoke) > math.MaxUint16 {
		return nil, fmt.Errorf("%w: speaker state of %d participants, at most %d", ErrInvalid, len(s.LastSpoke), math.MaxUint16)
	}
	ids := make([]protocol.ID, 0, len(s.LastSpoke))
	for id := range s.LastSpoke {
		if id.IsZero() {
			return nil, fmt.Errorf("%w: speaker state: the zero participant id has a last speech time", ErrInvalid)
		}
		ids = append(ids, id)
	}
	for i := 1; i < len(ids); i++ {
		for j := i; j > 0 && bytes.Compare(ids[j][:], ids[j-1][:]) < 0; j-- {
			ids[j], ids[j-1] = ids[j-1], ids[j]
		}
	}
	b := make([]byte, 0, speakerStateHeader+speakerStateEntry*len(ids))
	b = append(b, speakerStateVersion)
	b = append(b, s.Dominant[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(unixNanos(s.Since)))
	b = binary.BigEndian.AppendUint16(b, uint16(len(ids)))
	for _, id := range ids {
		b = append(b, id[:]...)
		b = binary.BigEndian.AppendUint64(b, uint64(unixNanos(s.LastSpoke[id])))
	}
	return b, nil
}

// UnmarshalBinary decodes the layout above. Anything else is an error
// wrapping ErrCorrupt that says what is wrong, and s is left empty.
func (s *SpeakerState) UnmarshalBinary(b []byte) error {
	*s = SpeakerState{}
	if len(b) < speakerStateHeader {
		return fmt.Errorf("%w: speaker state of %d bytes, want at least %d", ErrCorrupt, len(b), speakerStateHeader)
	}
	if b[0] != speakerStateVersion {
		return fmt.Errorf("%w: speaker state version %d, this build reads %d", ErrCorrupt, b[0], speakerStateVersion)
	}
	n := int(binary.BigEndian.Uint16(b[25:27]))
	if want := speakerStateHeader + n*speakerStateEntry; len(b) != want {
		return fmt.Errorf("%w: speaker state: %d entries need %d bytes, have %d", ErrCorrupt, n, want, len(b))
	}
	var st SpeakerState
	copy(st.Dominant[:], b[1:17])
	st.Since = fromUnixNanos(int64(binary.BigEndian.Uint64(b[17:25])))
	st.LastSpoke = make(map[protocol.ID]time.Time, n)
	var prev protocol.ID
	for off := speakerStateHeader; off < len(b); off += speakerStateEntry {
		var id protocol.ID
		copy(id[:], b[off:off+16])
		switch {
		case id.IsZero():
			return fmt.Errorf("%w: speaker state: zero participant id at byte %d", ErrCorrupt, off)
		case bytes.Compare(id[:], prev[:]) <= 0:
			return fmt.Errorf("%w: speaker state: participant %s at byte %d is not after %s (repeated or out of order)",
				ErrCorrupt, id, off, prev)
		}
		st.LastSpoke[id] = fromUnixNanos(int64(binary.BigEndian.Uint64(b[off+16 : off+24])))
		prev = id
	}
	*s = st
	return nil
}

// unixNanos maps the zero time to 0 (a time exactly at the Unix epoch
// therefore decodes as the zero time).
func unixNanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromUnixNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}
