package conductor

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

var allocT0 = time.Date(2030, 5, 6, 7, 8, 9, 0, time.UTC)

// aid is member n's ID (n > 0).
func aid(n int) protocol.ID { return protocol.ID{0xa1, 14: byte(n >> 8), 15: byte(n)} }

// allocRank returns the rank out gave receiver r of sender s, and whether
// a pair was emitted.
func allocRank(out *Allocation, r, s protocol.ID) (uint8, bool) {
	for _, p := range out.Pairs {
		if p.Receiver == r && p.Sender == s {
			return p.Rank, true
		}
	}
	return RankNone, false
}

func allocPlan(t *testing.T, out *Allocation, s protocol.ID) SenderPlan {
	t.Helper()
	for _, p := range out.Senders {
		if p.Sender == s {
			return p
		}
	}
	require.FailNow(t, "no plan", "sender %s", s)
	return SenderPlan{}
}

// fanOut is a call of one video sender (member 1, uplink 5 Mbit/s) and
// receivers 2.. with the given downlinks, all subscribed to it; the sender's
// audio is forwarded.
func fanOut(downlinks ...uint64) *AllocInput {
	in := &AllocInput{Dominant: aid(1), Forwarded: []protocol.ID{aid(1)}}
	in.Members = append(in.Members, AllocMember{ID: aid(1), UplinkBps: 5_000_000, SendsVideo: true})
	for i, d := range downlinks {
		in.Members = append(in.Members, AllocMember{ID: aid(i + 2), DownlinkBps: d, Subs: []AllocSub{{Sender: aid(1)}}})
	}
	return in
}

// allocClock runs an allocator tick by tick, 100 ms apart.
type allocClock struct {
	a   *Allocator
	now time.Time
	out Allocation
}

func newAllocClock() *allocClock {
	return &allocClock{a: NewAllocator(testLadder, 0), now: allocT0}
}

func (c *allocClock) tick(in *AllocInput) *Allocation {
	c.now = c.now.Add(100 * time.Millisecond)
	c.a.Allocate(c.now, in, &c.out)
	return &c.out
}

// TestAllocStarvedReceiverSplitsAtOnce: a receiver that could take the low
// layer but not the single stream would see none of the video while the
// sender waits: the sender is asked to split on the first tick.
func TestAllocStarvedReceiverSplitsAtOnce(t *testing.T) {
	in := fanOut(3_000_000, 3_000_000, 3_000_000, 3_000_000, 300_000)
	c := newAllocClock()
	s := aid(1)
	out := c.tick(in)
	require.True(t, c.a.Split(s))
	r, _ := allocRank(out, aid(6), s)
	require.Equal(t, RankLow, r)
	r, _ = allocRank(out, aid(2), s)
	require.Equal(t, RankHigh, r)
	require.Equal(t, SenderPlan{Sender: s, Layers: 2, TotalBps: 1_090_000, LayerBps: [3]uint64{150_000, 900_000}}, allocPlan(t, out, s))
}

// TestAllocBetweenHighAndSingle: the sender's uplink is too small for both
// layers at full rate, so its high layer (810 kbit/s) is below its single
// stream (900); a receiver with 790 left cannot take the single stream
// (not even within FitMargin) but can take the high layer. It is starved, not forgotten: the sender splits
// at once and it gets the high layer; the sender stays split while that
// receiver could not take the single stream, and sends one stream again
// UnsplitAfter after it can.
func TestAllocBetweenHighAndSingle(t *testing.T) {
	in := fanOut(3_000_000, 830_000) // 790 left after the sender's audio
	in.Members[0].UplinkBps = 1_000_000
	c := newAllocClock()
	s, between := aid(1), aid(3)
	out := c.tick(in)
	require.True(t, c.a.Split(s), "split on the first tick")
	for range 100 {
		for i := 2; i <= 3; i++ {
			r, _ := allocRank(out, aid(i), s)
			require.Equal(t, RankHigh, r)
		}
		require.Equal(t, SenderPlan{Sender: s, Layers: 2, TotalBps: 850_000, LayerBps: [3]uint64{0, 810_000}}, allocPlan(t, out, s),
			"the low layer paused: nobody takes it")
		out = c.tick(in)
		require.True(t, c.a.Split(s), "no flapping back to the stream it cannot take")
	}
	// Now it can: the first tick not wanting the split, then 5 s of them.
	in.Members[2].DownlinkBps = 940_000
	for range 50 {
		c.tick(in)
		require.True(t, c.a.Split(s))
	}
	out = c.tick(in)
	require.False(t, c.a.Split(s), "one stream again after UnsplitAfter")
	r, _ := allocRank(out, between, s)
	require.Equal(t, RankHigh, r)
	require.Equal(t, uint64(900_000), allocPlan(t, out, s).LayerBps[0])
}

