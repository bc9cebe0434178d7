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
	everVideo bool // it has sent video in this call (a paused camera is still a camera)
}

// videoStale: a member whose video section is older than this is left out
// of the allocation (it left or its forwarder stopped reporting).
const videoStale = 5 * time.Second

type callVideo struct {
	members map[protocol.ID]*memberVideo
	alloc   *Allocator
	in      AllocInput
	out     Allocation
	subs    [][]AllocSub // scratch per member

	senders []protocol.SenderTarget // last decided
	layers  []protocol.LayerAssign
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
	in := &cv.in
	in.Members = in.Members[:0]
	in.Dominant = dominant
	in.Forwarded = forward
	ids := make([]protocol.ID, 0, len(cv.members))
	for id, mv := range cv.members {
		if now.Sub(mv.at) > videoStale {
			delete(cv.members, id)
			cv.alloc.Forget(id)
			continue
		}
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b protocol.ID) int { return compareID(a, b) }) // deterministic
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
		in.Members = append(in.Members, AllocMember{ID: id, UplinkBps: uint64(mv.v.UplinkEstBps),
			DownlinkBps: uint64(mv.v.DownlinkEstBps), SendsVideo: mv.everVideo, Subs: subs})
	}
	cv.alloc.Allocate(now, in, &cv.out)
	senders := make([]protocol.SenderTarget, 0, len(cv.out.Senders))
	for _, sp := range cv.out.Senders {
		st := protocol.SenderTarget{Participant: sp.Sender, Layers: max(1, sp.Layers), TotalBps: clampU32(sp.TotalBps)}
		for i := range st.LayerBps {
			st.LayerBps[i] = clampU32(sp.LayerBps[i])
		}
		senders = append(senders, st)
	}
	layers := make([]protocol.LayerAssign, 0, len(cv.out.Pairs))
	for _, pl := range cv.out.Pairs {
		layers = append(layers, protocol.LayerAssign{Receiver: pl.Receiver, Sender: pl.Sender, Rank: pl.Rank})
	}
	if slices.Equal(layers, cv.layers) && slices.EqualFunc(senders, cv.senders, similarTarget) {
		return false
	}
	if changes != nil {
		changes.WithLabelValues("allocation").Inc()
		for _, s := range senders {
			was := uint8(1)
			for _, o := range cv.senders {
				if o.Participant == s.Participant {
					was = o.Layers
				}
			}
			switch {
			case s.Layers > 1 && was == 1:
				changes.WithLabelValues("split").Inc()
			case s.Layers == 1 && was > 1:
				changes.WithLabelValues("unsplit").Inc()
			}
		}
	}
	cv.senders, cv.layers = senders, layers
	return true
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
