// Package talkspurt generates on/off speech schedules ("who talks when") for
// simulated calls, from the conversational speech model of ITU-T
// Recommendation P.59 (Artificial conversational speech, 1993).
//
// It produces timing only, never audio: a Schedule says for every
// participant the intervals in which it speaks. Tests of the dominant
// speaker detector and the load tester turn a Schedule into audio packets
// (or their per-tick summaries) themselves.
//
// Everything is deterministic for a given *rand.Rand: the same seed gives
// the same Schedule, so a failing seed can be replayed.
//
// # The two-party model (P.59)
//
// P.59 describes a telephone conversation between A and B as a Markov chain
// over four states, each held for an exponentially distributed time:
//
//	state            mean duration
//	single talk A    854 ms  (MeanSingleTalk)
//	single talk B    854 ms
//	double talk      228 ms  (MeanDoubleTalk)
//	mutual silence   508 ms  (MeanMutualSilence)
//
// Leaving single talk, the chain goes to double talk with probability 0.4
// (the listener interrupts) and to mutual silence with probability 0.6 (the
// talker stops). Leaving double talk or mutual silence, either party is the
// one left talking (or starting to talk) with probability 0.5. The chain
// starts in mutual silence at time 0.
//
// P.59 also quotes the resulting per-talker means: talkspurt 1.004 s
// (MeanTalkspurt) and pause 1.587 s (MeanPause). These are measured figures
// that the four-state chain reproduces only approximately: the chain itself
// gives a mean talkspurt of about 1.04 s and a mean pause of about 1.46 s
// (see ChainTalkspurt and ChainPause, derived in talkspurt_test.go), and a
// talker activity of about 41 %. The state durations are the model's
// inputs and are reproduced exactly.
//
// # The group generalisation (n > 2)
//
// P.59 says nothing about more than two parties. Group uses the same chain
// between two voices, the floor and the room, and maps them to people:
//
//   - The floor is voiced by the current floor holder, the main speaker.
//   - Each talkspurt of the room is voiced by one participant other than
//     the holder, drawn uniformly when the spurt starts: backchannels,
//     interjections, questions, and (through the double talk state)
//     overlaps with the main speaker.
//   - The chain is biased towards the floor: where P.59 picks either party
//     with probability 0.5 (after double talk or mutual silence), Group picks
//     the floor with probability FloorBias (0.8). The holder then talks about
//     62 % of the time, the room as a whole about 21 %, and mutual silence
//     fills about 24 %.
//   - The floor changes hands: a turn lasts an exponential time with mean
//     MeanTurn (15 s, at least MinTurn, 3 s), after which the next mutual
//     silence hands the floor to another participant drawn uniformly. The
//     new holder usually (FloorBias) speaks first; the old one joins the
//     room.
//
// With n == 2 Group returns TwoParty; with n == 1 the single participant
// holds the floor and the room's spurts go unvoiced.
package talkspurt

import (
	"math/rand/v2"
	"sort"
	"time"
)

// The P.59 model's published means.
const (
	MeanSingleTalk    = 854 * time.Millisecond  // one party talks alone
	MeanDoubleTalk    = 228 * time.Millisecond  // both talk
	MeanMutualSilence = 508 * time.Millisecond  // neither talks
	MeanTalkspurt     = 1004 * time.Millisecond // one talker's speech burst (measured)
	MeanPause         = 1587 * time.Millisecond // one talker's silence between bursts (measured)

	// PDoubleTalk is the probability that single talk ends in double talk
	// (the listener starts) rather than in mutual silence (the talker stops).
	PDoubleTalk = 0.4
)

// Means of the four-state chain itself, for comparison with the measured
// MeanTalkspurt and MeanPause (derivation in talkspurt_test.go).
const (
	ChainTalkspurt = 1036 * time.Millisecond
	ChainPause     = 1464 * time.Millisecond
)

// Parameters of the group generalisation.
const (
	FloorBias = 0.8              // probability the floor, not the room, talks next
	MeanTurn  = 15 * time.Second // mean floor turn (exponential part)
	MinTurn   = 3 * time.Second  // shortest floor turn
)

// Spurt is one interval of speech, [Start, End).
type Spurt struct{ Start, End time.Duration }

// Schedule holds each participant's spurts, indexed by participant; each
// participant's spurts are sorted, non-empty and do not overlap or touch.
type Schedule [][]Spurt

// Talking reports whether participant p speaks at time at. Out-of-range
// participants never talk.
func (s Schedule) Talking(p int, at time.Duration) bool {
	if p < 0 || p >= len(s) {
		return false
	}
	sp := s[p]
	// First spurt that ends after at.
	i := sort.Search(len(sp), func(i int) bool { return sp[i].End > at })
	return i < len(sp) && sp[i].Start <= at
}

// SpurtAt returns the spurt of p containing at, if any.
func (s Schedule) SpurtAt(p int, at time.Duration) (Spurt, bool) {
	if p < 0 || p >= len(s) {
		return Spurt{}, false
	}
	sp := s[p]
	i := sort.Search(len(sp), func(i int) bool { return sp[i].End > at })
	if i < len(sp) && sp[i].Start <= at {
		return sp[i], true
	}
	return Spurt{}, false
}

