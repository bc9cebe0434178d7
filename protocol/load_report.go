package protocol

import (
	"encoding/binary"
	"fmt"
	"time"
)

// ClusterMsgLoadReport is a forwarder's throttling picture (LoadReport),
// published with its heartbeat for dashboards.
const ClusterMsgLoadReport ClusterMsgType = 5

// LoadReport (type 5) is a forwarder's throttling picture, published with
// its heartbeat (about once a second) on the heartbeat subject
// <prefix>.forwarders, for dashboards. Counters are cumulative since the
// process started. Body, big-endian (README.md section 7.6):
//
//	0         flags: 0x01 state degraded, 0x02 draining, 0x04 adaptation
//	          section follows the id, 0x08 operations section follows (after
//	          the adaptation section if any), 0x10 trunk RTT section follows
//	          (after the others), 0x20 spill-over section follows (last);
//	          the other bits are reserved (sent 0, ignored)
//	1         forwarder id length n (1..64)
//	2         throttle level (0..4)
//	3         reserved (sent 0, ignored)
//	4..12     sequence
//	12..20    started, Unix milliseconds (signed; 0: unknown)
//	20..28    at, Unix milliseconds (signed; 0: unknown)
//	28..32    sessions
//	32..36    one-to-one calls
//	36..40    group calls
//	40..44    state changes queued
//	44..52    audio packets held back
//	52..60    group video packets shed
//	60..84    admitted joins, 6 classes × 4 bytes
//	84..108   refused joins, 6 classes × 4 bytes
//	108..118  signals, 5 × 2 bytes (permille)
//	118..     forwarder id (n bytes)
//	..        with flag 0x04 only: the adaptation section, 8 × 8 bytes
//	          (LoadAdapt, in field order)
//	..        with flag 0x08 only: the operations section (LoadOps): region
//	          length r (0..32), region (r bytes), then 4 × 8 bytes
//	..        with flag 0x10 only: the trunk RTT section (RTTs): count k
//	          (1..32), then k rows of region length r (1..32), region (r
//	          bytes), smoothed RTT and its mean deviation (2 × 4 bytes,
//	          microseconds); rows in strictly ascending order of region
//	..end     with flag 0x20 only: the spill-over section (Spill): joins
//	          refused with no region in reach (8 bytes), count k (0..32),
//	          then k rows of region length r (0..32), region (r bytes),
//	          joins referred there (8 bytes); rows in strictly ascending
//	          order of region; not all zero (load_report_spill.go)
//
// Without flags 0x04, 0x08, 0x10 and 0x20 the body ends with the id, byte
// for byte what it was before the sections existed.
type LoadReport struct {
	Forwarder     string    // forwarder id, see ValidForwarderID
	Started       time.Time // process start (a restart resets the counters)
	At            time.Time // when the report was made
	Seq           uint64    // increases with every report of one process
	Level         uint8     // throttle level 0..4 (>4 invalid)
	Signals       [5]uint16 // permille of capacity: cpu, packets, queue_drops, memory, sessions
	Sessions      uint32
	CallsOneToOne uint32
	CallsGroup    uint32
	// Admitted counts joins admitted by class: 0 unclassified (not
	// throttling), 1 new group call, 2 new one-to-one call, 3 new member
	// of a group call, 4 second party of a one-to-one call, 5 rejoin.
	Admitted [6]uint32
	// Refused counts joins refused for capacity by the same classes (0:
	// refused before being classified: draining, hard capacity).
	Refused       [6]uint32
	StateDegraded bool   // the forwarder cannot reach Redis
	Draining      bool   // the forwarder admits nobody new
	StateQueued   uint32 // call-state changes queued while Redis is away
	AudioMuted    uint64 // audio packets held back (silent members)
	ShedVideo     uint64 // group video packets shed under overload

	// HasAdapt says whether the report carries the adaptation section
	// (flag 0x04). Without it Adapt must be zero: a forwarder that
	// predates the section, or a report made without it.
	HasAdapt bool
	Adapt    LoadAdapt

	// HasOps says whether the report carries the operations section (flag
	// 0x08): the forwarder's region and its Redis write and NATS round-trip
	// times. Without it Ops must be zero.
	HasOps bool
	Ops    LoadOps

	// RTTs is the trunk RTT section (flag 0x10, present when not empty):
	// the round-trip time this forwarder measures over its trunk to each
	// peer region (trunk_echo.go), the smallest of that region's
	// forwarders. With Ops.Region it is one row of a region-to-region RTT
	// map (RegionRTTs).
	RTTs []RegionRTT

	// Spill is the spill-over section (flag 0x20, present when it counts
	// anything): joins referred to other regions by target region, and
	// joins refused with no region in reach (load_report_spill.go).
	Spill LoadSpill
}