func TestAllocSplitHysteresis(t *testing.T) {
	// A thumbnail receiver (it wants at most 180 lines) still gets the
	// single stream while the sender waits, so the wait applies.
	in := fanOut(3_000_000, 3_000_000, 3_000_000, 3_000_000, 3_000_000)
	in.Members[5].Subs[0].MaxHeight = 180
	c := newAllocClock()
	fast, slow, s := aid(2), aid(6), aid(1)

	// Unsplit: everyone gets the single stream.
	for i := 0; i < 10; i++ {
		out := c.tick(in)
		require.False(t, c.a.Split(s), "tick %d", i)
		r, _ := allocRank(out, slow, s)
		require.Equal(t, RankHigh, r)
		r, _ = allocRank(out, fast, s)
		require.Equal(t, RankHigh, r)
		require.Equal(t, SenderPlan{Sender: s, Layers: 1, TotalBps: 940_000, LayerBps: [3]uint64{900_000}}, allocPlan(t, out, s))
	}
	// One second after "want" first held (the first tick), it splits.
	out := c.tick(in)
	require.Equal(t, allocT0.Add(1100*time.Millisecond), c.now)
	require.True(t, c.a.Split(s))
	for i := 2; i <= 5; i++ {
		r, _ := allocRank(out, aid(i), s)
		require.Equal(t, RankHigh, r, "receiver %d", i)
	}
	r, _ := allocRank(out, slow, s)
	require.Equal(t, RankLow, r)
	require.Equal(t, SenderPlan{Sender: s, Layers: 2, TotalBps: 1_090_000, LayerBps: [3]uint64{150_000, 900_000}}, allocPlan(t, out, s))

	for i := 0; i < 20; i++ {
		c.tick(in)
		require.True(t, c.a.Split(s))
	}
	// The thumbnail grows to full size: it gets the high layer at once,
	// the sender stays split for UnsplitAfter.
	in.Members[5].Subs[0].MaxHeight = 0
	for i := 0; i < 50; i++ {
		out := c.tick(in)
		require.True(t, c.a.Split(s), "tick %d after recovery", i)
		r, _ := allocRank(out, slow, s)
		require.Equal(t, RankHigh, r)
		require.Equal(t, SenderPlan{Sender: s, Layers: 2, TotalBps: 940_000, LayerBps: [3]uint64{0, 900_000}}, allocPlan(t, out, s))
	}
	out = c.tick(in) // 5 s after the first tick without "want"
	require.False(t, c.a.Split(s))
	for i := 2; i <= 6; i++ {
		r, _ := allocRank(out, aid(i), s)
		require.Equal(t, RankHigh, r, "receiver %d", i)
	}
	require.Equal(t, SenderPlan{Sender: s, Layers: 1, TotalBps: 940_000, LayerBps: [3]uint64{900_000}}, allocPlan(t, out, s))
}

func TestAllocSplitNeedsSteadyWant(t *testing.T) {
	in := fanOut(3_000_000, 3_000_000)
	in.Members[2].Subs[0].MaxHeight = 180 // a thumbnail
	c := newAllocClock()
	for range 9 {
		c.tick(in)
	}
	in.Members[2].Subs[0].MaxHeight = 0 // one tick without "want" restarts the wait
	c.tick(in)
	in.Members[2].Subs[0].MaxHeight = 180
	for i := range 10 {
		c.tick(in)
		require.False(t, c.a.Split(aid(1)), "tick %d", i)
	}
	c.tick(in)
	require.True(t, c.a.Split(aid(1)))
}

