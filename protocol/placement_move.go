package protocol

import (
	"encoding/binary"
	"fmt"
	"time"
)

// ClusterMsgPlacementMove is a conductor's instruction to move one member
// of a call to another forwarder (PlacementMove).
const ClusterMsgPlacementMove ClusterMsgType = 7

// Reasons a conductor moves a member (PlacementMove.Reason).
const (
	MoveReasonRTT    uint8 = 1 // the members' reported RTTs make another placement clearly better
	MoveReasonRegion uint8 = 2 // a region the call is on throttles or drains
)

const placementMoveFixedLen = 53

// PlacementMove (type 7) is the conductor's decision that one member of a
// call should attach to another forwarder (README.md section 7.9). It is
// published on the call's subject <prefix>.call.<call id> with the call's
// decisions; the forwarder serving the member sends it the signed MigrateTo
// of 5.7 naming that forwarder (make-before-break), as an operator's move
// does. Body, big-endian:
//
//	0       conductor id length n (1..64)
//	1       target forwarder id length m (1..64)
//	2..4    partition
//	4..8    epoch (>= 1): the deciding conductor's lease epoch
//	8..12   sequence: counts that conductor's moves for the call
//	12..20  at, Unix milliseconds (signed)
//	20..36  call id (not all zeros)
//	36..52  participant id (not all zeros)
//	52      reason (1 RTT, 2 region; others rejected)
//	53..    conductor id (n bytes), target forwarder id (m bytes)
type PlacementMove struct {
	Call, Participant ID
	Partition         uint16
	Epoch, Seq        uint32
	At                time.Time
	Reason            uint8
	Conductor         string // the deciding conductor (ValidForwarderID)
	To                string // the forwarder to move to (ValidForwarderID)
}

func (m *PlacementMove) check() error {
	switch {
	case m.Call.IsZero() || m.Participant.IsZero():
		return fmt.Errorf("%w: placement move without call or participant id", ErrClusterMsgInvalid)
	case m.Epoch == 0:
		return fmt.Errorf("%w: placement move with epoch 0", ErrClusterMsgInvalid)
	case m.Reason != MoveReasonRTT && m.Reason != MoveReasonRegion:
		return fmt.Errorf("%w: placement move reason %d", ErrClusterMsgInvalid, m.Reason)
	}
	if err := ValidForwarderID(m.Conductor); err != nil {
		return fmt.Errorf("%w: placement move conductor: %w", ErrClusterMsgInvalid, err)
	}
	if err := ValidForwarderID(m.To); err != nil {
		return fmt.Errorf("%w: placement move target: %w", ErrClusterMsgInvalid, err)
	}
	return nil
}

// Marshal appends the sealed message to dst; a move that breaks the rules
// is refused with ErrClusterMsgInvalid and dst returned as it was.
func (m *PlacementMove) Marshal(dst []byte, k ClusterKey) ([]byte, error) {
	if err := m.check(); err != nil {
		return dst, err
	}
	return sealClusterMsg(dst, k, ClusterMsgPlacementMove, func(b []byte) []byte {
		b = append(b, byte(len(m.Conductor)), byte(len(m.To)))
		b = binary.BigEndian.AppendUint16(b, m.Partition)
		b = binary.BigEndian.AppendUint32(b, m.Epoch)
		b = binary.BigEndian.AppendUint32(b, m.Seq)
		b = clusterAppendTime(b, m.At)
		b = append(b, m.Call[:]...)
		b = append(b, m.Participant[:]...)
		b = append(b, m.Reason)
		b = append(b, m.Conductor...)
		return append(b, m.To...)
	})
}

// Unmarshal authenticates and decodes b, which must be exactly one
// PlacementMove; on error m is zero. Errors wrap ErrClusterMsgInvalid or
// ErrClusterMsgAuth.
func (m *PlacementMove) Unmarshal(b []byte, k ClusterKey) error {
	body, err := openClusterMsg(b, k, ClusterMsgPlacementMove)
	if err == nil {
		err = m.decode(body)
	}
	if err != nil {
		*m = PlacementMove{}
	}
	return err
}

func (m *PlacementMove) decode(b []byte) error {
	if len(b) < placementMoveFixedLen {
		return fmt.Errorf("%w: placement move body of %d bytes", ErrClusterMsgInvalid, len(b))
	}
	n, t := int(b[0]), int(b[1])
	if len(b) != placementMoveFixedLen+n+t {
		return fmt.Errorf("%w: placement move body of %d bytes, want %d", ErrClusterMsgInvalid, len(b), placementMoveFixedLen+n+t)
	}
	m.Partition = binary.BigEndian.Uint16(b[2:4])
	m.Epoch = binary.BigEndian.Uint32(b[4:8])
	m.Seq = binary.BigEndian.Uint32(b[8:12])
	m.At = clusterTime(b[12:20])
	copy(m.Call[:], b[20:36])
	copy(m.Participant[:], b[36:52])
	m.Reason = b[52]
	m.Conductor = string(b[placementMoveFixedLen : placementMoveFixedLen+n])
	m.To = string(b[placementMoveFixedLen+n:])
	return m.check()
}
