/*
Video allocation: simulcast layers, receiver ranks and sender bitrates.

Every decision tick the conductor decides, for one call, (a) which quality
rank each receiver gets of each video it subscribed to, (b) whether each
sender splits its camera into two simulcast layers or sends one stream,
and (c) what each sender should send, per layer and in total. Allocator does
it from plain inputs (bandwidth estimates, subscriptions, the dominant
speaker, the audio forwarding set) with time as an argument and no I/O.

# Ranks

A sender offers one of two shapes. Unsplit, it sends one stream, rank 2
(RankHigh). Split, it sends a low layer, rank 1 (RankLow, LowBps,
LowHeight), and a high layer, rank 2 (HighHeight). RankNone means the
receiver gets none of that sender's video.

# 1. Sender offers, from the uplink

For every member with its camera on:

	uplink    = UplinkBps, or AudioBps+LowBps+HighBps when unknown (0)
	video     = uplink - AudioBps (0 if the uplink cannot even carry audio)
	single    = min(HighBps, video)              the unsplit stream
	canSplit  = video >= LowBps + MinHighBps
	low, high = LowBps, min(HighBps, video-LowBps)   the split layers

A sender with video = 0 offers nothing (its audio is never cut for video).
The single stream has no floor: below MinHighBps it is still sent at what
the uplink carries (the encoder lowers its resolution), which keeps video
flowing and lets the uplink estimate grow again; MinHighBps only decides
whether a split is worth it. A sender whose uplink cannot carry
low+MinHighBps is never split, whatever the hysteresis state says.

# 2. Receivers, in priority order

Per receiver the budget is its downlink estimate (DownlinkBps, or the
allocator's default when unknown). Audio comes first and is never cut:
AudioBps for every member of the forwarding set other than the receiver.
What is left goes to video, greedily, in priority order: the dominant
speaker's video first (if the receiver subscribed to it), then its other
subscriptions in the order the device gave. Each gets the highest rank that

  - the sender offers in its current shape,
  - fits what is left of the budget: its rate less a tenth (FitMargin) is
    at most what is left, and
  - respects the subscription's MaxHeight (rank 2 is HighHeight, rank 1
    LowHeight); the sender's lowest offered layer is always allowed
    whatever MaxHeight says (the receiver scales it down), so a thumbnail
    of an unsplit sender still gets the single stream if it fits.

If nothing fits the subscription gets RankNone and the next one is tried: a
cheaper one later in the order may still fit. A receiver is therefore never
given more than its budget, audio included, plus a tenth of one layer,
unless audio alone exceeds it, in which case it gets no video.

The margin is because a downlink estimate is fed by what the receiver
receives (internal/bwe): one that gets a stream and whose estimator holds
(jitter, a busy device) reports about the rate it receives, a little under
the nominal one (the audio it gets is often less than AudioBps), and
without the margin it would look unable to take the very stream it takes,
and be moved down or split for. Congestion shows as more than that: an
estimator that sees a queue grow asks for 0.85 times what arrived. Because the choice at each position is the
best that fits, more budget never gives a worse allocation: the rank
vector in priority order only rises, lexicographically.

Subscriptions to oneself, to members not in the call, to members whose
camera is off or who offer nothing, and repeated subscriptions to the same
sender are ignored (no pair is emitted). Every other subscription yields one
PairLayer, in priority order, receivers in the order of AllocInput.Members.
Members with the zero ID, and repeats of an ID, are ignored entirely.

# 3. Simulcast, with hysteresis

While allocating, every subscription to a sender that could split is
looked at with the layer rates and what is left of the receiver's budget
at its position: a receiver that could not take the single stream (too
little budget left) or would not take the high layer (a MaxHeight below
HighHeight), but could take the low layer, needs the split. A sender WANTS
to split when at least one of its receivers needs it. Whatever the shape,
the test is against the single stream: while the uplink is too small for
both layers at full rate, the high layer is below the single stream, and a
receiver whose budget falls between the two would otherwise get none of
the video unsplit (it cannot take the single stream) without anyone
asking for the split that gives it the high layer; split, it would take
the high layer, stop wanting the split and be cut off again after
UnsplitAfter.

The narrower rule "split when one receiver could take the high layer and
another only the low one" is widened on purpose for one case: when every
receiver needs the low layer, splitting still wins. The high layer then
has no receiver and gets target 0, so the sender sends one low stream:
without this a call of slow receivers (or of thumbnails only) would get no
video (or far too much) from an unlimited sender. Receivers that are all equal and can all take the
single stream never cause a split.

The sender splits once WANT has held on every tick since a tick at least
SplitAfter (1 s) ago, and goes back to one stream once WANT has been false
on every tick since a tick at least UnsplitAfter (5 s) ago; one tick the
other way restarts the wait. When a receiver that needs the low layer
would get none of the video until the split (it cannot take the single
stream), the sender splits on that tick (StarvedSplitAfter, 0): a
receiver without video receives only audio, and its downlink estimate,
fed by what it receives, would sink meanwhile. Splitting quickly rescues the slow receiver;
unsplitting slowly avoids flapping (every change of shape costs a key
frame). A tick that changes a sender's shape is allocated again with the
new shape, so the output always matches the state. Senders that turn
their camera off, offer nothing or leave the input lose their state;
Forget drops one at once.

# 4. Sender plans

Computed last, from the rates of step 1 and who received what in step 2, so
allocations and plans agree: a received layer's target is its offered rate,
a layer nobody receives gets 0 (pause it). A sender with no receivers at
all gets Layers 1 and all targets 0 ("do not send video"); otherwise Layers
is 2 when split and 1 when not. TotalBps = AudioBps + the layer targets,
which is at most the uplink whenever the uplink is known and >= AudioBps.
Every valid member gets a plan, in input order, camera on or off.

# Cost

Allocate is O(members + subscriptions) with map lookups, deterministic, and
does not allocate once its scratch and the output's slices have grown to
the call's size.
*/

