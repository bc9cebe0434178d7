package protocol

import (
	"encoding/binary"
	"fmt"
	"time"
)

const (
	decisionFixedLen    = 52 // the body up to the conductor id
	decisionMaxForward  = 255
	decisionForwardSize = 16
)

// CallDecision (type 4) is what the conductor that owns a call decided for
// it: the dominant speaker and whose audio the forwarders forward. It is
// published on the call's subject <prefix>.call.<call id>, which it shares
// with MemberNotice. README.md section 7.4 has the byte diagram. Body:
//
//	0       conductor id length n (1..64)
//	1       forward count c (0..255)
//	2..4    partition
//	4..8    epoch (>= 1)
//	8..12   sequence
//	12..20  at, Unix milliseconds (signed; 0: unknown)
//	20..36  call id
//	36..52  dominant participant id (all zeros: nobody yet)
//	52..    conductor id (n bytes)
//	..end   c participant ids (16 bytes each), no two alike
//
// A receiver applies a decision only if it is Newer than the last one it
// applied for the call: a lower epoch comes from a conductor whose lease was
// taken over (fenced off).
type CallDecision struct {
	Call      ID
	Partition uint16    // PartitionOf(Call, n) of the deciding conductor's cluster
	Epoch     uint32    // lease epoch of the deciding conductor (fencing), >= 1
	Seq       uint32    // counts that conductor's decisions for the call
	At        time.Time // when it decided; sent as Unix milliseconds, decoded in UTC
	Dominant  ID        // zero ID: nobody dominant yet
	Forward   []ID      // participants whose audio is forwarded, 0..255, no duplicates (duplicate is ErrClusterMsgInvalid)
	Conductor string    // id of the deciding conductor instance, same rules as ValidForwarderID
}

// Newer reports whether d was decided after prev: a higher epoch, or the
// same epoch and a higher sequence. Every decision is newer than a nil
// prev. Both must be about the same call; Newer does not compare Call.
func (d *CallDecision) Newer(prev *CallDecision) bool {
	if prev == nil {
		return true
	}
	if d.Epoch != prev.Epoch {
		return d.Epoch > prev.Epoch
	}
	return d.Seq > prev.Seq
}

// checkHead checks the fields other than Forward.
func (d *CallDecision) checkHead() error {
	if d.Call.IsZero() {
		return fmt.Errorf("%w: decision without call id", ErrClusterMsgInvalid)
	}
	if d.Epoch == 0 {
		return fmt.Errorf("%w: decision for call %s with epoch 0", ErrClusterMsgInvalid, d.Call)
	}
	if err := ValidForwarderID(d.Conductor); err != nil {
		return fmt.Errorf("conductor id: %w", err)
	}
	return clusterCheckTime("at", d.At)
}

// checkForward checks d.Forward[i] against the ids before it. Comparing
// with every earlier id costs at most 255*254/2 comparisons of 16 bytes,
// less than sorting a copy would, and allocates nothing.
func (d *CallDecision) checkForward(i int) error {
	p := d.Forward[i]
	if p.IsZero() {
		return fmt.Errorf("%w: decision for call %s forwards the zero participant id", ErrClusterMsgInvalid, d.Call)
	}
	for _, q := range d.Forward[:i] {
		if q == p {
			return fmt.Errorf("%w: decision for call %s forwards %s twice", ErrClusterMsgInvalid, d.Call, p)
		}
	}
	return nil
}

func (d *CallDecision) check() error {
	if err := d.checkHead(); err != nil {
		return err
	}
	if len(d.Forward) > decisionMaxForward {
		return fmt.Errorf("%w: decision for call %s forwards %d participants, want at most %d", ErrClusterMsgInvalid, d.Call, len(d.Forward), decisionMaxForward)
	}
	for i := range d.Forward {
		if err := d.checkForward(i); err != nil {
			return err
		}
	}
	return nil
}

// Marshal appends the sealed message to dst. A decision that breaks the
// rules on its fields is refused with ErrClusterMsgInvalid and dst is
// returned as it was.
func (d *CallDecision) Marshal(dst []byte, k ClusterKey) ([]byte, error) {
	if err := d.check(); err != nil {
		return dst, err
	}
	return sealClusterMsg(dst, k, ClusterMsgDecision, func(b []byte) []byte {
		b = append(b, byte(len(d.Conductor)), byte(len(d.Forward)))
		b = binary.BigEndian.AppendUint16(b, d.Partition)
		b = binary.BigEndian.AppendUint32(b, d.Epoch)
		b = binary.BigEndian.AppendUint32(b, d.Seq)
		b = clusterAppendTime(b, d.At)
		b = append(b, d.Call[:]...)
		b = append(b, d.Dominant[:]...)
		b = append(b, d.Conductor...)
		for i := range d.Forward {
			b = append(b, d.Forward[i][:]...)
		}
		return b
	})
}

// Unmarshal authenticates and decodes b, which must be exactly one
// CallDecision. It reuses d.Forward's backing array and keeps d.Conductor
// when the id is unchanged, so decoding decision after decision into one
// CallDecision allocates nothing once warm; a slice taken from d.Forward is
// overwritten by the next Unmarshal. A decision that forwards nobody leaves
// d.Forward empty, not nil, once d has held ids.
//
// On error d forwards nobody and its other fields are zero; errors wrap
// ErrClusterMsgInvalid or ErrClusterMsgAuth.
func (d *CallDecision) Unmarshal(b []byte, k ClusterKey) error {
	body, err := openClusterMsgReusing(b, k, ClusterMsgDecision)
	if err == nil {
		err = d.decode(body)
	}
	if err != nil {
		*d = CallDecision{Forward: d.Forward[:0]}
		return err
	}
	return nil
}

func (d *CallDecision) decode(b []byte) error {
	if len(b) < decisionFixedLen {
		return fmt.Errorf("%w: decision body of %d bytes", ErrClusterMsgInvalid, len(b))
	}
	idLen, count := int(b[0]), int(b[1])
	d.Partition = binary.BigEndian.Uint16(b[2:4])
	d.Epoch = binary.BigEndian.Uint32(b[4:8])
	d.Seq = binary.BigEndian.Uint32(b[8:12])
	d.At = clusterTime(b[12:20])
	copy(d.Call[:], b[20:36])
	copy(d.Dominant[:], b[36:52])
	rest := b[decisionFixedLen:]
	var err error
	if d.Conductor, rest, err = readClusterID("conductor", rest, idLen, d.Conductor); err != nil {
		return err
	}
	if err := d.checkHead(); err != nil {
		return err
	}
	if len(rest) != count*decisionForwardSize {
		what := "truncated"
		if len(rest) > count*decisionForwardSize {
			what = "trailing bytes"
		}
		return fmt.Errorf("%w: forward list %s: %d ids in %d bytes", ErrClusterMsgInvalid, what, count, len(rest))
	}
	d.Forward = d.Forward[:0]
	for i := range count {
		d.Forward = append(d.Forward, ID(rest[i*decisionForwardSize:(i+1)*decisionForwardSize]))
		if err := d.checkForward(i); err != nil {
			return err
		}
	}
	return nil
}