// RegionRTT is one row of a LoadReport's trunk RTT section.
type RegionRTT struct {
	Region string        // the peer region (ValidRegion, not empty)
	RTT    time.Duration // smoothed round-trip time, microsecond resolution
	Dev    time.Duration // its mean deviation, microsecond resolution
}

// MaxRegionRTTs bounds LoadReport.RTTs.
const MaxRegionRTTs = 32

// maxRTTField is the largest RTT or deviation a row carries.
const maxRTTField = time.Duration(1<<32-1) * time.Microsecond

// LoadOps is a LoadReport's optional operations section: where the
// forwarder runs and how its dependencies answer, cumulative since it
// started (a receiver divides the growth of a total by the growth of its
// count for the mean over an interval).
type LoadOps struct {
	// Region is the operator's label for where the forwarder runs (0..32
	// bytes of printable ASCII without space; empty: not set).
	Region       string
	StoreWrites  uint64 // call-state writes to Redis timed
	StoreWriteUs uint64 // their total time, microseconds
	NATSRTTs     uint64 // NATS round trips timed
	NATSRTTUs    uint64 // their total time, microseconds
}

// LoadAdapt is a LoadReport's optional adaptation section: how the
// forwarder's network adaptation (NACK retransmission, probes, key-frame
// requests, subscriptions) has worked, cumulative since it started.
type LoadAdapt struct {
	Nacked         uint64 // packets receivers NACKed
	Resent         uint64 // NACKed packets resent from the cache
	NotCached      uint64 // NACKed packets no longer (or never) in the cache
	OverBudget     uint64 // NACKed packets not resent: the leg's estimate left no room
	ResentBytes    uint64 // bytes retransmitted
	Probes         uint64 // downlink probes begun
	KeyFramesAsked uint64 // key frames the relay asked senders for (PLI)
	Subscriptions  uint64 // Subscription messages applied
}

// Load report limits and layout.
const (
	// MaxThrottleLevel is the highest throttle level a LoadReport carries.
	MaxThrottleLevel = 4

	loadReportFixedLen    = 118
	loadFlagStateDegraded = 0x01
	loadFlagDraining      = 0x02
	loadFlagAdapt         = 0x04
	loadAdaptLen          = 64 // LoadAdapt: 8 counters of 8 bytes
	loadFlagOps           = 0x08
	loadOpsCountersLen    = 32 // LoadOps: 4 counters of 8 bytes after the region
	loadFlagRTTs          = 0x10
	// MaxRegionLen bounds LoadOps.Region.
	MaxRegionLen            = 32
	loadReportAdmittedStart = 60
	loadReportRefusedStart  = 84
	loadReportSignalsStart  = 108
)

func (r *LoadReport) check() error {
	if err := ValidForwarderID(r.Forwarder); err != nil {
		return err
	}
	if r.Level > MaxThrottleLevel {
		return fmt.Errorf("%w: throttle level %d, want 0..%d", ErrClusterMsgInvalid, r.Level, MaxThrottleLevel)
	}
	if !r.HasAdapt && r.Adapt != (LoadAdapt{}) {
		return fmt.Errorf("%w: load report with adaptation counters but not HasAdapt", ErrClusterMsgInvalid)
	}
	if !r.HasOps && r.Ops != (LoadOps{}) {
		return fmt.Errorf("%w: load report with an operations section but not HasOps", ErrClusterMsgInvalid)
	}
	if err := ValidRegion(r.Ops.Region); err != nil {
		return err
	}
	if err := checkRegionRTTs(r.RTTs); err != nil {
		return err
	}
	if err := r.Spill.check(); err != nil {
		return err
	}
	if err := clusterCheckTime("started", r.Started); err != nil {
		return err
	}
	return clusterCheckTime("at", r.At)
}