func TestAllocEqualReceivers(t *testing.T) {
	t.Run("fast: never split", func(t *testing.T) {
		in := fanOut(3_000_000, 3_000_000, 3_000_000, 3_000_000, 3_000_000)
		c := newAllocClock()
		for range 300 {
			out := c.tick(in)
			require.False(t, c.a.Split(aid(1)))
			for i := 2; i <= 6; i++ {
				r, _ := allocRank(out, aid(i), aid(1))
				require.Equal(t, RankHigh, r)
			}
		}
	})
	// A deliberate widening of the brief's rule: when every receiver needs
	// the low layer the sender splits and pauses the high layer, so it
	// sends one low stream instead of one nobody can take.
	t.Run("slow: low layer only", func(t *testing.T) {
		in := fanOut(300_000, 300_000, 300_000)
		c := newAllocClock()
		var out *Allocation
		for range 11 {
			out = c.tick(in)
		}
		require.True(t, c.a.Split(aid(1)))
		for i := 2; i <= 4; i++ {
			r, _ := allocRank(out, aid(i), aid(1))
			require.Equal(t, RankLow, r)
		}
		require.Equal(t, SenderPlan{Sender: aid(1), Layers: 2, TotalBps: 190_000, LayerBps: [3]uint64{150_000, 0}}, allocPlan(t, out, aid(1)))
	})
	t.Run("thumbnails: low layer only", func(t *testing.T) {
		in := fanOut(3_000_000, 3_000_000)
		in.Members[1].Subs[0].MaxHeight = 180
		in.Members[2].Subs[0].MaxHeight = 360
		c := newAllocClock()
		out := c.tick(in)
		r, _ := allocRank(out, aid(2), aid(1))
		require.Equal(t, RankHigh, r, "unsplit: the single stream is the lowest layer, allowed whatever MaxHeight")
		for range 10 {
			out = c.tick(in)
		}
		require.True(t, c.a.Split(aid(1)))
		r, _ = allocRank(out, aid(2), aid(1))
		require.Equal(t, RankLow, r)
		require.Equal(t, [3]uint64{150_000, 0}, allocPlan(t, out, aid(1)).LayerBps)
	})
}

func TestAllocUplinkCapsSplit(t *testing.T) {
	in := fanOut(3_000_000, 300_000)
	c := newAllocClock()
	for range 11 {
		c.tick(in)
	}
	require.True(t, c.a.Split(aid(1)))
	// 400 kbit/s leaves 360 for video: less than low+MinHighBps (450), so
	// the sender goes back to one stream at once, capped by its uplink.
	in.Members[0].UplinkBps = 400_000
	out := c.tick(in)
	require.False(t, c.a.Split(aid(1)))
	require.Equal(t, SenderPlan{Sender: aid(1), Layers: 1, TotalBps: 400_000, LayerBps: [3]uint64{360_000}}, allocPlan(t, out, aid(1)))
	r, _ := allocRank(out, aid(2), aid(1))
	require.Equal(t, RankHigh, r)
	r, _ = allocRank(out, aid(3), aid(1))
	require.Equal(t, RankNone, r, "260 kbit/s left after audio")
	for range 100 {
		c.tick(in)
		require.False(t, c.a.Split(aid(1)))
	}
	// 600 kbit/s can split: high = 600-40-150.
	in.Members[0].UplinkBps = 600_000
	for range 11 {
		out = c.tick(in)
	}
	require.True(t, c.a.Split(aid(1)))
	require.Equal(t, SenderPlan{Sender: aid(1), Layers: 2, TotalBps: 600_000, LayerBps: [3]uint64{150_000, 410_000}}, allocPlan(t, out, aid(1)))
}

func TestAllocForget(t *testing.T) {
	in := fanOut(3_000_000, 300_000)
	c := newAllocClock()
	for range 11 {
		c.tick(in)
	}
	require.True(t, c.a.Split(aid(1)))
	c.a.Forget(aid(1))
	require.False(t, c.a.Split(aid(1)))

	for range 11 {
		c.tick(in)
	}
	require.True(t, c.a.Split(aid(1)))
	in.Members[0].SendsVideo = false // camera off: the state goes
	c.tick(in)
	require.False(t, c.a.Split(aid(1)))
	require.Empty(t, c.a.senders)

	in.Members[0].SendsVideo = true
	for range 11 {
		c.tick(in)
	}
	require.True(t, c.a.Split(aid(1)))
	in.Members = in.Members[1:] // it left
	c.tick(in)
	require.Empty(t, c.a.senders)
}

