package conductor

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/internal/talkspurt"
	"github.com/callrelay/callrelay/protocol"
)

// This file drives SpeakerDetector with scripted speech: a talkspurt.Schedule
// (who talks when) becomes, per participant and forwarder tick, the audio
// summary a forwarder would publish, and the switches the detector makes are
// compared with the speaker the schedule says should be dominant.
//
// The simulated audio (per 20 ms frame, 5 frames per 100 ms tick):
//   - a frame is voiced when its midpoint falls in a spurt: 60-120 byte
//     payload, level = the participant's voice level (25-40 -dBov) ± 3, V=1;
//   - a tick with any voiced frame sends all 5 packets (the encoder is
//     active); its unvoiced frames are 20-40 bytes at 70-90 -dBov, V=0;
//   - a tick without voice is DTX: one 3-byte packet at level 127 with
//     probability 1/4, else no packet and no observation at all;
//   - 1 % of packets are lost;
//   - each participant sits on a forwarder with its own tick phase and ±3 ms
//     of jitter; observations reach the conductor 5-25 ms after the tick, and
//     3 % of them 130 ms late (after the next decision);
//   - the conductor decides every 100 ms at its own phase.
//
// Overrides: a cough is 150 ms of loud (5-10 -dBov), voice-flagged audio;
// a liar claims level 0 with V=1 and an onset on every tick while sending a
// few tiny packets.

// simLiar describes a participant whose claimed levels are lies.
type simLiar struct {
	packets, payload int // per tick, per packet
}

type speechSim struct {
	sched  talkspurt.Schedule
	end    time.Duration
	levels []float64         // per participant, -dBov while speaking
	coughs [][]time.Duration // per participant, cough start times
	liars  map[int]simLiar
	seed   uint64
}

type simObs struct {
	arrive time.Duration
	end    time.Duration
	o      Observation
}

// simSwitch is one change of the detector's dominant speaker.
type simSwitch struct {
	at  time.Duration
	who int // participant index, -1 for nobody
}

type simResult struct {
	switches []simSwitch
	det      *SpeakerDetector
	ids      []protocol.ID
	base     time.Time
}

const coughLen = 150 * time.Millisecond

func simIDs(n int) []protocol.ID {
	ids := make([]protocol.ID, n)
	for i := range ids {
		ids[i][0], ids[i][15] = 0xc0, byte(i+1)
	}
	return ids
}

func (s *speechSim) coughing(p int, t time.Duration) bool {
	if p >= len(s.coughs) {
		return false
	}
	for _, c := range s.coughs[p] {
		if t >= c && t < c+coughLen {
			return true
		}
	}
	return false
}

// observe builds participant p's observation for the tick [a, b); ok is
// false when the participant sent nothing.
func (s *speechSim) observe(rng *rand.Rand, p int, a, b time.Duration, prevVoiced bool) (o Observation, voiced, ok bool) {
	o.Tick = b - a
	if l, liar := s.liars[p]; liar {
		o.Packets, o.VoicePackets, o.PayloadBytes = l.packets, l.packets, l.packets*l.payload
		o.MeanLevel, o.MaxLevel, o.Onset = 0, 0, true
		return o, true, true
	}
	const frames = 5
	frame := o.Tick / frames
	var levels [frames]float64
	nv, cough := 0, false
	for i := range frames {
		mid := a + time.Duration(i)*frame + frame/2
		switch {
		case s.coughing(p, mid):
			levels[i], cough = 5+5*rng.Float64(), true
			nv++
		case s.sched.Talking(p, mid):
			levels[i] = s.levels[p] + 6*rng.Float64() - 3
			nv++
		default:
			levels[i] = -1
		}
	}
	if nv == 0 {
		if rng.IntN(4) != 0 {
			return o, false, false
		}
		o.Packets, o.PayloadBytes, o.MeanLevel, o.MaxLevel = 1, 3, 127, 127
		return o, false, true
	}
	sum, maxL := 0.0, 127.0
	for i := range frames {
		if rng.Float64() < 0.01 {
			continue // lost
		}
		l := levels[i]
		if l < 0 {
			l = 70 + 20*rng.Float64()
			o.PayloadBytes += 20 + rng.IntN(21)
		} else {
			o.VoicePackets++
			if cough && l < 15 {
				o.PayloadBytes += 100 + rng.IntN(51)
			} else {
				o.PayloadBytes += 60 + rng.IntN(61)
			}
		}
		o.Packets++
		sum += l
		maxL = math.Min(maxL, l)
	}
	if o.Packets == 0 {
		return o, false, false
	}
	o.MeanLevel = uint8(math.Round(sum / float64(o.Packets)))
	o.MaxLevel = uint8(math.Round(maxL))
	o.Onset = !prevVoiced && o.MaxLevel < 45
	return o, true, true
}

