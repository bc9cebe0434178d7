package protocol

import (
	"encoding/binary"
	"fmt"
	"math"
	"time"
)

// ClusterMsgConductorReport is a conductor's periodic report
// (ConductorReport), for dashboards.
const ClusterMsgConductorReport ClusterMsgType = 6

// ConductorsSubject is <prefix>.conductors, where every conductor publishes
// its ConductorReport (README.md section 7.8).
func ConductorsSubject(prefix string) string { return prefix + ".conductors" }

// ConductorReport (type 6) is a conductor process's picture, published
// about once a second on <prefix>.conductors for dashboards: how fast it
// decides, how much, and the decisions worth a line on a call's timeline
// (speaker switches, layer switches, cuts) made since its last report.
// Body, big-endian (README.md section 7.8):
//
//	0         flags (reserved: sent 0, ignored)
//	1         conductor id length n (1..64)
//	2         region length r (0..32)
//	3         reserved (sent 0, ignored)
//	4..12     sequence
//	12..20    started, Unix milliseconds (signed; 0: unknown)
//	20..28    at, Unix milliseconds (signed; 0: unknown)
//	28..32    interval, milliseconds: the window the figures below cover
//	32..36    calls held
//	36..38    partitions held
//	38..40    events e (0..MaxConductorEvents)
//	40..48    decisions made since the process started
//	48..52    decisions in the interval
//	52..56    decision latency p50, microseconds
//	56..60    decision latency p99, microseconds
//	60..64    decision latency max, microseconds
//	64..68    events not sent since the last report (more than fit)
//	68..      conductor id (n bytes), region (r bytes)
//	..end     e events of conductorEventLen bytes (ConductorEvent)
type ConductorReport struct {
	Conductor string    // the conductor id (--id), rules of ValidForwarderID
	Region    string    // the operator's label, rules of ValidRegion
	Started   time.Time // process start (a restart resets Decisions)
	At        time.Time // when the report was made
	Seq       uint64    // increases with every report of one process
	Interval  time.Duration
	Calls     uint32 // calls held (with metadata within the idle timeout)
	// Partitions held now.
	Partitions uint16
	Decisions  uint64 // decisions made since Started
	// InInterval are the decisions made in the interval; P50, P99 and Max
	// their latency: from the arrival of the first metadata a decision
	// took into account to the decision made (and published, if it
	// changed). Zero with InInterval 0.
	InInterval    uint32
	P50, P99, Max time.Duration
	// EventsLost counts timeline events made since the last report that
	// did not fit in it.
	EventsLost uint32
	Events     []ConductorEvent
}

// ConductorEventKind says what a ConductorEvent is.
type ConductorEventKind uint8

// The events a conductor reports.
const (
	// ConductorSpeaker: the call's dominant speaker changed to
	// Participant (zero: nobody) from Other (zero: nobody).
	ConductorSpeaker ConductorEventKind = 1
	// ConductorLayer: receiver Participant's limit on sender Other went
	// from rank From to rank To (RankNone 0xFF: not forwarded).
	ConductorLayer ConductorEventKind = 2
	// ConductorCut: like ConductorLayer, for a change the allocation made
	// by cutting a layer the receiver had (a lower rank, or none).
	ConductorCut ConductorEventKind = 3
)

// String names the kind as the call timeline does.
func (k ConductorEventKind) String() string {
	switch k {
	case ConductorSpeaker:
		return "speaker"
	case ConductorLayer:
		return "layer"
	case ConductorCut:
		return "layer_cut"
	}
	return fmt.Sprintf("kind-%d", uint8(k))
}

// ConductorEvent is one decision on a call's timeline. Wire layout
// (conductorEventLen bytes): kind (1), from (1), to (1), reserved (1, 0),
// at (8, Unix ms), call (16), participant (16), other (16).
type ConductorEvent struct {
	Kind        ConductorEventKind
	At          time.Time
	Call        ID
	Participant ID
	Other       ID
	From, To    uint8 // ranks, layer events only (0 for a speaker switch)
}

