package loadtest

import (
	"encoding/json"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// randomSplit fills n seconds of random figures into a "combined" partial
// and splits every count and sample between two agents' partials.
func randomSplit(t *testing.T, n int, plan Plan) (a, b, all *Partial) {
	t.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	start := time.Date(2026, 12, 31, 23, 59, 0, 0, time.UTC)
	a = &Partial{Agent: "a", Index: 0, Of: 2, Plan: plan, Start: start, DurationMs: float64(n) * 1000, Stopped: "profile_done"}
	b = &Partial{Agent: "b", Index: 1, Of: 2, Plan: plan, Start: start.Add(3 * time.Millisecond), DurationMs: float64(n-1)*1000 + 500, Stopped: "profile_done"}
	all = &Partial{Agent: "all", Plan: plan, Start: start, DurationMs: float64(n) * 1000, Stopped: "profile_done"}
	fill := func(wa, wb, wall *window) {
		for range rng.IntN(5) {
			w := []*window{wa, wb}[rng.IntN(2)]
			for _, x := range []*window{w, wall} {
				x.callsStarted++
			}
		}
		for range rng.IntN(30) {
			w := []*window{wa, wb}[rng.IntN(2)]
			ok := rng.IntN(10) > 0
			v := rng.ExpFloat64() * 80
			for _, x := range []*window{w, wall} {
				x.setups.Attempted++
				if ok {
					x.setups.Admitted++
					x.setup.Add(v)
				} else {
					x.setups.Refused.Capacity++
				}
			}
		}
		for range 200 + rng.IntN(200) {
			w := []*window{wa, wb}[rng.IntN(2)]
			d, lost, gap, jit := 5+rng.ExpFloat64()*20, rng.IntN(50) == 0, 20+rng.Float64()*200, rng.Float64()*5
			for _, x := range []*window{w, wall} {
				x.sent++
				x.expected++
				if !lost {
					x.received++
					x.delay.Add(d)
					x.jitterSum += jit
					x.jitterN++
					x.jitterMax = max(x.jitterMax, jit)
					x.maxGap = max(x.maxGap, gap)
				}
			}
			if rng.IntN(40) == 0 {
				for _, x := range []*window{w, wall} {
					x.speaker.Add(d * 10)
					x.firstAudio.Add(d * 3)
				}
			}
			if rng.IntN(25) == 0 { // sessions lost, re-joins, late joiners
				silence, dropped := 20+rng.ExpFloat64()*300, rng.IntN(2)
				for _, x := range []*window{w, wall} {
					x.sessionsLost++
					x.callsDropped += dropped
					x.rejoinSilence.Add(silence)
					x.late.Joined++
					x.late.StreamsExpected += 3
					x.late.StreamsDecrypted += 2
					x.late.StreamsUndecryptable++
					x.late.StreamsAfterRollover += 2
					x.late.DecryptFailures += 5
				}
			}
			if rng.IntN(20) == 0 { // feedback and video
				layer := rng.IntN(3)
				for _, x := range []*window{w, wall} {
					x.recovered++
					x.fb.NACKs++
					x.fb.Video.Recovered++
					x.video.SenderSeconds++
					x.video.Layers[layer]++
					x.video.BytesSent += 1200
					x.video.PacketsReceived++
					x.video.BytesReceived += 1100
					x.video.ReceivedByLayer[layer]++
				}
			}
		}
	}
	for s := range n {
		var wa, wb, wall classWindows
		last := s == n-1 // b's run was a second shorter: a alone
		for c := range 2 {
			if last {
				fill(&wa[c], &wa[c], &wall[c])
			} else {
				fill(&wa[c], &wb[c], &wall[c])
			}
		}
		ua, ub := rng.IntN(10), rng.IntN(10)
		if last {
			ub = 0
		}
		a.Seconds = append(a.Seconds, PartialSecond{T: s, CallsUp: ua, ParticipantsUp: 2 * ua, OneToOne: wa[0].data(), Group: wa[1].data(),
			TickLagSumNs: 1000, TickLagN: 1, GeneratorCPUPct: 10})
		if !last {
			b.Seconds = append(b.Seconds, PartialSecond{T: s, CallsUp: ub, ParticipantsUp: 2 * ub, OneToOne: wb[0].data(), Group: wb[1].data(),
				TickLagSumNs: 3000, TickLagN: 1, GeneratorCPUPct: 30})
		}
		all.Seconds = append(all.Seconds, PartialSecond{T: s, CallsUp: ua + ub, ParticipantsUp: 2 * (ua + ub), OneToOne: wall[0].data(), Group: wall[1].data()})
	}
	// What b's calls reported while closing: totals only.
	var tb, tall classWindows
	for c := range 2 {
		fill(&tb[c], &tb[c], &tall[c])
	}
	b.Tail = WindowPair{OneToOne: tb[0].data(), Group: tb[1].data()}
	all.Tail = WindowPair{OneToOne: tall[0].data(), Group: tall[1].data()}
	return a, b, all
}

func mergePlan() Plan {
	p := Plan{Profile: Profile{Kind: ProfileRamp, Ramp: Ramp{Start: 1, Step: 1, StepDuration: Duration(2 * time.Second), MaxSteps: 3}},
		Targets: Targets{DelayP95: Duration(100 * time.Millisecond), LossPct: 5}}
	return p.WithDefaults()
}

// Merging two agents' partials gives what the combined counts give: the
// same per-second and total figures, percentiles included, the same ramp
// steps and knee.
func TestMergeEqualsCombinedCounts(t *testing.T) {
	a, b, all := randomSplit(t, 6, mergePlan())
	got, want := Merge(a, b), Merge(all)
	require.Len(t, got.Seconds, 6)
	for i := range got.Seconds {
		g, w := got.Seconds[i], want.Seconds[i]
		require.Equal(t, i, g.T)
		require.Equal(t, w.All, g.All, "second %d", i)
		require.Equal(t, w.OneToOne, g.OneToOne, "second %d", i)
		require.Equal(t, w.Group, g.Group, "second %d", i)
		require.Equal(t, w.CallsUp, g.CallsUp)
		require.Equal(t, w.ParticipantsUp, g.ParticipantsUp)
		require.Equal(t, w.Phase, g.Phase)
	}
	require.InDelta(t, want.Totals.All.JitterMs, got.Totals.All.JitterMs, 1e-9)
	require.Equal(t, want.Totals, got.Totals)
	require.Equal(t, want.Steps, got.Steps)
	require.Len(t, got.Steps, 3)
	require.Equal(t, want.Knee, got.Knee)
	require.Equal(t, want.Verdict, got.Verdict)
	require.Greater(t, got.Totals.All.DelayMs.Count, uint64(1000))
	require.Equal(t, got.Start, a.Start, "the earliest agent's start")
	require.Equal(t, 6000.0, got.DurationMs)

	// Per-second merge: counters add, the generator's CPU is the busiest
	// agent's, tick lag the weighted mean.
	require.Equal(t, a.Seconds[0].OneToOne.Sent+b.Seconds[0].OneToOne.Sent, got.Seconds[0].OneToOne.PacketsSent)
	require.Positive(t, got.Totals.All.Video.ReceivedKbps)
	require.Positive(t, got.Totals.All.Feedback.NACKs)
	require.Positive(t, got.Totals.All.PacketsRecovered)
	require.Positive(t, got.Totals.All.SessionsLost)
	require.Positive(t, got.Totals.All.CallsDropped)
	require.Positive(t, got.Totals.All.DroppedCallsPct)
	require.Greater(t, got.Totals.All.RejoinSilenceMs.Count, uint64(5))
	require.Positive(t, got.Totals.All.LateJoin.StreamsUndecryptable)
	require.Equal(t, 30.0, got.Seconds[0].GeneratorCPUPct)
	require.Equal(t, 0.002, got.Seconds[0].TickLagMs)
	require.Equal(t, 10.0, got.Seconds[5].GeneratorCPUPct, "only a ran second 5")
	require.Len(t, got.Agents, 2)
	require.Equal(t, "a", got.Agents[0].ID)

	// The same through JSON: the partials carry the raw sketch buckets.
	var a2, b2 Partial
	for _, pair := range []struct{ in, out *Partial }{{a, &a2}, {b, &b2}} {
		j, err := json.Marshal(pair.in)
		require.NoError(t, err)
		require.NoError(t, json.Unmarshal(j, pair.out))
	}
	require.Equal(t, got.Totals, Merge(&a2, &b2).Totals)
	require.Equal(t, got.Seconds, Merge(&a2, &b2).Seconds)
}

// Percentiles from merged sketches are those of one sketch holding every
// sample, and within the sketch's precision of the exact ones.
func TestMergedSketchPercentiles(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	var x, y, both Sketch
	var vals []float64
	for i := range 20000 {
		v := rng.ExpFloat64() * 40
		vals = append(vals, v)
		both.Add(v)
		if i%3 == 0 {
			x.Add(v)
		} else {
			y.Add(v)
		}
	}
	j, err := json.Marshal(x)
	require.NoError(t, err)
	var x2 Sketch
	require.NoError(t, json.Unmarshal(j, &x2))
	require.Equal(t, x, x2)
	x2.Merge(&y)
	require.Equal(t, both.Percentiles(), x2.Percentiles())
	exact := exactQuantile(vals, 0.95)
	require.InEpsilon(t, exact, x2.Quantile(0.95), 0.03)

	var bad Sketch
	require.Error(t, json.Unmarshal([]byte(`{"n":3,"buckets":[[1,1]]}`), &bad))
	require.Error(t, json.Unmarshal([]byte(`{"n":1,"buckets":[[4000,1]]}`), &bad))
}

func exactQuantile(v []float64, q float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[int(q*float64(len(s)))-1]
}

func TestMergeNothing(t *testing.T) {
	require.Nil(t, Merge())
	require.Nil(t, Merge(nil, nil))
	a, _, _ := randomSplit(t, 2, mergePlan())
	r := Merge(nil, a)
	require.NotNil(t, r)
	require.Len(t, r.Agents, 1)
}

// A partial from an agent older than the session and late-join figures
// (no such keys) still merges, as zeros, with a newer one's.
func TestMergeOlderPartial(t *testing.T) {
	a, b, _ := randomSplit(t, 3, mergePlan())
	j, err := json.Marshal(b)
	require.NoError(t, err)
	var raw map[string]any
	require.NoError(t, json.Unmarshal(j, &raw))
	stripped := 0
	var strip func(v any)
	strip = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			for _, k := range []string{"calls_dropped", "sessions_lost", "rejoin_silence", "late_join"} {
				if _, ok := x[k]; ok {
					delete(x, k)
					stripped++
				}
			}
			for _, c := range x {
				strip(c)
			}
		case []any:
			for _, c := range x {
				strip(c)
			}
		}
	}
	strip(raw)
	require.Positive(t, stripped, "b had the new figures")
	old, err := json.Marshal(raw)
	require.NoError(t, err)
	var b2 Partial
	require.NoError(t, json.Unmarshal(old, &b2))

	got := Merge(a, &b2)
	alone := Merge(a)
	require.Equal(t, alone.Totals.All.SessionsLost, got.Totals.All.SessionsLost, "b's count as none")
	require.Equal(t, alone.Totals.All.RejoinSilenceMs, got.Totals.All.RejoinSilenceMs)
	require.Equal(t, alone.Totals.All.LateJoin, got.Totals.All.LateJoin)
	require.Equal(t, Merge(a, b).Totals.All.PacketsSent, got.Totals.All.PacketsSent, "the rest of b merges as before")
}