// run simulates the call and records the detector's switches.
func (s *speechSim) run(t testing.TB, cfg SpeakerConfig) simResult {
	t.Helper()
	n := len(s.sched)
	rng := rand.New(rand.NewPCG(s.seed, 0x5eed))
	if s.levels == nil {
		s.levels = make([]float64, n)
		for p := range s.levels {
			s.levels[p] = 25 + 15*rng.Float64()
		}
	}
	ids := simIDs(n)
	const tick = 100 * time.Millisecond
	var evs []simObs
	for p := range n {
		phase := time.Duration(rng.IntN(100)) * time.Millisecond
		prev := false
		for end := phase + tick; end <= s.end; end += tick {
			at := end + time.Duration(rng.IntN(7)-3)*time.Millisecond
			o, voiced, ok := s.observe(rng, p, at-tick, at, prev)
			prev = voiced
			if !ok {
				continue
			}
			o.Participant = ids[p]
			delay := time.Duration(5+rng.IntN(21)) * time.Millisecond
			if rng.Float64() < 0.03 {
				delay = 130 * time.Millisecond
			}
			evs = append(evs, simObs{arrive: at + delay, end: at, o: o})
		}
	}
	slices.SortStableFunc(evs, func(a, b simObs) int { return int(a.arrive - b.arrive) })

	base := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	det := NewSpeakerDetector(cfg)
	res := simResult{det: det, ids: ids, base: base}
	decidePhase := time.Duration(rng.IntN(100)) * time.Millisecond
	next := 0
	for now := decidePhase; now <= s.end; now += tick {
		for ; next < len(evs) && evs[next].arrive <= now; next++ {
			det.Observe(base.Add(evs[next].end), evs[next].o)
		}
		dom, changed := det.Decide(base.Add(now))
		if changed {
			res.switches = append(res.switches, simSwitch{at: now, who: slices.Index(ids, dom)})
		}
	}
	return res
}

// Oracle parameters: a participant's spurts less than oracleJoin apart form
// one utterance (speech has short gaps); utterances shorter than
// oracleMinUtterance are backchannels, interjections or coughs, which the
// detector is meant to ignore, and never make anyone the expected speaker.
const (
	oracleJoin         = 300 * time.Millisecond
	oracleMinUtterance = 700 * time.Millisecond
)

// utterances joins each participant's spurts into utterances and drops the
// short ones.
func utterances(s talkspurt.Schedule) talkspurt.Schedule {
	out := make(talkspurt.Schedule, len(s))
	for p, sp := range s {
		var cur []talkspurt.Spurt
		for _, x := range sp {
			if n := len(cur); n > 0 && x.Start-cur[n-1].End < oracleJoin {
				cur[n-1].End = x.End
				continue
			}
			cur = append(cur, x)
		}
		for _, u := range cur {
			if u.End-u.Start >= oracleMinUtterance {
				out[p] = append(out[p], u)
			}
		}
	}
	return out
}

// expectedSpeaker is the oracle's idea of who is dominant at t: of the
// participants in an utterance (see utterances), the one whose utterance
// started first; when nobody is, whoever was expected before (-1 before
// anyone spoke).
func expectedSpeaker(u talkspurt.Schedule, t time.Duration, prev int) int {
	who, start := -1, time.Duration(math.MaxInt64)
	for p := range u {
		if sp, ok := u.SpurtAt(p, t); ok && sp.Start < start {
			who, start = p, sp.Start
		}
	}
	if who < 0 {
		return prev
	}
	return who
}

// segment is a maximal run of one expected speaker.
type segment struct {
	who        int
	start, end time.Duration
}

const simGrid = 10 * time.Millisecond

func expectedSegments(s talkspurt.Schedule, end time.Duration) []segment {
	var segs []segment
	cur := -1
	u := utterances(s)
	for t := time.Duration(0); t < end; t += simGrid {
		e := expectedSpeaker(u, t, cur)
		if e != cur {
			if n := len(segs); n > 0 {
				segs[n-1].end = t
			}
			if e >= 0 {
				segs = append(segs, segment{who: e, start: t})
			}
			cur = e
		}
	}
	if n := len(segs); n > 0 {
		segs[n-1].end = end
	}
	return segs
}