package conductor

import (
	"errors"
	"fmt"
	"time"

	"github.com/callrelay/callrelay/protocol"
)

// Quality ranks of a (receiver, sender) pair.
const (
	RankLow  uint8 = 1    // the low layer of a split sender
	RankHigh uint8 = 2    // the high layer of a split sender, or its single stream
	RankNone uint8 = 0xFF // not forwarded
)

// Allocator defaults.
const (
	DefaultDownlinkBps  = 1_500_000 // a receiver whose downlink is unknown
	DefaultSplitAfter   = time.Second
	DefaultUnsplitAfter = 5 * time.Second
)

// VideoLadder holds the nominal rates (bits/s) and heights (pixels) of the
// quality ladder.
type VideoLadder struct {
	// AudioBps is one forwarded audio stream.
	AudioBps uint64
	// LowBps is the low layer; HighBps the high layer (and the single
	// stream) at best.
	LowBps, HighBps uint64
	// MinHighBps is the least a high layer must get for a split to be
	// worth it.
	MinHighBps uint64
	// LowHeight and HighHeight are the layers' heights, compared with
	// subscriptions' MaxHeight.
	LowHeight, HighHeight uint16
}

// DefaultVideoLadder returns the production ladder. The low layer (180p at
// about 15 frames/s) is small enough that a receiver whose estimate is
// 20% under a 300 kbit/s link still fits it next to a speaker's audio.
func DefaultVideoLadder() VideoLadder {
	return VideoLadder{AudioBps: 40_000, LowBps: 100_000, HighBps: 900_000, MinHighBps: 300_000,
		LowHeight: 180, HighHeight: 720}
}

// withDefaults fills zero fields from DefaultVideoLadder.
func (l VideoLadder) withDefaults() VideoLadder {
	d := DefaultVideoLadder()
	set := func(v *uint64, def uint64) {
		if *v == 0 {
			*v = def
		}
	}
	set(&l.AudioBps, d.AudioBps)
	set(&l.LowBps, d.LowBps)
	set(&l.HighBps, d.HighBps)
	set(&l.MinHighBps, d.MinHighBps)
	if l.LowHeight == 0 {
		l.LowHeight = d.LowHeight
	}
	if l.HighHeight == 0 {
		l.HighHeight = d.HighHeight
	}
	return l
}