// Marshal appends the sealed message to dst. A report that breaks the
// rules on its fields is refused with ErrClusterMsgInvalid and dst is
// returned as it was.
func (r *LoadReport) Marshal(dst []byte, k ClusterKey) ([]byte, error) {
	if err := r.check(); err != nil {
		return dst, err
	}
	return sealClusterMsg(dst, k, ClusterMsgLoadReport, r.appendBody)
}

func (r *LoadReport) appendBody(b []byte) []byte {
	var flags byte
	if r.StateDegraded {
		flags |= loadFlagStateDegraded
	}
	if r.Draining {
		flags |= loadFlagDraining
	}
	if r.HasAdapt {
		flags |= loadFlagAdapt
	}
	if r.HasOps {
		flags |= loadFlagOps
	}
	if len(r.RTTs) > 0 {
		flags |= loadFlagRTTs
	}
	if !r.Spill.empty() {
		flags |= loadFlagSpill
	}
	b = append(b, flags, byte(len(r.Forwarder)), r.Level, 0)
	b = binary.BigEndian.AppendUint64(b, r.Seq)
	b = clusterAppendTime(b, r.Started)
	b = clusterAppendTime(b, r.At)
	b = binary.BigEndian.AppendUint32(b, r.Sessions)
	b = binary.BigEndian.AppendUint32(b, r.CallsOneToOne)
	b = binary.BigEndian.AppendUint32(b, r.CallsGroup)
	b = binary.BigEndian.AppendUint32(b, r.StateQueued)
	b = binary.BigEndian.AppendUint64(b, r.AudioMuted)
	b = binary.BigEndian.AppendUint64(b, r.ShedVideo)
	for _, v := range r.Admitted {
		b = binary.BigEndian.AppendUint32(b, v)
	}
	for _, v := range r.Refused {
		b = binary.BigEndian.AppendUint32(b, v)
	}
	for _, v := range r.Signals {
		b = binary.BigEndian.AppendUint16(b, v)
	}
	b = append(b, r.Forwarder...)
	if r.HasAdapt {
		b = r.Adapt.appendTo(b)
	}
	if r.HasOps {
		b = append(b, byte(len(r.Ops.Region)))
		b = append(b, r.Ops.Region...)
		for _, v := range [...]uint64{r.Ops.StoreWrites, r.Ops.StoreWriteUs, r.Ops.NATSRTTs, r.Ops.NATSRTTUs} {
			b = binary.BigEndian.AppendUint64(b, v)
		}
	}
	if len(r.RTTs) > 0 {
		b = appendRegionRTTs(b, r.RTTs)
	}
	if !r.Spill.empty() {
		b = r.Spill.appendTo(b)
	}
	return b
}

// ValidRegion checks a region label: 0..MaxRegionLen bytes of printable
// ASCII without space.
func ValidRegion(region string) error {
	if len(region) > MaxRegionLen {
		return fmt.Errorf("%w: region of %d bytes, want 0..%d", ErrClusterMsgInvalid, len(region), MaxRegionLen)
	}
	for i := range len(region) {
		if region[i] < 0x21 || region[i] > 0x7e {
			return fmt.Errorf("%w: region %q: byte %d is not printable ASCII", ErrClusterMsgInvalid, region, i)
		}
	}
	return nil
}

// decodeOps reads the operations section, which b holds exactly.
func (o *LoadOps) decode(b []byte) error {
	if len(b) < 1 {
		return fmt.Errorf("%w: load report with the operations flag truncated", ErrClusterMsgInvalid)
	}
	n := int(b[0])
	if want := 1 + n + loadOpsCountersLen; len(b) != want {
		return fmt.Errorf("%w: operations section of %d bytes, want %d for a region of %d bytes", ErrClusterMsgInvalid, len(b), want, n)
	}
	o.Region = string(b[1 : 1+n])
	c := b[1+n:]
	for i, p := range [...]*uint64{&o.StoreWrites, &o.StoreWriteUs, &o.NATSRTTs, &o.NATSRTTUs} {
		*p = binary.BigEndian.Uint64(c[8*i:])
	}
	return nil
}

func (a *LoadAdapt) appendTo(b []byte) []byte {
	for _, v := range [...]uint64{a.Nacked, a.Resent, a.NotCached, a.OverBudget, a.ResentBytes, a.Probes, a.KeyFramesAsked, a.Subscriptions} {
		b = binary.BigEndian.AppendUint64(b, v)
	}
	return b
}