// simMetrics compares a run's switches with the schedule.
type simMetrics struct {
	latencies []time.Duration // per measured segment
	missed    int             // measured segments never switched to
	false_    int             // switches to someone not expected around then
	switches  int
}

// Measurement parameters (see TestSpeakerScenarioGroup).
const (
	measureMinSegment = 1500 * time.Millisecond // segments shorter than this are not measured
	falseLookBack     = 1000 * time.Millisecond // a switch may lag the expected speaker by this much
	falseLookAhead    = 300 * time.Millisecond  // or anticipate it by this much
)

func measure(s talkspurt.Schedule, end time.Duration, sw []simSwitch) simMetrics {
	segs := expectedSegments(s, end)
	m := simMetrics{switches: len(sw)}
	dominantAt := func(t time.Duration) int {
		who := -1
		for _, x := range sw {
			if x.at > t {
				break
			}
			who = x.who
		}
		return who
	}
	for _, g := range segs {
		if g.end-g.start < measureMinSegment {
			continue
		}
		if dominantAt(g.start) == g.who {
			m.latencies = append(m.latencies, 0)
			continue
		}
		i := slices.IndexFunc(sw, func(x simSwitch) bool { return x.who == g.who && x.at >= g.start && x.at < g.end })
		if i < 0 {
			m.missed++
			continue
		}
		m.latencies = append(m.latencies, sw[i].at-g.start)
	}
	for _, x := range sw {
		ok := false
		for _, g := range segs {
			if g.who == x.who && g.start <= x.at+falseLookAhead && g.end >= x.at-falseLookBack {
				ok = true
				break
			}
		}
		if !ok {
			m.false_++
		}
	}
	return m
}

func percentile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[max(i, 0)]
}

// sec builds spurts from second pairs: sec(1, 2, 3, 4.5) = [1s,2s) [3s,4.5s).
func sec(v ...float64) []talkspurt.Spurt {
	var out []talkspurt.Spurt
	for i := 0; i+1 < len(v); i += 2 {
		out = append(out, talkspurt.Spurt{
			Start: time.Duration(v[i] * float64(time.Second)),
			End:   time.Duration(v[i+1] * float64(time.Second)),
		})
	}
	return out
}

func whos(sw []simSwitch) []int {
	out := make([]int, len(sw))
	for i, x := range sw {
		out[i] = x.who
	}
	return out
}

// TestSpeakerScenarioTurnTaking: clean turns (with and without a gap, and a
// handover with 300 ms of overlap) switch once each, within 1.0 s of the new
// speaker becoming the expected one. The algorithm's bound is 0.9 s (7
// speech ticks plus up to two ticks of grid and decision phase).
func TestSpeakerScenarioTurnTaking(t *testing.T) {
	sched := talkspurt.Schedule{
		sec(0.5, 6, 18.8, 25.2),
		sec(6.4, 12, 24.9, 31),
		sec(12, 18),
	}
	var all []time.Duration
	for seed := range uint64(30) {
		sim := &speechSim{sched: sched, end: 33 * time.Second, seed: seed}
		res := sim.run(t, DefaultSpeakerConfig())
		require.Equal(t, []int{0, 1, 2, 0, 1}, whos(res.switches), "seed %d", seed)
		m := measure(sched, sim.end, res.switches)
		require.Zero(t, m.missed, "seed %d", seed)
		require.Zero(t, m.false_, "seed %d", seed)
		all = append(all, m.latencies...)
	}
	t.Logf("turn-taking latency over 30 seeds: min %v, p50 %v, p95 %v, max %v",
		slices.Min(all), percentile(all, 0.5), percentile(all, 0.95), slices.Max(all))
	require.LessOrEqual(t, slices.Max(all), time.Second)
}