// Validate says what to fix. Zero fields take their defaults.
func (l VideoLadder) Validate() error {
	l = l.withDefaults()
	var errs []error
	if l.LowBps >= l.HighBps || l.MinHighBps > l.HighBps {
		errs = append(errs, fmt.Errorf("video ladder: want LowBps < HighBps and MinHighBps <= HighBps; have %d, %d, %d",
			l.LowBps, l.HighBps, l.MinHighBps))
	}
	if l.LowHeight >= l.HighHeight {
		errs = append(errs, fmt.Errorf("video ladder: want LowHeight < HighHeight; have %d, %d", l.LowHeight, l.HighHeight))
	}
	return errors.Join(errs...)
}

// AllocMember is one call member as the allocator sees it.
type AllocMember struct {
	ID protocol.ID
	// UplinkBps estimates what it can send; 0: unknown (taken as
	// AudioBps+LowBps+HighBps).
	UplinkBps uint64
	// DownlinkBps estimates what it can receive; 0: unknown (taken as the
	// allocator's default).
	DownlinkBps uint64
	// SendsVideo: its camera is on (it sends video now or did recently).
	SendsVideo bool
	// Subs are the videos it wants, in the device's order.
	Subs []AllocSub
}

// AllocSub is one video subscription.
type AllocSub struct {
	Sender    protocol.ID
	MaxHeight uint16 // 0: no limit
}

// AllocInput is one call at one tick.
type AllocInput struct {
	Members []AllocMember
	// Dominant is the dominant speaker (zero: none).
	Dominant protocol.ID
	// Forwarded is the audio forwarding set: each member in it costs
	// AudioBps at every other receiver.
	Forwarded []protocol.ID
}

// PairLayer is the rank a receiver gets of a sender's video.
type PairLayer struct {
	Receiver, Sender protocol.ID
	Rank             uint8 // RankLow, RankHigh or RankNone
}

// SenderPlan is what a sender should send.
type SenderPlan struct {
	Sender protocol.ID
	// Layers is 2 when split, else 1.
	Layers uint8
	// TotalBps is AudioBps plus the layer targets.
	TotalBps uint64
	// LayerBps are the layer targets, lowest first; only Layers are used.
	// 0 pauses that layer.
	LayerBps [3]uint64
}

// Allocation is one tick's result. Allocate reuses its slices.
type Allocation struct {
	Pairs   []PairLayer
	Senders []SenderPlan
}

// Allocator allocates video for one call, tick after tick; it keeps each
// sender's simulcast hysteresis and scratch space. Not safe for concurrent
// use.
type Allocator struct {
	// SplitAfter is how long a sender's receivers must keep wanting a
	// split before it splits; UnsplitAfter how long they must keep not
	// wanting it before it sends one stream again. NewAllocator sets
	// DefaultSplitAfter and DefaultUnsplitAfter.
	SplitAfter, UnsplitAfter time.Duration
	// StarvedSplitAfter replaces SplitAfter when a receiver would get none
	// of the sender's video until it splits (0: split on that tick).
	StarvedSplitAfter time.Duration

	ladder   VideoLadder
	downlink uint64
	senders  map[protocol.ID]senderState // video senders' hysteresis
	index    map[protocol.ID]int32       // member index, rebuilt every tick
	mem      []allocMember               // scratch, parallel to AllocInput.Members
	stamp    uint64                      // per-receiver mark for allocMember.seen
	nfwd     uint64                      // forwarded members this tick
}

// senderState is a sender's simulcast hysteresis.
type senderState struct {
	split bool
	// since is when the current run of ticks wanting the other shape
	// began; zero: no such run.
	since time.Time
}

// allocMember is the per-tick scratch for one member.
type allocMember struct {
	single    uint64 // the unsplit stream's rate
	high      uint64 // the split high layer's rate (when canSplit)
	seen      uint64 // == Allocator.stamp: already considered for this receiver
	valid     bool   // a first occurrence of a non-zero ID
	forwarded bool
	video     bool // offers video this tick
	canSplit  bool
	split     bool // its shape this tick
	recvLow   bool // someone receives rank 1
	recvHigh  bool // someone receives rank 2
	needsLow  bool // some receiver needs the split (see the file comment)
	starved   bool // and, unsplit, that receiver gets none of its video

}

