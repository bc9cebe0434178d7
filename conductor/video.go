package conductor

import (
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/callrelay/callrelay/protocol"
)

// A call's video, as the conductor sees it: each member's last video
// section from the metadata (estimates, layers sent, subscriptions), and
// the allocation decided from it (allocate.go). The allocation travels in
// the CallDecision's video section; forwarders apply ranks to receivers and
// tell senders their targets.

// memberVideo is a member's last video metadata.
type memberVideo struct {
	v         protocol.MemberVideo
	at        time.Time
	everVideo bool      // it has sent video in this call (a paused camera is still a camera)
	downSince time.Time // its downlink estimate has been reported since (zero: unknown)
}

// videoStale: a member whose video section is older than this is left out
// of the allocation (it left or its forwarder stopped reporting).
const videoStale = 5 * time.Second

// downlinkSettle: a member's downlink estimate counts once it has been
// reported for this long; until then the member's downlink is unknown (the
// allocator's default budget). A receiver's first estimates are what
// arrived over less than its estimator's one-second window, an
// underestimate (internal/bwe), however fast its link: acted on, one of
// them cuts the receiver off or splits the sender at once, and a receiver
// moved down is fed too little to show its link is faster until a probe
// (forwarder/probe.go), some 10 s later. The price: a receiver whose link
// really is slow gets what the default budget allows for a second longer.
const downlinkSettle = time.Second

type callVideo struct {
	members map[protocol.ID]*memberVideo
	alloc   *Allocator
	in      AllocInput
	out     Allocation
	subs    [][]AllocSub // scratch per member

	senders []protocol.SenderTarget // last decided
	layers  []protocol.LayerAssign
	ids     []protocol.ID // scratch, reused every tick
	// The plan being computed, compared with the decided one; reused.
	nextSenders []protocol.SenderTarget
	nextLayers  []protocol.LayerAssign
}

// observeVideo keeps a member's video section.
func (cs *callState) observeVideo(mm *protocol.MemberMetadata, now time.Time, ladder VideoLadder) {
	if mm.Flags&protocol.MetaVideo == 0 {
		return
	}
	if cs.video == nil {
		cs.video = &callVideo{members: make(map[protocol.ID]*memberVideo), alloc: NewAllocator(ladder, DefaultDownlinkBps)}
	}
	mv := cs.video.members[mm.Participant]
	if mv == nil {
		if len(cs.video.members) >= 256 {
			return
		}
		mv = new(memberVideo)
		cs.video.members[mm.Participant] = mv
	}
	mv.v, mv.at = mm.Video, now
	mv.everVideo = mv.everVideo || mm.Video.Layers > 0
	switch {
	case mm.Video.DownlinkEstBps == 0:
		mv.downSince = time.Time{}
	case mv.downSince.IsZero():
		mv.downSince = now
	}
}

// forgetVideo drops a member that left.
func (cs *callState) forgetVideo(id protocol.ID) {
	if cs.video != nil {
		delete(cs.video.members, id)
		cs.video.alloc.Forget(id)
	}
}

// allocateVideo runs the allocator and reports whether its result differs
// from the last decided one.
func (cs *callState) allocateVideo(now time.Time, dominant protocol.ID, forward []protocol.ID, changes *prometheus.CounterVec) bool {
	cv := cs.video
	if cv == nil {
		return false
	}
	cv.fillInput(now, dominant, forward)
	cv.alloc.Allocate(now, &cv.in, &cv.out)
	next, nextLayers := cv.nextSenders[:0], cv.nextLayers[:0]
	for _, sp := range cv.out.Senders {
		st := protocol.SenderTarget{Participant: sp.Sender, Layers: max(1, sp.Layers), TotalBps: clampU32(sp.TotalBps)}
		for i := range st.LayerBps {
			st.LayerBps[i] = clampU32(sp.LayerBps[i])
		}
		next = append(next, st)
	}
	for _, pl := range cv.out.Pairs {
		nextLayers = append(nextLayers, protocol.LayerAssign{Receiver: pl.Receiver, Sender: pl.Sender, Rank: pl.Rank})
	}
	cv.nextSenders, cv.nextLayers = next, nextLayers
	if slices.Equal(nextLayers, cv.layers) && slices.EqualFunc(next, cv.senders, similarTarget) {
		return false
	}
	if changes != nil {
		countChanges(changes, cv.senders, next)
	}
	// The new plan becomes the decided one; the old one's space is reused.
	cv.senders, cv.nextSenders = next, cv.senders
	cv.layers, cv.nextLayers = nextLayers, cv.layers
	return true
}

// fillInput builds the allocator's input from the members' last video
// metadata, dropping members not heard of for videoStale, in id order
// (the allocation is deterministic).
func (cv *callVideo) fillInput(now time.Time, dominant protocol.ID, forward []protocol.ID) {
	in := &cv.in
	in.Members = in.Members[:0]
	in.Dominant, in.Forwarded = dominant, forward
	ids := cv.ids[:0]
	for id, mv := range cv.members {
		if now.Sub(mv.at) > videoStale {
			delete(cv.members, id)
			cv.alloc.Forget(id)
			continue
		}
		ids = append(ids, id)
	}
	slices.SortFunc(ids, compareID)
	cv.ids = ids
	for len(cv.subs) < len(ids) {
		cv.subs = append(cv.subs, nil)
	}
	for i, id := range ids {
		mv := cv.members[id]
		subs := cv.subs[i][:0]
		for _, s := range mv.v.Subs[:mv.v.NumSubs] {
			subs = append(subs, AllocSub{Sender: s.Participant, MaxHeight: s.MaxHeight})
		}
		cv.subs[i] = subs
		down := uint64(mv.v.DownlinkEstBps)
		if now.Sub(mv.downSince) < downlinkSettle {
			down = 0 // not settled: unknown
		}
		in.Members = append(in.Members, AllocMember{ID: id, UplinkBps: uint64(mv.v.UplinkEstBps),
			DownlinkBps: down, SendsVideo: mv.everVideo, Subs: subs})
	}
}

// countChanges counts a changed allocation, and the senders it asks to
// split or to go back to one stream.
func countChanges(changes *prometheus.CounterVec, was, now []protocol.SenderTarget) {
	changes.WithLabelValues("allocation").Inc()
	for _, s := range now {
		layers := uint8(1)
		for _, o := range was {
			if o.Participant == s.Participant {
				layers = o.Layers
			}
		}
		switch {
		case s.Layers > 1 && layers == 1:
			changes.WithLabelValues("split").Inc()
		case s.Layers == 1 && layers > 1:
			changes.WithLabelValues("unsplit").Inc()
		}
	}
}

func clampU32(v uint64) uint32 { return uint32(min(v, 1<<32-1)) }

// similarTarget: the same layers and every target within 15%, so a sender is
// not re-told for every wobble of its estimate.
func similarTarget(a, b protocol.SenderTarget) bool {
	if a.Participant != b.Participant || a.Layers != b.Layers || !near(a.TotalBps, b.TotalBps) {
		return false
	}
	for i := range a.LayerBps {
		if !near(a.LayerBps[i], b.LayerBps[i]) {
			return false
		}
	}
	return true
}

func near(a, b uint32) bool {
	if (a == 0) != (b == 0) {
		return false
	}
	hi, lo := max(a, b), min(a, b)
	return float64(hi-lo) <= 0.15*float64(hi)
}

func compareID(a, b protocol.ID) int {
	for i := range a {
		if a[i] != b[i] {
			return int(a[i]) - int(b[i])
		}
	}
	return 0
}