// TestAllocReceiverRules covers rules 1 and 2 on small hand-made calls.
func TestAllocReceiverRules(t *testing.T) {
	type pair struct {
		s    int
		rank uint8
	}
	split := func(ids ...int) map[protocol.ID]senderState {
		m := map[protocol.ID]senderState{}
		for _, i := range ids {
			m[aid(i)] = senderState{split: true}
		}
		return m
	}
	video := func(i int) AllocMember { return AllocMember{ID: aid(i), UplinkBps: 5_000_000, SendsVideo: true} }
	for _, tc := range []struct {
		name    string
		state   map[protocol.ID]senderState
		down    uint64
		subs    []AllocSub
		dom     int
		fwd     []int
		want    []pair
		members []AllocMember // besides the receiver (member 1) and video senders 2..5
	}{
		{name: "dominant first, then the device's order", down: 1_000_000, dom: 4,
			subs: []AllocSub{{Sender: aid(2)}, {Sender: aid(3)}, {Sender: aid(4)}},
			want: []pair{{4, RankHigh}, {2, RankNone}, {3, RankNone}}},
		{name: "a cheaper later subscription still fits", state: split(3), down: 1_100_000,
			subs: []AllocSub{{Sender: aid(2)}, {Sender: aid(4)}, {Sender: aid(3)}},
			want: []pair{{2, RankHigh}, {4, RankNone}, {3, RankLow}}},
		{name: "MaxHeight below LowHeight still gets the low layer", state: split(2), down: 3_000_000,
			subs: []AllocSub{{Sender: aid(2), MaxHeight: 90}, {Sender: aid(3), MaxHeight: 90}},
			want: []pair{{2, RankLow}, {3, RankHigh}}},
		{name: "exact fits", state: split(3), down: 40_000 + 900_000 + 150_000, fwd: []int{2},
			subs: []AllocSub{{Sender: aid(2)}, {Sender: aid(3)}}, want: []pair{{2, RankHigh}, {3, RankLow}}},
		{name: "MaxHeight at HighHeight allows rank 2", state: split(2), down: 3_000_000,
			subs: []AllocSub{{Sender: aid(2), MaxHeight: 720}}, want: []pair{{2, RankHigh}}},
		{name: "audio alone exceeds the budget", state: split(2), down: 100_000, fwd: []int{2, 3, 4},
			subs: []AllocSub{{Sender: aid(2)}, {Sender: aid(3)}}, want: []pair{{2, RankNone}, {3, RankNone}}},
		{name: "own audio is free", state: split(2), down: 190_000, fwd: []int{1, 2, 1},
			subs: []AllocSub{{Sender: aid(2)}}, want: []pair{{2, RankLow}}},
		{name: "forwarded members not in the call cost nothing", state: split(2), down: 190_000, fwd: []int{2, 99},
			subs: []AllocSub{{Sender: aid(2)}}, want: []pair{{2, RankLow}}},
		{name: "ignored: self, unknown, camera off, repeats", down: 3_000_000, dom: 3,
			members: []AllocMember{{ID: aid(6)}},
			subs: []AllocSub{{Sender: aid(1)}, {Sender: aid(99)}, {Sender: aid(6)}, {Sender: aid(2)},
				{Sender: aid(3)}, {Sender: aid(2)}, {}},
			want: []pair{{3, RankHigh}, {2, RankHigh}}},
		{name: "the dominant speaker unsubscribed", down: 1_000_000, dom: 4,
			subs: []AllocSub{{Sender: aid(2)}, {Sender: aid(3)}}, want: []pair{{2, RankHigh}, {3, RankNone}}},
		{name: "the receiver is the dominant speaker", down: 1_000_000, dom: 1,
			subs: []AllocSub{{Sender: aid(3)}, {Sender: aid(2)}}, want: []pair{{3, RankHigh}, {2, RankNone}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := &AllocInput{Members: []AllocMember{{ID: aid(1), DownlinkBps: tc.down, Subs: tc.subs}}}
			for i := 2; i <= 5; i++ {
				in.Members = append(in.Members, video(i))
			}
			in.Members = append(in.Members, tc.members...)
			if tc.dom != 0 {
				in.Dominant = aid(tc.dom)
			}
			for _, f := range tc.fwd {
				in.Forwarded = append(in.Forwarded, aid(f))
			}
			a := NewAllocator(VideoLadder{}, 0)
			a.StarvedSplitAfter = DefaultSplitAfter // the rules, not the timing
			for id, st := range tc.state {
				a.senders[id] = st
			}
			var out Allocation
			a.Allocate(allocT0, in, &out)
			var got []pair
			for _, p := range out.Pairs {
				if p.Receiver == aid(1) {
					got = append(got, pair{int(p.Sender[15]), p.Rank})
				}
			}
			require.Equal(t, tc.want, got)
		})
	}
}

