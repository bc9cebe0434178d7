package bwe

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// feedQueue feeds the detector groups of two streams, on different
// clocks, that join at different times, while the queue they share grows
// by slope ms per ms (negative: drains) and each arrival gets uniform
// jitter of ±jitterMs. It returns the usage after each sample.
func feedQueue(d *delayDetector, slope, jitterMs float64, untilMs float64, rng *rand.Rand) []usage {
	type stream struct {
		every, start, next, lastArr, lastQueue float64
		started                                bool
	}
	streams := []*stream{{every: 20, start: 0}, {every: 33, start: 500}}
	for _, st := range streams {
		st.next = st.start
	}
	var out []usage
	for {
		var s *stream
		var idx int
		for i, st := range streams {
			if s == nil || st.next < s.next {
				s, idx = st, i
			}
		}
		x := s.next
		if x > untilMs {
			return out
		}
		queue := slope*x + (rng.Float64()*2-1)*jitterMs
		if s.started {
			dMs := queue - s.lastQueue // arrival delta - send delta
			d.sample(idx, x, dMs, simEpoch+int64(x*float64(ms)))
			out = append(out, d.usage)
		}
		s.started, s.lastArr, s.lastQueue = true, x, queue
		s.next += s.every
	}
}

// The pooled fit recovers the slope of a queue shared by two sender clocks
// whose accumulated delays start from different points.
func TestDetectorPooledSlope(t *testing.T) {
	var d delayDetector
	d.init()
	feedQueue(&d, 0.05, 0, 3000, rand.New(rand.NewPCG(1, 1)))
	fit, ok := d.fit(d.lastXMs)
	require.True(t, ok)
	require.InDelta(t, 0.05, fit.slope, 0.001)
	require.Less(t, fit.rawSE, 1e-6, "a clean ramp fits exactly")
}

func TestDetectorUsage(t *testing.T) {
	tests := []struct {
		name     string
		slope    float64 // ms of queue per ms
		jitterMs float64
		want     usage // seen
		never    usage // not seen
	}{
		{"growing queue", 0.1, 0, usageOver, usageUnder},
		{"growing queue with jitter", 0.1, 3, usageOver, usageUnder},
		{"draining queue", -0.1, 0, usageUnder, usageOver},
		{"steady", 0, 0, usageNormal, usageOver},
		{"steady, not draining", 0, 0, usageNormal, usageUnder},
		{"steady with ±10 ms jitter", 0, 10, usageNormal, usageOver},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var d delayDetector
			d.init()
			got := feedQueue(&d, tc.slope, tc.jitterMs, 3000, rand.New(rand.NewPCG(2, 2)))
			require.Contains(t, got, tc.want)
			require.NotContains(t, got, tc.never)
		})
	}
}

// A queue that filled and stays full shows as queueing delay above the
// lowest delay seen, though its slope is flat.
func TestDetectorStandingQueue(t *testing.T) {
	var d delayDetector
	d.init()
	x := 0.0
	for ; x < 500; x += 20 {
		d.sample(0, x, 0, 0)
	}
	require.InDelta(t, 0, d.queueMs, 0.01)
	d.sample(0, x, 150, 0) // the queue fills
	for x += 20; x < 2000; x += 20 {
		d.sample(0, x, 0, 0)
	}
	require.InDelta(t, 150, d.queueMs, 0.1)
	require.Equal(t, usageNormal, d.usage)

	// The base delay is forgotten after about a minute.
	for ; x < 80_000; x += 20 {
		d.sample(0, x, 0, 0)
	}
	require.InDelta(t, 0, d.queueMs, 0.01)
}

// The threshold follows |m|: slowly up, quickly down, within its bounds,
// and not towards outliers.
func TestDetectorThresholdAdapts(t *testing.T) {
	var d delayDetector
	d.init()
	feedQueue(&d, 0, 0, 3000, rand.New(rand.NewPCG(3, 3)))
	require.Equal(t, float64(thresholdMinMs), d.thresholdMs, "quiet path: threshold at its floor")

	d.detect(100, 20, false) // an outlier, far above: ignored
	require.Equal(t, float64(thresholdMinMs), d.thresholdMs)

	steps := 0
	for ; d.thresholdMs < 19; steps++ {
		d.detect(20, 20, false)
	}
	t.Logf("up from 6 to 19 ms in %d samples of 20 ms", steps)
	require.Greater(t, steps, 10)

	steps = 0
	for ; d.thresholdMs > 7; steps++ {
		d.detect(0, 20, false)
	}
	t.Logf("down from 19 to 7 ms in %d samples of 20 ms", steps)
	require.Less(t, steps, 5)

	for range 10_000 {
		d.detect(d.thresholdMs+10, 100, false)
	}
	require.Equal(t, float64(thresholdMaxMs), d.thresholdMs)
	require.False(t, math.IsNaN(d.thresholdMs))
}
