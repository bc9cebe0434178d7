package loadtest

import (
	"math"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

func spikePlan() Profile {
	return Plan{Profile: Profile{Kind: ProfileSpike, Spike: Spike{
		Base: 1, Peak: 21, Lead: Duration(10 * time.Second), RampUp: Duration(20 * time.Second),
		Hold: Duration(10 * time.Second), Decay: Duration(10 * time.Second), Tail: Duration(5 * time.Second)}}}.WithDefaults().Profile
}

func TestSpikeShape(t *testing.T) {
	p := spikePlan()
	require.Equal(t, 55*time.Second, p.Length())
	for _, tc := range []struct {
		at    time.Duration
		rate  float64
		phase string
	}{
		{0, 1, "base"},
		{9 * time.Second, 1, "base"},
		{10 * time.Second, 1, "rise"},
		{20 * time.Second, 11, "rise"}, // half way up
		{30 * time.Second, 21, "hold"},
		{39 * time.Second, 21, "hold"},
		{45 * time.Second, 11, "decay"},
		{50 * time.Second, 1, "tail"},
		{55 * time.Second, 0, "ending"},
	} {
		r, ph := p.Rate(tc.at)
		require.InDelta(t, tc.rate, r, 1e-9, "rate at %v", tc.at)
		require.Equal(t, tc.phase, ph, "phase at %v", tc.at)
	}
}

func TestSpikeRampUpAtMostAMinute(t *testing.T) {
	p := Plan{Profile: Profile{Kind: ProfileSpike, Spike: Spike{RampUp: Duration(2 * time.Minute)}}}.WithDefaults()
	p.Forwarders = nil
	err := p.Validate()
	require.ErrorIs(t, err, ErrPlan)
	require.Contains(t, err.Error(), "ramp_up")
}

func TestRampSteps(t *testing.T) {
	p := Plan{Profile: Profile{Kind: ProfileRamp, Ramp: Ramp{Start: 2, Step: 3,
		StepDuration: Duration(10 * time.Second), MaxSteps: 4}}}.WithDefaults().Profile
	require.Equal(t, 40*time.Second, p.Length())
	for _, tc := range []struct {
		at    time.Duration
		rate  float64
		phase string
	}{
		{0, 2, "step-0"}, {9999 * time.Millisecond, 2, "step-0"}, {10 * time.Second, 5, "step-1"},
		{25 * time.Second, 8, "step-2"}, {39 * time.Second, 11, "step-3"}, {40 * time.Second, 0, "ending"},
	} {
		r, ph := p.Rate(tc.at)
		require.InDelta(t, tc.rate, r, 1e-9, "rate at %v", tc.at)
		require.Equal(t, tc.phase, ph)
	}
}

// The arrivals follow the profile's rate: counts per phase are within a
// few standard deviations of the integral of the rate.
func TestArrivalsFollowSpike(t *testing.T) {
	p := spikePlan()
	rng := rand.New(rand.NewPCG(1, 2))
	var base, hold int
	const runs = 20
	for range runs {
		for _, at := range Arrivals(rng, p, time.Hour, 1e6) {
			switch _, ph := p.Rate(at); ph {
			case "base":
				base++
			case "hold":
				hold++
			}
		}
	}
	check := func(got int, want float64) {
		t.Helper()
		require.InDelta(t, want, float64(got), 4*math.Sqrt(want), "want about %v", want)
	}
	check(base, runs*1*10)  // 1 call/s for 10 s
	check(hold, runs*21*10) // 21 calls/s for 10 s
}

func TestArrivalsBounded(t *testing.T) {
	p := Plan{Profile: Profile{Kind: ProfileSteady, Steady: Steady{Rate: 100, Duration: Duration(time.Hour)}}}.WithDefaults().Profile
	rng := rand.New(rand.NewPCG(3, 4))
	require.Len(t, Arrivals(rng, p, time.Hour, 50), 50)
	a := Arrivals(rng, p, 2*time.Second, 1e6)
	require.InDelta(t, 200, len(a), 60)
	for _, at := range a {
		require.Less(t, at, 2*time.Second)
	}
}

func TestCallDurationClamped(t *testing.T) {
	c := CallDuration{Mean: Duration(10 * time.Second), Min: Duration(2 * time.Second), Max: Duration(20 * time.Second)}
	rng := rand.New(rand.NewPCG(5, 6))
	var sum time.Duration
	for range 10000 {
		d := c.draw(rng)
		require.GreaterOrEqual(t, d, 2*time.Second)
		require.LessOrEqual(t, d, 20*time.Second)
		sum += d
	}
	mean := sum / 10000
	require.InDelta(t, float64(9*time.Second), float64(mean), float64(1500*time.Millisecond))
}

func TestSketchPercentiles(t *testing.T) {
	var s Sketch
	for i := 1; i <= 10000; i++ {
		s.Add(float64(i) / 10) // 0.1 .. 1000 ms, uniform
	}
	p := s.Percentiles()
	require.EqualValues(t, 10000, p.Count)
	require.InEpsilon(t, 500, p.P50, 0.03)
	require.InEpsilon(t, 950, p.P95, 0.03)
	require.InEpsilon(t, 990, p.P99, 0.03)
	require.InDelta(t, 1000, p.Max, 1e-9)
	require.InDelta(t, 500.05, p.Mean, 1e-6)

	// Merging two halves gives the same as one sketch.
	var a, b Sketch
	for i := 1; i <= 10000; i++ {
		if i%2 == 0 {
			a.Add(float64(i) / 10)
		} else {
			b.Add(float64(i) / 10)
		}
	}
	a.Merge(&b)
	require.Equal(t, s.Percentiles(), a.Percentiles())

	var empty Sketch
	require.Equal(t, Percentiles{}, empty.Percentiles())
	var one Sketch
	one.Add(42)
	require.InEpsilon(t, 42, one.Quantile(0.99), 0.03)
	one.Add(-5) // negative counts as 0
	require.InDelta(t, sketchMin, one.Quantile(0.01), 1e-9)
	one.Add(1e12) // beyond the last bucket: still bounded, max exact
	require.InDelta(t, 1e12, one.Percentiles().Max, 1)
}

func TestJitterRFC3550(t *testing.T) {
	// A constant transit gives no jitter.
	require.Zero(t, jitterUpdate(0, 0))
	// Each step moves 1/16 of the way to |D|.
	require.InDelta(t, 1.0, jitterUpdate(0, 16), 1e-12)
	require.InDelta(t, 1.0, jitterUpdate(0, -16), 1e-12)
	require.InDelta(t, 2+(4-2)/16.0, jitterUpdate(2, 4), 1e-12)
	// Alternating transit 0, 10, 0, 10 ms: |D| is always 10, J converges to 10.
	j := 0.0
	for range 500 {
		j = jitterUpdate(j, 10)
	}
	require.InDelta(t, 10, j, 1e-6)
}

// observe measures loss from frame counters, delay and jitter per stream.
func TestObserveStream(t *testing.T) {
	var w window
	streams := map[uint32]*stream{}
	base := time.Unix(1000, 0)
	for _, n := range []uint32{5, 6, 8, 9, 7, 12} { // 10, 11 lost; 7 late
		sent := base.Add(time.Duration(n) * frameEvery)
		arr := sent.Add(3 * time.Millisecond)
		if n%2 == 1 {
			arr = arr.Add(2 * time.Millisecond)
		}
		observe(&w, streams, 1, frameInfo{n, n, true}, sent.UnixNano(), arr)
	}
	m := w.measures(1)
	require.EqualValues(t, 6, m.PacketsReceived)
	require.EqualValues(t, 8, m.PacketsExpected) // 5..12
	require.EqualValues(t, 2, m.PacketsLost)
	require.InDelta(t, 25, m.LossPct, 1e-9)
	// 7 came after 8 and 9: resent after a NACK (or reordered). Before
	// recovery 3 of 8 were missing.
	require.EqualValues(t, 1, m.PacketsRecovered)
	require.InDelta(t, 37.5, m.RawLossPct, 1e-9)
	require.InDelta(t, 4, m.DelayMs.P50, 1.2)
	require.Greater(t, m.JitterMs, 0.0)
	require.Greater(t, m.MaxGapMs, 0.0)
}

func TestFindKnee(t *testing.T) {
	step := func(i int, met bool, calls, pps float64) Step {
		s := Step{Index: i, Rate: float64(i + 1), MeanCallsUp: calls, Met: met,
			Measures: Measures{RelayPacketsPerSec: pps}}
		if !met {
			s.Broken = []string{"loss_pct"}
		}
		return s
	}
	k := FindKnee([]Step{step(0, true, 10, 1000), step(1, true, 20, 2000), step(2, false, 30, 2900), step(3, true, 40, 4000)}, 2)
	require.True(t, k.Found)
	require.Equal(t, 1, k.Step)
	require.Equal(t, 2, k.BrokeAtStep)
	require.Equal(t, []string{"loss_pct"}, k.BrokenTargets)
	require.InDelta(t, 20, k.ConcurrentCalls, 1e-9)
	require.InDelta(t, 1000, k.PacketsPerSecPerCore, 1e-9)
	require.InDelta(t, 10, k.ConcurrentCallsPerCore, 1e-9)

	k = FindKnee([]Step{step(0, false, 10, 1000)}, 0)
	require.False(t, k.Found)
	require.Equal(t, 0, k.BrokeAtStep)
	require.Zero(t, k.PacketsPerSecPerCore)

	k = FindKnee([]Step{step(0, true, 10, 1000), step(1, true, 20, 2000)}, 0)
	require.True(t, k.Found)
	require.Equal(t, 1, k.Step)
	require.Equal(t, -1, k.BrokeAtStep) // a lower bound
}

func TestEvaluate(t *testing.T) {
	tg := Plan{}.WithDefaults().Targets
	m := Measures{SetupSuccessPct: 100, SetupMs: Percentiles{P95: 20}, LossPct: 0.5, DelayMs: Percentiles{P95: 200}}
	cs := evaluate(m, tg)
	require.Len(t, cs, 4)
	pass := map[string]bool{}
	for _, c := range cs {
		pass[c.Target] = c.Pass
	}
	require.Equal(t, map[string]bool{"setup_success_pct": true, "setup_p95_ms": true, "loss_pct": true, "delay_p95_ms": false}, pass)
}

func TestParsePlan(t *testing.T) {
	p, err := ParsePlan([]byte(`
forwarders: ["127.0.0.1:3478", "[::1]:3479"]
mix: {one_to_one: 0.5, group_min: 3, group_max: 4}
call_duration: {mean: 30s, min: 2s, max: 2m}
profile:
  kind: spike
  spike: {base: 1, peak: 10, ramp_up: 45s}
bounds: {max_duration: 3m, max_concurrent_calls: 20, max_calls: 100}
targets: {setup_p95: 500ms, delay_p95: 100ms}
relay_cores: 2
`))
	require.NoError(t, err)
	require.Len(t, p.Forwarders, 2)
	require.Equal(t, 45*time.Second, p.Profile.Spike.RampUp.D())
	require.Equal(t, 500*time.Millisecond, p.Targets.SetupP95.D())
	_, err = ParsePlan([]byte("forwarders: []\nbogus: 1\n"))
	require.ErrorIs(t, err, ErrPlan)
	_, err = ParsePlan([]byte("call_duration: {mean: soon}\n"))
	require.ErrorIs(t, err, ErrPlan)
}

// Silence frames a conductor holds back are neither loss nor a gap; a
// speech frame lost in the middle of a talk spurt is both.
func TestObserveHeldBackSilence(t *testing.T) {
	var w window
	streams := map[uint32]*stream{}
	base := time.Unix(1000, 0)
	at := func(n uint32) time.Time { return base.Add(time.Duration(n) * frameEvery) }
	// Frames 0..4 speech (speech counters 1..5), 5..54 silence (held
	// back: none arrive), 55..59 speech (6..10) with frame 57 (speech 8)
	// lost.
	for n := uint32(0); n < 60; n++ {
		speech := n < 5 || n >= 55
		if !speech || n == 57 {
			continue
		}
		sc := n + 1
		if n >= 55 {
			sc = n - 49
		}
		observe(&w, streams, 7, frameInfo{n, sc, true}, at(n).UnixNano(), at(n).Add(time.Millisecond))
	}
	m := w.measures(1)
	require.EqualValues(t, 10, m.PacketsExpected, "speech frames 1..10")
	require.EqualValues(t, 1, m.PacketsLost)
	require.InDelta(t, 40, m.MaxGapMs, 1e-6, "the lost frame inside the spurt; not the second of held-back silence")
}

// A plan of group calls only says one_to_one: 0 with its group sizes; a
// plan that says nothing of the mix gets the default.
func TestMixDefaults(t *testing.T) {
	p, err := ParsePlan([]byte("mix: {one_to_one: 0, group_min: 6, group_max: 6}\n"))
	require.NoError(t, err)
	require.Zero(t, p.WithDefaults().Mix.OneToOne)
	p, err = ParsePlan([]byte("bounds: {max_calls: 10}\n"))
	require.NoError(t, err)
	require.Equal(t, 0.7, p.WithDefaults().Mix.OneToOne)
}

// The video mix: a share in 0..1, read from a plan file, drawn per member
// from the call's seed (the same in every agent).
func TestVideoPlan(t *testing.T) {
	p, err := ParsePlan([]byte("video: {share: 0.25}\n"))
	require.NoError(t, err)
	require.Equal(t, 0.25, p.Video.Share)
	p.Video.Share = 1.5
	require.ErrorContains(t, p.WithDefaults().Validate(), "video.share = 1.5, want 0..1")

	require.Nil(t, drawVideo(7, 5, 0), "audio only")
	require.Equal(t, []bool{true, true, true}, drawVideo(7, 3, 1))
	require.Equal(t, drawVideo(9, 50, 0.2), drawVideo(9, 50, 0.2))
	n := 0
	for _, c := range drawVideo(9, 1000, 0.2) {
		if c {
			n++
		}
	}
	require.InDelta(t, 200, n, 50)
}

// Plans set the participants' token lifetime (default an hour) and whether
// they renew their tokens.
func TestTokenLifetimePlan(t *testing.T) {
	p, err := ParsePlan([]byte("bounds: {max_calls: 10}\n"))
	require.NoError(t, err)
	require.Equal(t, time.Hour, p.WithDefaults().TokenLifetime.D())
	require.False(t, p.RefreshTokens)
	p, err = ParsePlan([]byte("token_lifetime: 20s\nrefresh_tokens: true\n"))
	require.NoError(t, err)
	require.Equal(t, 20*time.Second, p.WithDefaults().TokenLifetime.D())
	require.True(t, p.RefreshTokens)
	p.Forwarders = []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:3478")}
	_, p.SigningKey, err = protocol.GenerateSigningKey()
	require.NoError(t, err)
	require.NoError(t, p.WithDefaults().Validate())
	p.TokenLifetime = Duration(time.Second)
	require.ErrorContains(t, p.WithDefaults().Validate(), "token_lifetime = 1s, want 2s..168h0m0s")
}