func TestAllocLadderDefaults(t *testing.T) {
	require.Equal(t, DefaultVideoLadder(), VideoLadder{}.withDefaults())
	require.NoError(t, VideoLadder{}.Validate())
	require.Error(t, VideoLadder{LowBps: 900_000, HighBps: 150_000}.Validate())
	require.Error(t, VideoLadder{LowHeight: 720, HighHeight: 180}.Validate())
	a := NewAllocator(VideoLadder{HighBps: 1_200_000}, 0)
	require.Equal(t, uint64(1_200_000), a.Ladder().HighBps)
	require.Equal(t, uint64(DefaultDownlinkBps), a.downlink)
}

// randomCall makes a call of 2..12 members with random estimates,
// subscriptions, dominant speaker and forwarding set, including the odd
// bad entry (zero or repeated IDs, unknown senders).
func randomCall(rng *rand.Rand) *AllocInput {
	n := 2 + rng.IntN(11)
	rate := func(max uint64) uint64 {
		switch rng.IntN(8) {
		case 0:
			return 0 // unknown
		case 1:
			return rng.Uint64N(100_000) // below audio now and then
		default:
			return rng.Uint64N(max)
		}
	}
	heights := []uint16{0, 0, 0, 90, 180, 360, 720, 1080}
	pick := func() protocol.ID {
		switch rng.IntN(30) {
		case 0:
			return protocol.ID{}
		case 1:
			return aid(500) // not in the call
		}
		return aid(1 + rng.IntN(n))
	}
	in := &AllocInput{}
	for i := range n {
		m := AllocMember{ID: aid(i + 1), UplinkBps: rate(3_000_000), DownlinkBps: rate(5_000_000), SendsVideo: rng.IntN(4) != 0}
		switch rng.IntN(40) {
		case 0:
			m.ID = protocol.ID{}
		case 1:
			m.ID = aid(1 + rng.IntN(n))
		}
		for range rng.IntN(n + 2) {
			m.Subs = append(m.Subs, AllocSub{Sender: pick(), MaxHeight: heights[rng.IntN(len(heights))]})
		}
		in.Members = append(in.Members, m)
	}
	if rng.IntN(5) != 0 {
		in.Dominant = pick()
	}
	for range rng.IntN(5) {
		in.Forwarded = append(in.Forwarded, pick())
	}
	return in
}

// randomState splits some of the call's senders (whose streaks start
// fresh, so a single Allocate cannot change them).
func randomState(rng *rand.Rand, a *Allocator, in *AllocInput) {
	for _, m := range in.Members {
		if rng.IntN(2) == 0 {
			a.senders[m.ID] = senderState{split: true}
		}
	}
}

// allocOracle recomputes, independently of the allocator's scratch, what
// the rules say about a call.
type allocOracle struct {
	l     VideoLadder
	a     *Allocator
	in    *AllocInput
	index map[protocol.ID]int
}

func newAllocOracle(a *Allocator, in *AllocInput) *allocOracle {
	o := &allocOracle{l: a.Ladder(), a: a, in: in, index: map[protocol.ID]int{}}
	for i, m := range in.Members {
		if _, dup := o.index[m.ID]; !dup && !m.ID.IsZero() {
			o.index[m.ID] = i
		}
	}
	return o
}

// offer is what a sender offers: whether it sends video, its shape, and
// its rates (single stream, or low and high layers).
type allocOffer struct {
	video, split      bool
	single, low, high uint64
}