// TestSpeakerScenarioOverlap: a second speaker talking over the dominant one
// takes over only when it persists (about 2 s) and is louder or more active.
func TestSpeakerScenarioOverlap(t *testing.T) {
	cases := []struct {
		name   string
		sched  talkspurt.Schedule
		levels []float64
		want   []int
		after  float64 // the switch to 1 comes this many seconds after 1 starts (±0.4 s)
	}{
		{"louder and persistent", talkspurt.Schedule{sec(0.5, 14), sec(4, 14)}, []float64{35, 22}, []int{0, 1}, 2.0},
		{"more active and persistent", talkspurt.Schedule{
			sec(0.5, 4.6, 4.95, 6, 6.35, 7.4, 7.75, 8.8, 9.15, 10.3, 10.65, 11.8, 12.15, 14), sec(4, 14)}, []float64{30, 30}, []int{0, 1}, 2.0},
		{"as loud, as active", talkspurt.Schedule{sec(0.5, 14), sec(4, 14)}, []float64{30, 30}, []int{0}, 0},
		{"louder but short", talkspurt.Schedule{sec(0.5, 14), sec(4, 5.5, 8, 9.5)}, []float64{35, 20}, []int{0}, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var lat []time.Duration
			for seed := range uint64(20) {
				sim := &speechSim{sched: c.sched, end: 14 * time.Second, levels: c.levels, seed: seed}
				res := sim.run(t, DefaultSpeakerConfig())
				require.Equal(t, c.want, whos(res.switches), "seed %d", seed)
				if len(c.want) > 1 {
					lat = append(lat, res.switches[1].at-c.sched[1][0].Start)
				}
			}
			if len(lat) > 0 {
				t.Logf("overlap takeover after %v..%v", slices.Min(lat), slices.Max(lat))
				want := time.Duration(c.after * float64(time.Second))
				require.GreaterOrEqual(t, slices.Min(lat), want-400*time.Millisecond)
				require.LessOrEqual(t, slices.Max(lat), want+400*time.Millisecond)
			}
		})
	}
}

// TestSpeakerScenarioInterjection: backchannels of up to 600 ms, louder than
// the dominant speaker, over its speech, in a 300 ms gap and in a 1.2 s
// pause, never switch.
func TestSpeakerScenarioInterjection(t *testing.T) {
	sched := talkspurt.Schedule{
		sec(0.5, 15, 15.3, 16, 17.2, 25),
		sec(3, 3.4, 6, 6.6, 9.05, 9.65, 12, 12.5, 14.9, 15.5, 16.2, 16.8, 20, 20.6),
		sec(21.5, 22.1),
	}
	for seed := range uint64(30) {
		sim := &speechSim{sched: sched, end: 25 * time.Second, levels: []float64{35, 15, 25}, seed: seed}
		res := sim.run(t, DefaultSpeakerConfig())
		require.Equal(t, []int{0}, whos(res.switches), "seed %d: %v", seed, res.switches)
	}
}

// TestSpeakerScenarioCough: coughs (150 ms, very loud) over speech, in a
// pause, after everyone fell silent, and in a call nobody has spoken in yet,
// never switch or elect.
func TestSpeakerScenarioCough(t *testing.T) {
	talking := talkspurt.Schedule{sec(0.5, 5, 7, 12), nil, nil}
	silent := talkspurt.Schedule{nil, nil, nil}
	for seed := range uint64(30) {
		sim := &speechSim{sched: talking, end: 20 * time.Second, seed: seed,
			coughs: [][]time.Duration{nil, {6 * time.Second, 9 * time.Second}, {9050 * time.Millisecond, 15 * time.Second, 15300 * time.Millisecond}}}
		res := sim.run(t, DefaultSpeakerConfig())
		require.Equal(t, []int{0}, whos(res.switches), "seed %d", seed)

		sim = &speechSim{sched: silent, end: 10 * time.Second, seed: seed,
			coughs: [][]time.Duration{{2 * time.Second}, {5 * time.Second, 5400 * time.Millisecond}, nil}}
		res = sim.run(t, DefaultSpeakerConfig())
		require.Empty(t, res.switches, "seed %d", seed)
	}
}

// TestSpeakerScenarioSilence: a silent call (DTX only) has no dominant
// speaker, no switches and nothing discounted; after everyone falls silent
// the last dominant speaker stays.
func TestSpeakerScenarioSilence(t *testing.T) {
	sim := &speechSim{sched: talkspurt.Schedule{nil, nil, nil}, end: 30 * time.Second, seed: 1}
	res := sim.run(t, DefaultSpeakerConfig())
	require.Empty(t, res.switches)
	require.True(t, res.det.Dominant().IsZero())
	require.Zero(t, res.det.Discounted())
	require.Empty(t, res.det.Recent(res.base.Add(sim.end), time.Hour, 8, nil))

	sim = &speechSim{sched: talkspurt.Schedule{sec(1, 4), nil, sec(2, 2.5)}, end: 30 * time.Second, seed: 2}
	res = sim.run(t, DefaultSpeakerConfig())
	require.Equal(t, []int{0}, whos(res.switches))
	require.Equal(t, res.ids[0], res.det.Dominant())
	require.False(t, res.det.Active(res.ids[0]))
}