// TwoParty returns a P.59 conversation between participants 0 and 1 lasting
// d. A nil rng or d <= 0 gives empty schedules.
func TwoParty(rng *rand.Rand, d time.Duration) Schedule {
	s := make(Schedule, 2)
	if rng == nil || d <= 0 {
		return s
	}
	g := newGen(rng, 2, d, 0.5, false)
	g.run()
	return g.out
}

// Group returns a conversation among n participants lasting d, using the
// floor/room generalisation described in the package comment. Participant 0
// holds the floor first.
func Group(rng *rand.Rand, n int, d time.Duration) Schedule {
	if n <= 0 {
		return nil
	}
	if n == 2 {
		return TwoParty(rng, d)
	}
	s := make(Schedule, n)
	if rng == nil || d <= 0 {
		return s
	}
	g := newGen(rng, n, d, FloorBias, true)
	g.run()
	return g.out
}

// chain states
const (
	stFloor   = iota // single talk by the floor (A in TwoParty)
	stRoom           // single talk by the room (B in TwoParty)
	stDouble         // both
	stSilence        // neither
)

// gen runs the chain. In TwoParty the floor is always participant 0 and the
// room participant 1, and turns never end.
type gen struct {
	rng   *rand.Rand
	n     int
	end   time.Duration
	bias  float64
	turns bool

	holder  int           // who voices the floor
	roomBy  int           // who voices the room's current spurt (-1: unvoiced)
	turnEnd time.Duration // when the holder's turn may end (turns only)

	floorStart, roomStart time.Duration
	out                   Schedule
}

func newGen(rng *rand.Rand, n int, d time.Duration, bias float64, turns bool) *gen {
	g := &gen{rng: rng, n: n, end: d, bias: bias, turns: turns, roomBy: -1, out: make(Schedule, n)}
	if !turns {
		g.roomBy = 1
	}
	g.turnEnd = g.turnLength()
	return g
}

func (g *gen) exp(mean time.Duration) time.Duration {
	return time.Duration(g.rng.ExpFloat64() * float64(mean))
}

func (g *gen) turnLength() time.Duration { return MinTurn + g.exp(MeanTurn) }

func talksFloor(st int) bool { return st == stFloor || st == stDouble }
func talksRoom(st int) bool  { return st == stRoom || st == stDouble }

func (g *gen) run() {
	st, t := stSilence, time.Duration(0)
	for t < g.end {
		var dur time.Duration
		switch st {
		case stFloor, stRoom:
			dur = g.exp(MeanSingleTalk)
		case stDouble:
			dur = g.exp(MeanDoubleTalk)
		default:
			dur = g.exp(MeanMutualSilence)
		}
		next := t + dur
		if next > g.end {
			next = g.end
		}
		nst := g.next(st, next)
		g.transition(st, nst, next)
		st, t = nst, next
	}
	g.transition(st, stSilence, g.end) // close open spurts at the end
}

// next draws the state after st, which ends at t.
func (g *gen) next(st int, t time.Duration) int {
	switch st {
	case stFloor, stRoom:
		if g.rng.Float64() < PDoubleTalk {
			return stDouble
		}
		return stSilence
	case stDouble:
		if g.rng.Float64() < g.bias {
			return stFloor // the room stops, the floor talks on
		}
		return stRoom
	default:
		if g.turns && t >= g.turnEnd {
			g.passFloor(t)
		}
		if g.rng.Float64() < g.bias {
			return stFloor
		}
		return stRoom
	}
}

// passFloor gives the floor to another participant (only in mutual silence).
func (g *gen) passFloor(t time.Duration) {
	if g.n > 1 {
		h := g.rng.IntN(g.n - 1)
		if h >= g.holder {
			h++
		}
		g.holder = h
	}
	g.turnEnd = t + g.turnLength()
}

// transition records spurt boundaries between states at time t.
func (g *gen) transition(from, to int, t time.Duration) {
	if talksFloor(from) && !talksFloor(to) {
		g.add(g.holder, g.floorStart, t)
	}
	if talksRoom(from) && !talksRoom(to) {
		if g.roomBy >= 0 {
			g.add(g.roomBy, g.roomStart, t)
		}
	}
	if !talksFloor(from) && talksFloor(to) {
		g.floorStart = t
	}
	if !talksRoom(from) && talksRoom(to) {
		g.roomStart = t
		if g.turns {
			g.roomBy = g.pickRoom()
		}
	}
}

// pickRoom draws the room's voice: anyone but the holder, or nobody when the
// holder is alone.
func (g *gen) pickRoom() int {
	if g.n < 2 {
		return -1
	}
	r := g.rng.IntN(g.n - 1)
	if r >= g.holder {
		r++
	}
	return r
}

// add appends [start, end) to p, merging with a touching previous spurt.
func (g *gen) add(p int, start, end time.Duration) {
	if end <= start {
		return
	}
	sp := g.out[p]
	if n := len(sp); n > 0 && sp[n-1].End >= start {
		if end > sp[n-1].End {
			sp[n-1].End = end
		}
		return
	}
	g.out[p] = append(sp, Spurt{Start: start, End: end})
}