func (o *allocOracle) offer(id protocol.ID) allocOffer {
	m := o.in.Members[o.index[id]]
	up := m.UplinkBps
	if up == 0 {
		up = o.l.AudioBps + o.l.LowBps + o.l.HighBps
	}
	var f allocOffer
	if !m.SendsVideo || up <= o.l.AudioBps {
		return f
	}
	v := up - o.l.AudioBps
	f.video, f.single = true, min(v, o.l.HighBps)
	if v >= o.l.LowBps+o.l.MinHighBps && o.a.Split(id) {
		f.split, f.low, f.high = true, o.l.LowBps, min(o.l.HighBps, v-o.l.LowBps)
	}
	return f
}

// order is receiver r's subscriptions that yield pairs, in priority order.
func (o *allocOracle) order(r int) []AllocSub {
	m := o.in.Members[r]
	seen := map[protocol.ID]bool{m.ID: true}
	var subs []AllocSub
	add := func(s AllocSub) {
		if _, ok := o.index[s.Sender]; !ok || seen[s.Sender] {
			return
		}
		seen[s.Sender] = true
		if o.offer(s.Sender).video {
			subs = append(subs, s)
		}
	}
	if _, ok := o.index[o.in.Dominant]; ok {
		for _, s := range m.Subs {
			if s.Sender == o.in.Dominant {
				add(s)
				break
			}
		}
	}
	for _, s := range m.Subs {
		add(s)
	}
	return subs
}

// budget returns r's budget and what its audio costs.
func (o *allocOracle) budget(r int) (budget, audio uint64) {
	m := o.in.Members[r]
	budget = m.DownlinkBps
	if budget == 0 {
		budget = DefaultDownlinkBps
	}
	fwd := map[protocol.ID]bool{}
	for _, id := range o.in.Forwarded {
		if _, ok := o.index[id]; ok && id != m.ID {
			fwd[id] = true
		}
	}
	return budget, uint64(len(fwd)) * o.l.AudioBps
}

// planRate is what receiving rank costs by the sender's plan; ok is false
// when the plan does not offer that rank.
func planRate(p SenderPlan, rank uint8) (rate uint64, ok bool) {
	switch {
	case rank == RankNone:
		return 0, true
	case rank == RankLow && p.Layers == 2:
		return p.LayerBps[0], true
	case rank == RankHigh && (p.Layers == 1 || p.Layers == 2):
		return p.LayerBps[p.Layers-1], true
	}
	return 0, false
}

// best is the highest rank of f that fits left (a tenth of its rate may
// lie beyond, FitMargin) and MaxHeight, and its rate by the offer.
func (o *allocOracle) best(f allocOffer, maxHeight uint16, left uint64) (uint8, uint64) {
	switch {
	case !f.split:
		if f.single-f.single/10 <= left {
			return RankHigh, f.single
		}
	case f.high-f.high/10 <= left && (maxHeight == 0 || maxHeight >= o.l.HighHeight):
		return RankHigh, f.high
	case f.low-f.low/10 <= left:
		return RankLow, f.low
	}
	return RankNone, 0
}

