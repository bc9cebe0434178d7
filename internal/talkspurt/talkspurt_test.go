package talkspurt

import (
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Derivation of ChainTalkspurt and ChainPause for the symmetric chain
// (p = PDoubleTalk = 0.4, ties 0.5), from A's point of view:
//
//   - Remaining talk once A enters single talk: S = 854 + p*D; once in double
//     talk: D = 228 + 0.5*S. So S = 945.2/0.8 = 1181.5 ms, D = 818.75 ms.
//   - Per visit to A's single talk, the chain visits B's single talk once,
//     double talk 2p = 0.8 times and mutual silence 2(1-p) = 1.2 times: a
//     cycle of 2*854 + 0.8*228 + 1.2*508 = 2500 ms, in which A starts one
//     talkspurt (0.6 from mutual silence, 0.4 by interrupting B).
//   - Mean talkspurt 0.6*S + 0.4*D = 1036.4 ms; mean pause 2500 - 1036.4 =
//     1463.6 ms; activity 1036.4/2500 = 41.5 %.

func seeded(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)) }

// checkWellFormed asserts the Schedule invariants.
func checkWellFormed(t *testing.T, s Schedule, d time.Duration) {
	t.Helper()
	for p, sp := range s {
		for i, x := range sp {
			require.Less(t, x.Start, x.End, "participant %d spurt %d empty", p, i)
			require.GreaterOrEqual(t, x.Start, time.Duration(0))
			require.LessOrEqual(t, x.End, d)
			if i > 0 {
				require.Less(t, sp[i-1].End, x.Start, "participant %d spurts %d and %d overlap or touch", p, i-1, i)
			}
		}
	}
}

// within asserts |got-want| <= tol*want.
func within(t *testing.T, name string, got, want, tol float64) {
	t.Helper()
	if math.Abs(got-want) > tol*want {
		t.Errorf("%s = %.4g, want %.4g within %.0f%%", name, got, want, tol*100)
	} else {
		t.Logf("%s = %.4g (model %.4g)", name, got, want)
	}
}

// segments cuts [0, d) at every spurt boundary and calls f for every piece
// with the set of talkers (a bit mask) during it.
func segments(s Schedule, d time.Duration, f func(mask uint, start, end time.Duration)) {
	var cuts []time.Duration
	for _, sp := range s {
		for _, x := range sp {
			cuts = append(cuts, x.Start, x.End)
		}
	}
	cuts = append(cuts, 0, d)
	slices.Sort(cuts)
	prevMask, segStart := uint(1<<31), time.Duration(0)
	for i := 0; i+1 < len(cuts); i++ {
		a, b := cuts[i], cuts[i+1]
		if a == b {
			continue
		}
		var mask uint
		for p := range s {
			if s.Talking(p, a) {
				mask |= 1 << p
			}
		}
		if mask != prevMask {
			if prevMask != 1<<31 {
				f(prevMask, segStart, a)
			}
			prevMask, segStart = mask, a
		}
	}
	f(prevMask, segStart, d)
}

func TestTwoPartyStatistics(t *testing.T) {
	const d = 10 * time.Hour
	s := TwoParty(seeded(1), d)
	checkWellFormed(t, s, d)

	// State durations: each run of a constant talker set is one state visit.
	sum := map[uint]time.Duration{}
	cnt := map[uint]int{}
	segments(s, d, func(mask uint, a, b time.Duration) {
		sum[mask] += b - a
		cnt[mask]++
	})
	mean := func(m uint) float64 { return (sum[m] / time.Duration(cnt[m])).Seconds() }
	within(t, "single talk A", mean(1), MeanSingleTalk.Seconds(), 0.03)
	within(t, "single talk B", mean(2), MeanSingleTalk.Seconds(), 0.03)
	within(t, "double talk", mean(3), MeanDoubleTalk.Seconds(), 0.03)
	within(t, "mutual silence", mean(0), MeanMutualSilence.Seconds(), 0.03)

	for p := range 2 {
		var talk, pause time.Duration
		sp := s[p]
		for i, x := range sp {
			talk += x.End - x.Start
			if i > 0 {
				pause += x.Start - sp[i-1].End
			}
		}
		ts := (talk / time.Duration(len(sp))).Seconds()
		ps := (pause / time.Duration(len(sp)-1)).Seconds()
		// Tight against the chain's own means, loose against P.59's
		// measured ones (which the chain does not reproduce exactly).
		within(t, "talkspurt vs chain", ts, ChainTalkspurt.Seconds(), 0.03)
		within(t, "pause vs chain", ps, ChainPause.Seconds(), 0.03)
		within(t, "talkspurt vs P.59", ts, MeanTalkspurt.Seconds(), 0.08)
		within(t, "pause vs P.59", ps, MeanPause.Seconds(), 0.12)
		within(t, "activity", talk.Seconds()/d.Seconds(), 0.4146, 0.03)
	}
}