// Conductor report limits and layout.
const (
	// MaxConductorEvents bounds the events of one report.
	MaxConductorEvents      = 64
	conductorReportFixedLen = 68
	conductorEventLen       = 60
)

func (r *ConductorReport) check() error {
	if err := ValidForwarderID(r.Conductor); err != nil {
		return err
	}
	if err := ValidRegion(r.Region); err != nil {
		return err
	}
	if len(r.Events) > MaxConductorEvents {
		return fmt.Errorf("%w: %d events, want at most %d", ErrClusterMsgInvalid, len(r.Events), MaxConductorEvents)
	}
	for i := range r.Events {
		if err := r.Events[i].check(); err != nil {
			return err
		}
	}
	if r.Interval < 0 || r.Interval%time.Millisecond != 0 || r.Interval/time.Millisecond > math.MaxUint32 {
		return fmt.Errorf("%w: interval %s, want whole milliseconds within 32 bits", ErrClusterMsgInvalid, r.Interval)
	}
	for _, d := range [...]time.Duration{r.P50, r.P99, r.Max} {
		if d < 0 || d%time.Microsecond != 0 || d/time.Microsecond > math.MaxUint32 {
			return fmt.Errorf("%w: latency %s, want whole microseconds within 32 bits", ErrClusterMsgInvalid, d)
		}
	}
	if err := clusterCheckTime("started", r.Started); err != nil {
		return err
	}
	return clusterCheckTime("at", r.At)
}

func (e *ConductorEvent) check() error {
	switch e.Kind {
	case ConductorSpeaker:
		if e.From != 0 || e.To != 0 {
			return fmt.Errorf("%w: speaker event with ranks", ErrClusterMsgInvalid)
		}
	case ConductorLayer, ConductorCut:
		if e.Participant.IsZero() || e.Other.IsZero() {
			return fmt.Errorf("%w: %s event without a receiver or sender", ErrClusterMsgInvalid, e.Kind)
		}
	default:
		return fmt.Errorf("%w: unknown conductor event kind %d", ErrClusterMsgInvalid, e.Kind)
	}
	if e.Call.IsZero() {
		return fmt.Errorf("%w: %s event without a call", ErrClusterMsgInvalid, e.Kind)
	}
	return clusterCheckTime("event at", e.At)
}

// Marshal appends the sealed message to dst. A report that breaks the
// rules on its fields is refused with ErrClusterMsgInvalid and dst is
// returned as it was.
func (r *ConductorReport) Marshal(dst []byte, k ClusterKey) ([]byte, error) {
	if err := r.check(); err != nil {
		return dst, err
	}
	return sealClusterMsg(dst, k, ClusterMsgConductorReport, r.appendBody)
}

func (r *ConductorReport) appendBody(b []byte) []byte {
	b = append(b, 0, byte(len(r.Conductor)), byte(len(r.Region)), 0)
	b = binary.BigEndian.AppendUint64(b, r.Seq)
	b = clusterAppendTime(b, r.Started)
	b = clusterAppendTime(b, r.At)
	b = binary.BigEndian.AppendUint32(b, uint32(r.Interval/time.Millisecond))
	b = binary.BigEndian.AppendUint32(b, r.Calls)
	b = binary.BigEndian.AppendUint16(b, r.Partitions)
	b = binary.BigEndian.AppendUint16(b, uint16(len(r.Events)))
	b = binary.BigEndian.AppendUint64(b, r.Decisions)
	b = binary.BigEndian.AppendUint32(b, r.InInterval)
	for _, d := range [...]time.Duration{r.P50, r.P99, r.Max} {
		b = binary.BigEndian.AppendUint32(b, uint32(d/time.Microsecond))
	}
	b = binary.BigEndian.AppendUint32(b, r.EventsLost)
	b = append(b, r.Conductor...)
	b = append(b, r.Region...)
	for i := range r.Events {
		e := &r.Events[i]
		b = append(b, byte(e.Kind), e.From, e.To, 0)
		b = clusterAppendTime(b, e.At)
		b = append(b, e.Call[:]...)
		b = append(b, e.Participant[:]...)
		b = append(b, e.Other[:]...)
	}
	return b
}