// check returns what breaks the rules in one tick's output ("" if
// nothing). It uses plain comparisons: it runs some 50,000 times.
func (o *allocOracle) check(out *Allocation) string {
	plans := map[protocol.ID]SenderPlan{}
	var planned []protocol.ID
	for _, p := range out.Senders {
		plans[p.Sender] = p
		planned = append(planned, p.Sender)
	}
	recvLow, recvHigh := map[protocol.ID]bool{}, map[protocol.ID]bool{}
	k := 0
	var valid []protocol.ID
	for r, m := range o.in.Members {
		if o.index[m.ID] != r || m.ID.IsZero() {
			continue
		}
		valid = append(valid, m.ID)
		budget, audio := o.budget(r)
		left := sub0(budget, audio)
		var video uint64
		for _, s := range o.order(r) {
			if k >= len(out.Pairs) {
				return fmt.Sprintf("receiver %s: pairs missing", m.ID)
			}
			p := out.Pairs[k]
			k++
			if p.Receiver != m.ID || p.Sender != s.Sender {
				return fmt.Sprintf("pair %d is %+v, want receiver %s sender %s (priority order)", k-1, p, m.ID, s.Sender)
			}
			// Priorities: each subscription gets the best rank that fits
			// what the earlier ones left.
			f := o.offer(s.Sender)
			rank, rate := o.best(f, s.MaxHeight, left)
			if p.Rank != rank {
				return fmt.Sprintf("receiver %s got rank %d of %s, want %d (%d bit/s left, MaxHeight %d, offer %+v)",
					m.ID, p.Rank, s.Sender, rank, left, s.MaxHeight, f)
			}
			// The plan carries the same rate.
			if pr, ok := planRate(plans[s.Sender], p.Rank); !ok || pr != rate {
				return fmt.Sprintf("rank %d of %s costs %d by the offer, plan %+v", p.Rank, s.Sender, rate, plans[s.Sender])
			}
			left = sub0(left, rate)
			video += rate
			recvLow[s.Sender] = recvLow[s.Sender] || p.Rank == RankLow
			recvHigh[s.Sender] = recvHigh[s.Sender] || p.Rank == RankHigh
		}
		// Never over budget but by a tenth of one layer; no video when
		// audio alone exceeds it.
		if audio >= budget && video > 0 || audio < budget && audio+video > budget+video/FitMargin {
			return fmt.Sprintf("receiver %s: audio %d + video %d, budget %d", m.ID, audio, video, budget)
		}
	}
	if k != len(out.Pairs) {
		return fmt.Sprintf("%d pairs, want %d", len(out.Pairs), k)
	}
	if !slices.Equal(valid, planned) {
		return fmt.Sprintf("plans for %v, want one per member in order: %v", planned, valid)
	}
	for _, id := range valid {
		p, f, m := plans[id], o.offer(id), o.in.Members[o.index[id]]
		if p.TotalBps != o.l.AudioBps+p.LayerBps[0]+p.LayerBps[1]+p.LayerBps[2] {
			return fmt.Sprintf("plan %+v: total is not audio + layers", p)
		}
		if m.UplinkBps >= o.l.AudioBps && p.TotalBps > m.UplinkBps {
			return fmt.Sprintf("plan %+v over uplink %d", p, m.UplinkBps)
		}
		want := SenderPlan{Sender: id, Layers: 1, TotalBps: p.TotalBps}
		switch {
		case f.split && (recvLow[id] || recvHigh[id]):
			want.Layers = 2
			if recvLow[id] {
				want.LayerBps[0] = f.low
			}
			if recvHigh[id] {
				want.LayerBps[1] = f.high
			}
		case !f.split && recvHigh[id]:
			want.LayerBps[0] = f.single
		}
		if p != want {
			return fmt.Sprintf("plan %+v, want %+v (unreceived layers 0, received ones their offer)", p, want)
		}
	}
	return ""
}

func TestAllocProperties(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for call := range 2000 {
		in := randomCall(rng)
		a, twin := NewAllocator(VideoLadder{}, 0), NewAllocator(VideoLadder{}, 0)
		seed := rng.Uint64()
		randomState(rand.New(rand.NewPCG(seed, 0)), a, in)
		randomState(rand.New(rand.NewPCG(seed, 0)), twin, in)
		var out Allocation
		twinOut := Allocation{Pairs: make([]PairLayer, 3), Senders: make([]SenderPlan, 40)}
		now := allocT0
		for tick := range 1 + rng.IntN(20) {
			now = now.Add(time.Duration(50+rng.IntN(450)) * time.Millisecond)
			if rng.IntN(10) == 0 { // estimates move now and then
				m := &in.Members[rng.IntN(len(in.Members))]
				m.DownlinkBps, m.UplinkBps = rng.Uint64N(4_000_000), rng.Uint64N(3_000_000)
			}
			a.Allocate(now, in, &out)
			twin.Allocate(now, in, &twinOut)
			if msg := newAllocOracle(a, in).check(&out); msg != "" {
				t.Fatalf("call %d tick %d: %s", call, tick, msg)
			}
			if !slices.Equal(out.Pairs, twinOut.Pairs) || !slices.Equal(out.Senders, twinOut.Senders) || !maps.Equal(a.senders, twin.senders) {
				t.Fatalf("call %d tick %d: not deterministic", call, tick)
			}
		}
	}
}

// rankOrder maps ranks to quality order: none < low < high.
func rankOrder(r uint8) int {
	if r == RankNone {
		return 0
	}
	return int(r)
}