func TestGroupStatistics(t *testing.T) {
	const (
		n = 6
		d = 4 * time.Hour
	)
	s := Group(seeded(2), n, d)
	require.Len(t, s, n)
	checkWellFormed(t, s, d)

	// Count talkers at every instant: the generalisation never has more than
	// two (floor and room), and the overall shares match the biased chain.
	var one, two, none time.Duration
	segments(s, d, func(mask uint, a, b time.Duration) {
		switch k := popcount(mask); k {
		case 0:
			none += b - a
		case 1:
			one += b - a
		case 2:
			two += b - a
		default:
			t.Fatalf("%d talkers at %v", k, a)
		}
	})
	within(t, "mutual silence share", none.Seconds()/d.Seconds(), 0.3048/1.25, 0.05)
	within(t, "double talk share", two.Seconds()/d.Seconds(), 0.0912/1.25, 0.06)

	// Everyone speaks some of the time; nobody is starved of the floor.
	for p := range n {
		var talk time.Duration
		for _, x := range s[p] {
			talk += x.End - x.Start
		}
		share := talk.Seconds() / d.Seconds()
		// Each holds the floor ~1/n of the time (62 % talk) and is in the
		// room otherwise (21 % of the time shared by n-1): ~14 %.
		within(t, "participant share", share, (0.619+0.211)/n, 0.15)
	}
}

func popcount(m uint) int {
	n := 0
	for ; m != 0; m &= m - 1 {
		n++
	}
	return n
}

// TestGroupTurns checks that the floor changes hands at about the modelled
// rate: the participant talking most in a window is the holder, and holders
// change roughly every MinTurn+MeanTurn plus the wait for mutual silence.
func TestGroupTurns(t *testing.T) {
	const d = 2 * time.Hour
	s := Group(seeded(3), 5, d)
	// Replay the generator step by step (the same draws as Group) and count
	// the floor passes.
	passes := 0
	g2 := newGen(seeded(3), 5, d, FloorBias, true)
	st, at := stSilence, time.Duration(0)
	for at < g2.end {
		var dur time.Duration
		switch st {
		case stFloor, stRoom:
			dur = g2.exp(MeanSingleTalk)
		case stDouble:
			dur = g2.exp(MeanDoubleTalk)
		default:
			dur = g2.exp(MeanMutualSilence)
		}
		next := min(at+dur, g2.end)
		h := g2.holder
		nst := g2.next(st, next)
		if g2.holder != h {
			passes++
		}
		g2.transition(st, nst, next)
		st, at = nst, next
	}
	g2.transition(st, stSilence, g2.end)
	require.Equal(t, s, g2.out, "the replay must match Group")
	meanTurn := d.Seconds() / float64(passes+1)
	t.Logf("floor passes: %d, mean turn %.1f s", passes, meanTurn)
	// A turn lasts MinTurn+Exp(MeanTurn) and then waits for mutual silence
	// (one to two seconds): about 19.5 s.
	within(t, "mean turn", meanTurn, (MinTurn+MeanTurn).Seconds()+1.5, 0.15)
}

func TestDeterminism(t *testing.T) {
	for seed := range uint64(5) {
		a := Group(seeded(seed), 6, 10*time.Minute)
		b := Group(seeded(seed), 6, 10*time.Minute)
		require.True(t, reflect.DeepEqual(a, b), "seed %d", seed)
		c := TwoParty(seeded(seed), 10*time.Minute)
		e := TwoParty(seeded(seed), 10*time.Minute)
		require.Equal(t, c, e)
	}
	require.NotEqual(t, Group(seeded(1), 6, time.Minute), Group(seeded(2), 6, time.Minute))
}

func TestEdges(t *testing.T) {
	require.Nil(t, Group(seeded(1), 0, time.Minute))
	require.Equal(t, Schedule{nil, nil}, TwoParty(nil, time.Minute))
	require.Equal(t, Schedule{nil, nil, nil}, Group(seeded(1), 3, 0))
	require.Equal(t, TwoParty(seeded(7), time.Minute), Group(seeded(7), 2, time.Minute))

	// A lone participant talks (as the floor) and nobody else exists.
	solo := Group(seeded(4), 1, 10*time.Minute)
	require.Len(t, solo, 1)
	require.NotEmpty(t, solo[0])
	checkWellFormed(t, solo, 10*time.Minute)

	s := Schedule{{{Start: time.Second, End: 2 * time.Second}, {Start: 3 * time.Second, End: 4 * time.Second}}}
	for _, c := range []struct {
		p    int
		at   time.Duration
		want bool
	}{
		{0, 0, false}, {0, time.Second, true}, {0, 2*time.Second - 1, true}, {0, 2 * time.Second, false},
		{0, 3500 * time.Millisecond, true}, {0, 5 * time.Second, false}, {1, time.Second, false}, {-1, 0, false},
	} {
		require.Equal(t, c.want, s.Talking(c.p, c.at), "p=%d at=%v", c.p, c.at)
	}
	sp, ok := s.SpurtAt(0, 3500*time.Millisecond)
	require.True(t, ok)
	require.Equal(t, 3*time.Second, sp.Start)
}