// decode reads the section, which b holds exactly.
func (a *LoadAdapt) decode(b []byte) {
	for i, p := range [...]*uint64{&a.Nacked, &a.Resent, &a.NotCached, &a.OverBudget, &a.ResentBytes, &a.Probes, &a.KeyFramesAsked, &a.Subscriptions} {
		*p = binary.BigEndian.Uint64(b[8*i:])
	}
}

// Unmarshal authenticates and decodes b, which must be exactly one
// LoadReport. On error r is the zero report.
func (r *LoadReport) Unmarshal(b []byte, k ClusterKey) error {
	*r = LoadReport{}
	body, err := openClusterMsgReusing(b, k, ClusterMsgLoadReport)
	if err != nil {
		return err
	}
	if err := r.decode(body); err != nil {
		*r = LoadReport{}
		return err
	}
	return nil
}

func (r *LoadReport) decode(b []byte) error {
	if len(b) < loadReportFixedLen {
		return fmt.Errorf("%w: load report body of %d bytes, want at least %d", ErrClusterMsgInvalid, len(b), loadReportFixedLen+1)
	}
	r.StateDegraded = b[0]&loadFlagStateDegraded != 0
	r.Draining = b[0]&loadFlagDraining != 0
	r.HasAdapt = b[0]&loadFlagAdapt != 0
	idLen := int(b[1])
	r.Level = b[2]
	r.Seq = binary.BigEndian.Uint64(b[4:12])
	r.Started = clusterTime(b[12:20])
	r.At = clusterTime(b[20:28])
	r.Sessions = binary.BigEndian.Uint32(b[28:32])
	r.CallsOneToOne = binary.BigEndian.Uint32(b[32:36])
	r.CallsGroup = binary.BigEndian.Uint32(b[36:40])
	r.StateQueued = binary.BigEndian.Uint32(b[40:44])
	r.AudioMuted = binary.BigEndian.Uint64(b[44:52])
	r.ShedVideo = binary.BigEndian.Uint64(b[52:60])
	for i := range r.Admitted {
		r.Admitted[i] = binary.BigEndian.Uint32(b[loadReportAdmittedStart+4*i:])
		r.Refused[i] = binary.BigEndian.Uint32(b[loadReportRefusedStart+4*i:])
	}
	for i := range r.Signals {
		r.Signals[i] = binary.BigEndian.Uint16(b[loadReportSignalsStart+2*i:])
	}
	r.HasOps = b[0]&loadFlagOps != 0
	rest := b[loadReportFixedLen:]
	if len(rest) < idLen {
		return fmt.Errorf("%w: forwarder id truncated", ErrClusterMsgInvalid)
	}
	id, rest := rest[:idLen], rest[idLen:]
	if r.HasAdapt {
		// The section follows the id: at least 64 bytes remain.
		if len(rest) < loadAdaptLen {
			return fmt.Errorf("%w: load report with the adaptation flag truncated: %d bytes after an id of %d bytes, want %d", ErrClusterMsgInvalid, len(rest), idLen, loadAdaptLen)
		}
		r.Adapt.decode(rest[:loadAdaptLen])
		rest = rest[loadAdaptLen:]
	}
	hasRTTs, hasSpill := b[0]&loadFlagRTTs != 0, b[0]&loadFlagSpill != 0
	if r.HasOps {
		ops := rest
		if (hasRTTs || hasSpill) && len(rest) > 0 { // the section's own length: another section follows
			ops = rest[:min(len(rest), 1+int(rest[0])+loadOpsCountersLen)]
		}
		if err := r.Ops.decode(ops); err != nil {
			return err
		}
		rest = rest[len(ops):]
	}
	if hasRTTs {
		var err error
		if r.RTTs, rest, err = decodeRegionRTTs(rest); err != nil {
			return err
		}
	}
	if hasSpill {
		var err error
		if rest, err = r.Spill.decode(rest); err != nil {
			return err
		}
	}
	if len(rest) > 0 {
		return fmt.Errorf("%w: %d trailing bytes after the body", ErrClusterMsgInvalid, len(rest))
	}
	var err error
	if r.Forwarder, err = readForwarderID(id, idLen); err != nil {
		return err
	}
	return r.check()
}