func TestAllocMoreBudgetNeverWorse(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for call := range 2000 {
		in := randomCall(rng)
		r := rng.IntN(len(in.Members))
		lo := 1 + rng.Uint64N(3_000_000)
		hi := lo + 1 + rng.Uint64N(2_000_000)
		seed := rng.Uint64()
		a, b := NewAllocator(VideoLadder{}, 0), NewAllocator(VideoLadder{}, 0)
		// The property holds for the same simulcast state: keep a starved
		// receiver from splitting the sender on the tick under test.
		a.StarvedSplitAfter, b.StarvedSplitAfter = time.Hour, time.Hour
		randomState(rand.New(rand.NewPCG(seed, 0)), a, in)
		randomState(rand.New(rand.NewPCG(seed, 0)), b, in)
		var outLo, outHi Allocation
		in.Members[r].DownlinkBps = lo
		a.Allocate(allocT0, in, &outLo)
		in.Members[r].DownlinkBps = hi
		b.Allocate(allocT0, in, &outHi)
		require.Equal(t, len(outLo.Pairs), len(outHi.Pairs))
		cmp := 0
		for i := range outLo.Pairs {
			pl, ph := outLo.Pairs[i], outHi.Pairs[i]
			require.Equal(t, pl.Sender, ph.Sender)
			require.Equal(t, pl.Receiver, ph.Receiver)
			if pl.Receiver != in.Members[r].ID {
				require.Equal(t, pl, ph, "call %d: another receiver changed", call)
				continue
			}
			if cmp == 0 {
				cmp = rankOrder(ph.Rank) - rankOrder(pl.Rank)
			}
		}
		require.GreaterOrEqual(t, cmp, 0, "call %d: %d -> %d bit/s gave a worse rank vector", call, lo, hi)
	}
}

// allocBenchCall is a call of n members, all with cameras on, each
// subscribed to everyone else; a third of them on slow downlinks, so that
// senders split.
func allocBenchCall(n int) *AllocInput {
	in := &AllocInput{Dominant: aid(1), Forwarded: []protocol.ID{aid(1), aid(2), aid(3)}}
	for i := 1; i <= n; i++ {
		m := AllocMember{ID: aid(i), UplinkBps: 2_500_000, DownlinkBps: 8_000_000, SendsVideo: true}
		if i%3 == 0 {
			m.DownlinkBps = 700_000
		}
		for j := 1; j <= n; j++ {
			if j != i {
				m.Subs = append(m.Subs, AllocSub{Sender: aid(j), MaxHeight: []uint16{0, 360}[j%2]})
			}
		}
		in.Members = append(in.Members, m)
	}
	return in
}

func TestAllocZeroAllocs(t *testing.T) {
	for _, n := range []int{6, 50} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			in := allocBenchCall(n)
			c := newAllocClock()
			for range 20 {
				c.tick(in)
			}
			require.True(t, c.a.Split(aid(1)), "the steady state includes splits")
			require.Zero(t, testing.AllocsPerRun(100, func() { c.tick(in) }))
			// Shape changes allocate nothing either: the uplink of member 1
			// drops below what a split needs (one stream at once) and comes
			// back (split at once, the tick allocated twice).
			c.a.SplitAfter = 0
			flips := 0
			require.Zero(t, testing.AllocsPerRun(100, func() {
				in.Members[0].UplinkBps ^= 2_500_000 ^ 400_000
				was := c.a.Split(aid(1))
				c.tick(in)
				if c.a.Split(aid(1)) != was {
					flips++
				}
			}))
			require.Greater(t, flips, 100)
		})
	}
}

func BenchmarkAllocate(b *testing.B) {
	for _, n := range []int{6, 50} {
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			in := allocBenchCall(n)
			c := newAllocClock()
			for range 20 {
				c.tick(in)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				c.tick(in)
			}
			b.ReportMetric(float64(len(c.out.Pairs)), "pairs/op")
		})
	}
}

// testLadder is the ladder the hand-made cases are computed for.
var testLadder = VideoLadder{AudioBps: 40_000, LowBps: 150_000, HighBps: 900_000, MinHighBps: 300_000, LowHeight: 180, HighHeight: 720}