// Unmarshal authenticates and decodes b, which must be exactly one
// ConductorReport. On error r is the zero report.
func (r *ConductorReport) Unmarshal(b []byte, k ClusterKey) error {
	*r = ConductorReport{}
	body, err := openClusterMsgReusing(b, k, ClusterMsgConductorReport)
	if err != nil {
		return err
	}
	if err := r.decode(body); err != nil {
		*r = ConductorReport{}
		return err
	}
	return nil
}

func (r *ConductorReport) decode(b []byte) error {
	if len(b) < conductorReportFixedLen {
		return fmt.Errorf("%w: conductor report body of %d bytes, want at least %d", ErrClusterMsgInvalid, len(b), conductorReportFixedLen+1)
	}
	idLen, regionLen := int(b[1]), int(b[2])
	r.Seq = binary.BigEndian.Uint64(b[4:12])
	r.Started = clusterTime(b[12:20])
	r.At = clusterTime(b[20:28])
	r.Interval = time.Duration(binary.BigEndian.Uint32(b[28:32])) * time.Millisecond
	r.Calls = binary.BigEndian.Uint32(b[32:36])
	r.Partitions = binary.BigEndian.Uint16(b[36:38])
	n := int(binary.BigEndian.Uint16(b[38:40]))
	r.Decisions = binary.BigEndian.Uint64(b[40:48])
	r.InInterval = binary.BigEndian.Uint32(b[48:52])
	r.P50 = time.Duration(binary.BigEndian.Uint32(b[52:56])) * time.Microsecond
	r.P99 = time.Duration(binary.BigEndian.Uint32(b[56:60])) * time.Microsecond
	r.Max = time.Duration(binary.BigEndian.Uint32(b[60:64])) * time.Microsecond
	r.EventsLost = binary.BigEndian.Uint32(b[64:68])
	if regionLen > MaxRegionLen || n > MaxConductorEvents {
		return fmt.Errorf("%w: region of %d bytes (at most %d), %d events (at most %d)", ErrClusterMsgInvalid,
			regionLen, MaxRegionLen, n, MaxConductorEvents)
	}
	rest := b[conductorReportFixedLen:]
	if want := idLen + regionLen + n*conductorEventLen; len(rest) != want {
		return fmt.Errorf("%w: conductor report of %d bytes after the fixed part, want %d (id %d, region %d, %d events)",
			ErrClusterMsgInvalid, len(rest), want, idLen, regionLen, n)
	}
	var err error
	if r.Conductor, err = readForwarderID(rest[:idLen], idLen); err != nil {
		return err
	}
	r.Region = string(rest[idLen : idLen+regionLen])
	rest = rest[idLen+regionLen:]
	if n > 0 {
		r.Events = make([]ConductorEvent, n)
	}
	for i := range r.Events {
		e, w := &r.Events[i], rest[i*conductorEventLen:]
		e.Kind, e.From, e.To = ConductorEventKind(w[0]), w[1], w[2]
		e.At = clusterTime(w[4:12])
		copy(e.Call[:], w[12:28])
		copy(e.Participant[:], w[28:44])
		copy(e.Other[:], w[44:60])
	}
	return r.check()
}

// Newer reports whether r comes after prev from the same conductor id: a
// later process start, or the same start and a higher sequence.
func (r *ConductorReport) Newer(prev *ConductorReport) bool {
	if !r.Started.Equal(prev.Started) {
		return r.Started.After(prev.Started)
	}
	return r.Seq > prev.Seq
}