// NewAllocator returns an allocator for one call. Zero fields of l take
// their defaults (l should pass Validate); defaultDownlink is the budget of
// receivers whose downlink is unknown (0: DefaultDownlinkBps).
func NewAllocator(l VideoLadder, defaultDownlink uint64) *Allocator {
	if defaultDownlink == 0 {
		defaultDownlink = DefaultDownlinkBps
	}
	return &Allocator{
		SplitAfter: DefaultSplitAfter, UnsplitAfter: DefaultUnsplitAfter,
		ladder: l.withDefaults(), downlink: defaultDownlink,
		senders: make(map[protocol.ID]senderState), index: make(map[protocol.ID]int32),
	}
}

// Ladder returns the ladder in use (defaults filled in).
func (a *Allocator) Ladder() VideoLadder { return a.ladder }

// Forget drops a sender's simulcast state (it left the call): if it comes
// back it starts as one stream. Allocate also drops the state of senders
// that are absent from its input or offer no video.
func (a *Allocator) Forget(sender protocol.ID) { delete(a.senders, sender) }

// Split reports whether the sender was split at the latest Allocate.
func (a *Allocator) Split(sender protocol.ID) bool { return a.senders[sender].split }

// Allocate decides one tick for the call in in, writing the result to out
// (whose slices are reused). It is deterministic: the same input and state
// give the same output and state.
func (a *Allocator) Allocate(now time.Time, in *AllocInput, out *Allocation) {
	a.prepare(in)
	a.allocateReceivers(in, out, true)
	if a.advanceStates(now, in) {
		a.allocateReceivers(in, out, false)
	}
	a.plan(in, out)
}

// prepare indexes the members, computes the senders' offers and shapes,
// and drops the state of senders that no longer offer video.
func (a *Allocator) prepare(in *AllocInput) {
	n := len(in.Members)
	if cap(a.mem) < n {
		a.mem = make([]allocMember, n)
	}
	a.mem = a.mem[:n]
	clear(a.index)
	l := &a.ladder
	for i := range in.Members {
		m := &in.Members[i]
		s := &a.mem[i]
		*s = allocMember{}
		if _, dup := a.index[m.ID]; dup || m.ID.IsZero() {
			continue
		}
		a.index[m.ID] = int32(i)
		s.valid = true
		if !m.SendsVideo {
			continue
		}
		up := m.UplinkBps
		if up == 0 {
			up = l.AudioBps + l.LowBps + l.HighBps
		}
		video := sub0(up, l.AudioBps)
		s.single = min(l.HighBps, video)
		s.video = s.single > 0
		s.canSplit = video >= l.LowBps+l.MinHighBps
		if s.canSplit {
			s.high = min(l.HighBps, video-l.LowBps)
		}
	}
	for id, st := range a.senders {
		i, ok := a.index[id]
		switch {
		case !ok || !a.mem[i].video:
			delete(a.senders, id)
		case st.split && !a.mem[i].canSplit:
			a.senders[id] = senderState{} // the uplink forbids it: one stream at once
		default:
			a.mem[i].split = st.split
		}
	}
	a.nfwd = 0
	for _, id := range in.Forwarded {
		if i, ok := a.index[id]; ok && !a.mem[i].forwarded {
			a.mem[i].forwarded = true
			a.nfwd++
		}
	}
}

// allocateReceivers fills out.Pairs with every receiver's ranks and marks
// which layers are received; with want it also notes which senders'
// receivers need the low layer.
func (a *Allocator) allocateReceivers(in *AllocInput, out *Allocation, want bool) {
	out.Pairs = out.Pairs[:0]
	for i := range a.mem {
		s := &a.mem[i]
		s.recvLow, s.recvHigh = false, false
		if want {
			s.needsLow, s.starved = false, false
		}
	}
	dom, hasDom := a.index[in.Dominant]
	for r := range in.Members {
		rm := &in.Members[r]
		if !a.mem[r].valid {
			continue
		}
		a.stamp++
		a.mem[r].seen = a.stamp // a self-subscription is ignored
		left := a.videoBudget(rm, &a.mem[r])
		if hasDom && int(dom) != r {
			for _, sub := range rm.Subs {
				if sub.Sender == in.Dominant {
					left = a.consider(out, rm.ID, sub, dom, left, want)
					break
				}
			}
		}
		for _, sub := range rm.Subs {
			if i, ok := a.index[sub.Sender]; ok {
				left = a.consider(out, rm.ID, sub, i, left, want)
			}
		}
	}
}

