package forwarder

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/callrelay/callrelay/protocol"
)

// Sender moves, as the listeners' forwarder hears them.
//
// A member moved to another forwarder (the conductor's placement move, an
// operator's, a drain's MigrateTo, a failover) changes where its packets
// come from on every forwarder that serves some of its listeners: from its
// own session here to a trunk, from a trunk to its session here, or from
// one forwarder's trunk to another's. That is where the move's media gap
// is felt, so that is where it is measured. For each sender, one of its
// streams is followed through one word, whichever path carries it: its
// audio (packets with the audio level, spec 4), or while it sends none,
// its first other stream. When a packet newer than any before it comes by
// another path than the last, the move is counted, and the time since the
// last packet that advanced the followed stream is its gap: what the
// listeners here missed, the new path's head start included (a
// make-before-break move whose old path was slow has none, and then the
// packets still in flight on the old path are counted as skipped, whether
// or not they arrive later).
//
// Only packets that members here hear are followed: on the member's own
// forwarder, only while it has listeners there; over a trunk, not when
// the only member here is the sender itself, joined make-before-break and
// about to switch (counting that would be a move nobody here heard).
//
// The gap is media time the listeners did not hear, and so includes what
// the sender or the audio gate did not send: a move of a member who had
// been quiet for over moveQuietMS is counted but its gap is not measured.
// A path that wins back within moveFlapMS of the last change is a flap
// (a device briefly sending on two forwarders, the old path's packets
// overtaking again), counted apart and not as a move.
//
// The per-packet cost is two atomic loads, and one compare-and-swap when
// the packet advances the followed stream: no allocation, no lock. Two
// readers write the words only around a move (the member's session and
// the trunk from its new forwarder); a lost compare-and-swap skips one
// packet's note, never a move twice.
type moveTrack struct {
	// last is the packet that last advanced the followed stream:
	// ms (32 bits, wrapping) << 32 | sequence number << 16 | path.
	last atomic.Uint64
	// since is when the path in last became the sender's, in ms.
	since atomic.Uint32
	// follow is the stream followed: SSRC | followAudio | followSet.
	follow atomic.Uint64
}

// A path is pathDirect (the member's session here) or a trunk, named by
// its origin forwarder's tag with pathTrunk set (15 bits of the tag: two
// forwarders of one call alike in them, 1 in 32,768, would hide a move
// between them).
const (
	pathDirect uint16 = 1
	pathTrunk  uint16 = 0x8000
)

func trunkPath(origin uint64) uint16 { return pathTrunk | uint16(origin&0x7fff) }

const (
	moveQuietMS = 2000 // a sender unheard this long was quiet: its move's gap is not measured
	moveFlapMS  = 500  // a path change within this of the last is a flap
	moveStaleMS = 1000 // nothing newer this long: take any sequence number (a new SSRC, a restart)
)

// note follows one forwarded RTP packet of the sender, from ssrc (audio or
// not) with sequence number seq, received at nowNS by path.
func (t *moveTrack) note(path uint16, ssrc uint32, audio bool, seq uint16, nowNS int64, st *moveStats) {
	if t == nil {
		return // a fixture's session, made without the control goroutine
	}
	ms := uint32(nowNS / int64(time.Millisecond)) //nolint:gosec // wraps every 49 days; only differences are used
	if f := t.follow.Load(); f == 0 || uint32(f) != ssrc {
		if !t.adopt(f, ssrc, audio, seq, ms) {
			return
		}
	}
	old := t.last.Load()
	oldMS, oldSeq, oldPath := uint32(old>>32), uint16(old>>16), uint16(old)
	// Differences are signed: readers' clocks are read per batch, so a
	// packet may carry a time a little before the last one noted.
	stale := int32(ms-oldMS) > moveStaleMS
	if old != 0 && !stale && int16(seq-oldSeq) <= 0 {
		return // a duplicate, or a straggler on a slower path
	}
	if !t.last.CompareAndSwap(old, uint64(ms)<<32|uint64(seq)<<16|uint64(path)) {
		return
	}
	if old == 0 || oldPath == path {
		return
	}
	since := t.since.Swap(ms)
	if since != 0 && int32(ms-since) < moveFlapMS { // 0: no change before
		st.flaps.Add(1)
		return
	}
	st.record(oldPath, path, uint32(max(0, int32(ms-oldMS))), seq-oldSeq-1)
}