// TestSpeakerScenarioLiar: participants claiming to shout (level 0, V=1,
// onset) with streams that cannot carry speech never become dominant, never
// count as recent speakers, and every one of their ticks is discounted.
func TestSpeakerScenarioLiar(t *testing.T) {
	liars := []simLiar{
		{packets: 1, payload: 4},   // one tiny packet per tick
		{packets: 5, payload: 4},   // the right rate, DTX-sized payloads
		{packets: 2, payload: 100}, // real-sized payloads, too few
	}
	for i, l := range liars {
		sched := talkspurt.TwoParty(rand.New(rand.NewPCG(uint64(i), 1)), 60*time.Second)
		sched = append(sched, nil)
		sim := &speechSim{sched: sched, end: 60 * time.Second, seed: uint64(i), liars: map[int]simLiar{2: l}}
		res := sim.run(t, DefaultSpeakerConfig())
		require.NotEmpty(t, res.switches)
		for _, x := range res.switches {
			require.NotEqual(t, 2, x.who, "liar %+v took the floor", l)
		}
		now := res.base.Add(sim.end)
		require.NotContains(t, res.det.Recent(now, time.Hour, 8, nil), res.ids[2])
		require.False(t, res.det.Active(res.ids[2]))
		// The liar sends every tick, 600 in a minute; the honest ones' ticks
		// are never discounted.
		require.InDelta(t, 600, float64(res.det.Discounted()), 2, "liar %+v", l)
		t.Logf("liar %+v: %d ticks discounted, switches %v", l, res.det.Discounted(), whos(res.switches))
	}
}

// TestSpeakerScenarioGroup runs 20 seeded 60 s conversations among 6
// participants drawn from talkspurt.Group and measures, against the oracle
// (expectedSpeaker):
//
//   - latency: for every stretch of at least 1.5 s in which one participant
//     is the expected speaker, the time from its start to the switch to that
//     participant (0 if the detector was there already);
//   - missed: such stretches never switched to;
//   - false switches: switches to a participant who was not the expected
//     speaker within 1 s before or 0.3 s after the switch.
//
// Bounds asserted: p50 <= 0.9 s, p95 <= 1.2 s, false switches <= 0.5 per
// minute, missed <= 3 % of the measured stretches. Measured on these seeds:
// p50 0.75 s, p95 1.0 s, max 2.1 s, 0.15 false switches per minute, 2 of
// 191 missed. Over 160 seeds (8 batches of 20) p50 was 0.75-0.77 s, p95
// 0.97-1.17 s and false switches 0.1-0.3 per minute. The latency tail (up to 2-4 s) comes from starts the
// rules deliberately treat as doubtful: a first utterance barely over 0.7 s
// that the previous speaker talks over, or that is followed by a pause, is
// only believed once the speaker carries on. False switches are mostly
// utterances of 0.65-0.7 s (long enough for 7 speech ticks, below the
// oracle's 0.7 s) and two people starting at the same moment.
func TestSpeakerScenarioGroup(t *testing.T) {
	const (
		seeds = 20
		n     = 6
		d     = 60 * time.Second
	)
	var lat []time.Duration
	var missed, falses, switches, measured int
	for seed := range uint64(seeds) {
		sched := talkspurt.Group(rand.New(rand.NewPCG(seed, 42)), n, d)
		sim := &speechSim{sched: sched, end: d, seed: seed}
		res := sim.run(t, DefaultSpeakerConfig())
		m := measure(sched, d, res.switches)
		lat = append(lat, m.latencies...)
		missed += m.missed
		falses += m.false_
		switches += m.switches
		measured += len(m.latencies) + m.missed
	}
	minutes := float64(seeds) * d.Minutes()
	p50, p95, mx := percentile(lat, 0.5), percentile(lat, 0.95), slices.Max(lat)
	t.Logf("group: %d calls × %v, %d participants: %d measured stretches, %d switches (%.1f/min)",
		seeds, d, n, measured, switches, float64(switches)/minutes)
	t.Logf("group: switch latency p50 %v, p95 %v, max %v; missed %d; false switches %d (%.2f/min)",
		p50, p95, mx, missed, falses, float64(falses)/minutes)
	require.LessOrEqual(t, p50, 900*time.Millisecond)
	require.LessOrEqual(t, p95, 1200*time.Millisecond)
	require.LessOrEqual(t, float64(falses)/minutes, 0.5)
	require.LessOrEqual(t, float64(missed), 0.03*float64(measured))
}