// videoBudget returns what a receiver's budget leaves for video once the
// forwarded audio of the others is paid.
func (a *Allocator) videoBudget(rm *AllocMember, r *allocMember) uint64 {
	budget := rm.DownlinkBps
	if budget == 0 {
		budget = a.downlink
	}
	streams := a.nfwd
	if r.forwarded {
		streams--
	}
	return sub0(budget, streams*a.ladder.AudioBps)
}

// consider allocates one subscription (to member si) with left bits/s
// still free and returns what is free after it.
func (a *Allocator) consider(out *Allocation, receiver protocol.ID, sub AllocSub, si int32, left uint64, want bool) uint64 {
	s := &a.mem[si]
	if s.seen == a.stamp {
		return left // oneself, the dominant speaker again, or a repeat
	}
	s.seen = a.stamp
	if !s.video {
		return left
	}
	l := &a.ladder
	highOK := sub.MaxHeight == 0 || sub.MaxHeight >= l.HighHeight
	if want && s.canSplit && fits(l.LowBps, left) && (!fits(s.single, left) || !highOK) {
		s.needsLow = true
		s.starved = s.starved || !s.split && !fits(s.single, left)
	}
	rank, rate := RankNone, uint64(0)
	switch {
	case !s.split:
		if fits(s.single, left) { // the lowest layer: MaxHeight does not apply
			rank, rate = RankHigh, s.single
		}
	case highOK && fits(s.high, left):
		rank, rate = RankHigh, s.high
	case fits(l.LowBps, left):
		rank, rate = RankLow, l.LowBps
	}
	switch rank {
	case RankLow:
		s.recvLow = true
	case RankHigh:
		s.recvHigh = true
	}
	out.Pairs = append(out.Pairs, PairLayer{Receiver: receiver, Sender: sub.Sender, Rank: rank})
	return sub0(left, rate)
}

// FitMargin: a layer of rate r fits when r - r/FitMargin is at most what
// is left of the receiver's budget (see the file comment).
const FitMargin = 10

func fits(rate, left uint64) bool { return rate-rate/FitMargin <= left }

// advanceStates runs every sender's hysteresis one tick and reports
// whether any sender's shape changed (the tick must then be allocated
// again).
func (a *Allocator) advanceStates(now time.Time, in *AllocInput) bool {
	changed := false
	for i := range a.mem {
		s := &a.mem[i]
		if !s.video {
			continue
		}
		id := in.Members[i].ID
		st := a.senders[id]
		want := s.canSplit && s.needsLow
		if st.split == want {
			st.since = time.Time{}
		} else {
			if st.since.IsZero() {
				st.since = now
			}
			hold := a.SplitAfter
			switch {
			case !want:
				hold = a.UnsplitAfter
			case s.starved:
				hold = a.StarvedSplitAfter // a receiver would see none of this video meanwhile
			}
			if now.Sub(st.since) >= hold {
				st = senderState{split: want}
				s.split = want
				changed = true
			}
		}
		a.senders[id] = st
	}
	return changed
}

// plan fills out.Senders from the offers and what was received.
func (a *Allocator) plan(in *AllocInput, out *Allocation) {
	out.Senders = out.Senders[:0]
	l := &a.ladder
	for i := range a.mem {
		s := &a.mem[i]
		if !s.valid {
			continue
		}
		p := SenderPlan{Sender: in.Members[i].ID, Layers: 1}
		switch {
		case s.split && (s.recvLow || s.recvHigh):
			p.Layers = 2
			if s.recvLow {
				p.LayerBps[0] = l.LowBps
			}
			if s.recvHigh {
				p.LayerBps[1] = s.high
			}
		case !s.split && s.recvHigh:
			p.LayerBps[0] = s.single
		}
		p.TotalBps = l.AudioBps + p.LayerBps[0] + p.LayerBps[1] + p.LayerBps[2]
		out.Senders = append(out.Senders, p)
	}
}

// sub0 is a-b, or 0 when b > a.
func sub0(a, b uint64) uint64 {
	if b > a {
		return 0
	}
	return a - b
}