// adopt makes ssrc the stream followed, when nothing is yet, when it is
// audio and the one followed is not, or when the one followed has brought
// nothing new for moveStaleMS (the sender muted, or stopped a layer). The
// time and path of the sender's last news stay, so a move that comes with
// the change is still measured from it. It reports whether ssrc is now
// followed.
func (t *moveTrack) adopt(f uint64, ssrc uint32, audio bool, seq uint16, ms uint32) bool {
	old := t.last.Load()
	followedAudio := f&followAudio != 0
	switch {
	case f == 0:
	case audio && !followedAudio:
	case int32(ms-uint32(old>>32)) > moveStaleMS:
	default:
		return false
	}
	nf := uint64(ssrc) | followSet
	if audio {
		nf |= followAudio
	}
	if !t.follow.CompareAndSwap(f, nf) {
		return false
	}
	if old != 0 { // this packet is the new stream's news, by whichever path
		t.last.CompareAndSwap(old, old&^(0xffff<<16)|uint64(seq-1)<<16)
	}
	return true
}

const (
	followSet   = 1 << 33
	followAudio = 1 << 32
)

// moveStats counts the moves this forwarder heard.
type moveStats struct {
	moves   [numMovePaths]atomic.Uint64
	flaps   atomic.Uint64
	quiet   atomic.Uint64
	skipped atomic.Uint64
	// The measured gaps: how many, their sum, the last, the longest, and
	// their histogram as exported (nil in tests that make a bare
	// moveStats).
	measured atomic.Uint64
	sumMS    atomic.Uint64
	lastMS   atomic.Uint32
	maxMS    atomic.Uint32
	hist     prometheus.Histogram
}

// moveGapBuckets are the gap histogram's upper bounds, in seconds: one
// packet interval or less (a clean make-before-break move) up to the 2 s
// beyond which a sender counts as quiet.
var moveGapBuckets = []float64{0.005, 0.01, 0.02, 0.04, 0.06, 0.1, 0.2, 0.4, 1, 2}

const moveGapHelp = "Per move, the time from the sender's last packet by the old path to its first by the new one (its audio, or while it sends none its first other stream), as the members here heard it (moves of senders quiet for over 2 s are not measured)."

func (s *moveStats) init() {
	s.hist = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "callrelay_forwarder_sender_move_gap_seconds", Help: moveGapHelp, Buckets: moveGapBuckets})
}

// Which way a sender moved, as the listeners' forwarder sees it.
const (
	MoveDirectToTrunk = iota // the member left this forwarder for another
	MoveTrunkToDirect        // the member came here from another
	MoveTrunkToTrunk         // the member went from one other forwarder to a third
	numMovePaths
)

var movePathNames = [numMovePaths]string{"direct_to_trunk", "trunk_to_direct", "trunk_to_trunk"}

func (s *moveStats) record(from, to uint16, gapMS uint32, skipped uint16) {
	k := MoveTrunkToTrunk
	switch {
	case from == pathDirect:
		k = MoveDirectToTrunk
	case to == pathDirect:
		k = MoveTrunkToDirect
	}
	s.moves[k].Add(1)
	if gapMS > moveQuietMS {
		s.quiet.Add(1)
		return
	}
	s.skipped.Add(uint64(skipped))
	s.measured.Add(1)
	s.sumMS.Add(uint64(gapMS))
	if s.hist != nil {
		s.hist.Observe(float64(gapMS) / 1000) // a move, not a packet: once per move and listening forwarder
	}
	s.lastMS.Store(gapMS)
	for m := s.maxMS.Load(); gapMS > m && !s.maxMS.CompareAndSwap(m, gapMS); m = s.maxMS.Load() {
	}
}

// SenderMoveStats is what the forwarder measured of its senders' moves.
type SenderMoveStats struct {
	Moves   [numMovePaths]uint64 // by MoveDirectToTrunk, MoveTrunkToDirect, MoveTrunkToTrunk
	Flaps   uint64               // path changes within moveFlapMS of the last: not moves
	Quiet   uint64               // moves of senders quiet for over moveQuietMS: no gap measured
	Skipped uint64               // packets of the followed stream still owed by the old path when the new one's first came
	// Measured counts the moves whose gap was measured (1 ms resolution):
	// their sum, the last one and the longest.
	Measured                uint64
	GapSum, LastGap, MaxGap time.Duration
}

// SenderMoves returns the sender moves heard here so far.
func (f *Forwarder) SenderMoves() SenderMoveStats {
	s := &f.moves
	var out SenderMoveStats
	for i := range out.Moves {
		out.Moves[i] = s.moves[i].Load()
	}
	out.Flaps, out.Quiet, out.Skipped = s.flaps.Load(), s.quiet.Load(), s.skipped.Load()
	out.Measured = s.measured.Load()
	out.GapSum = time.Duration(s.sumMS.Load()) * time.Millisecond
	out.LastGap = time.Duration(s.lastMS.Load()) * time.Millisecond
	out.MaxGap = time.Duration(s.maxMS.Load()) * time.Millisecond
	return out
}

// syncMoveTracks gives every sender of the call, here or remote, one
// track shared by all the paths its packets come by, and forgets the
// tracks of senders that are neither. Control goroutine, before the
// call's routes are published: a mediaInfo's track is set once, before
// any reader can see it.
func syncMoveTracks(cl *call) {
	for id := range cl.tracks {
		if cl.members[id] == nil && cl.remoteMedia[id] == nil {
			delete(cl.tracks, id)
		}
	}
	for id, s := range cl.members {
		attachTrack(cl, id, s.media)
	}
	for id, m := range cl.remoteMedia {
		attachTrack(cl, id, m)
	}
}

func attachTrack(cl *call, id protocol.ID, m *mediaInfo) {
	if m.move != nil {
		return
	}
	t := cl.tracks[id]
	if t == nil {
		if cl.tracks == nil {
			cl.tracks = make(map[protocol.ID]*moveTrack)
		}
		t = new(moveTrack)
		cl.tracks[id] = t
	}
	m.move = t
}

var (
	mSenderMoves = prometheus.NewDesc("callrelay_forwarder_sender_moves_total",
		"Members whose media came here by another path than before (a move to, from or between other forwarders), as heard by the members here, by path: direct_to_trunk, trunk_to_direct, trunk_to_trunk.", []string{"path"}, nil)
	mSenderMoveMisc = prometheus.NewDesc("callrelay_forwarder_sender_move_events_total",
		"Around sender moves: quiet (a move of a sender unheard for over 2 s: no gap measured), flap (a path change within 500 ms of the last: not a move), skipped_packets (packets the old path still owed when the new one's first came).", []string{"event"}, nil)
)

func describeSenderMoves(ch chan<- *prometheus.Desc, s *moveStats) {
	ch <- mSenderMoves
	ch <- mSenderMoveMisc
	if s.hist != nil {
		ch <- s.hist.Desc()
	}
}

func collectSenderMoves(ch chan<- prometheus.Metric, s *moveStats) {
	for i := range s.moves {
		ch <- prometheus.MustNewConstMetric(mSenderMoves, prometheus.CounterValue, float64(s.moves[i].Load()), movePathNames[i])
	}
	if s.hist != nil {
		ch <- s.hist
	}
	constCounter(ch, mSenderMoveMisc, s.quiet.Load(), "quiet")
	constCounter(ch, mSenderMoveMisc, s.flaps.Load(), "flap")
	constCounter(ch, mSenderMoveMisc, s.skipped.Load(), "skipped_packets")
}
