package linkem

import (
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// epoch is an arbitrary fake "now" for the shaper tests.
var epoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

func TestProfileNormalized(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   Profile
		want Profile
	}{
		{"zero stays zero", Profile{}, Profile{}},
		{"loss clamped high", Profile{Loss: 1.5}, Profile{Loss: 1}},
		{"loss clamped low", Profile{Loss: -0.1}, Profile{}},
		{"NaN loss is none", Profile{Loss: math.NaN()}, Profile{}},
		{"negative durations", Profile{Delay: -time.Second, Jitter: -1}, Profile{}},
		{"no queue without a rate", Profile{QueueBytes: 5000}, Profile{}},
		{"default queue has a floor", Profile{RateBps: 300_000}, Profile{RateBps: 300_000, QueueBytes: 15000}},
		{"default queue is 100 ms", Profile{RateBps: 5_000_000}, Profile{RateBps: 5_000_000, QueueBytes: 62500}},
		{"explicit queue kept", Profile{RateBps: 5_000_000, QueueBytes: 3000}, Profile{RateBps: 5_000_000, QueueBytes: 3000}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, tc.in.normalized())
		})
	}
}

// shapeBlast offers size-byte packets at offered bits/s for dur to a shaper
// under p and returns the departures of those passed and the verdict counts.
func shapeBlast(p Profile, size int, offered uint64, dur time.Duration) (departs []time.Time, counts map[verdict]int) {
	p = p.normalized()
	s := newShaper(1, 2)
	counts = map[verdict]int{}
	gap := serialisation(size, offered)
	for at := epoch; at.Before(epoch.Add(dur)); at = at.Add(gap) {
		d, v := s.admit(at, size, &p)
		counts[v]++
		if v == pass {
			departs = append(departs, d)
		}
	}
	return departs, counts
}

func TestShaperRateIsExact(t *testing.T) {
	for _, rate := range []uint64{300_000, 1_000_000, 5_000_000} {
		departs, counts := shapeBlast(Profile{RateBps: rate}, 1200, rate*10/3, 2*time.Second)
		require.Positive(t, counts[queueFull], "an overloaded bottleneck tail-drops")
		// Back to back at the bottleneck: each departure one serialisation
		// time after the previous, so the rate is exact on the timeline.
		span := departs[len(departs)-1].Sub(departs[0])
		got := float64((len(departs)-1)*1200*8) / span.Seconds()
		require.InEpsilon(t, float64(rate), got, 1e-6, "rate %d", rate)
		t.Logf("rate %d bit/s: %.1f bit/s on the timeline, %d passed, %d tail-dropped",
			rate, got, counts[pass], counts[queueFull])
	}
}

func TestShaperQueueLimit(t *testing.T) {
	p := Profile{RateBps: 1_000_000, QueueBytes: 12000}.normalized()
	s := newShaper(1, 2)
	// A burst at one instant: exactly QueueBytes fit, the next is dropped.
	for i := range 10 {
		_, v := s.admit(epoch, 1200, &p)
		require.Equal(t, pass, v, "packet %d", i)
	}
	_, v := s.admit(epoch, 1200, &p)
	require.Equal(t, queueFull, v)
	// Once one packet's worth has drained there is room for one more.
	_, v = s.admit(epoch.Add(serialisation(1200, p.RateBps)), 1200, &p)
	require.Equal(t, pass, v)
}

func TestShaperDelayAndOrder(t *testing.T) {
	p := Profile{Delay: 40 * time.Millisecond, Jitter: 30 * time.Millisecond}.normalized()
	s := newShaper(7, 8)
	var last time.Time
	clumped := 0 // packets raised to their predecessor's departure
	for i := range 2000 {
		at := epoch.Add(time.Duration(i) * 5 * time.Millisecond)
		d, v := s.admit(at, 100, &p)
		require.Equal(t, pass, v)
		require.False(t, d.Before(last), "packet %d overtakes its predecessor", i)
		delay := d.Sub(at)
		require.GreaterOrEqual(t, delay, p.Delay)
		// Raised to the predecessor's departure at most.
		require.LessOrEqual(t, delay, p.Delay+p.Jitter)
		if d.Equal(last) {
			clumped++
		}
		last = d
	}
	// Packets 5 ms apart with 30 ms of jitter would often reorder.
	require.Positive(t, clumped)
}

func TestShaperLossIsSeeded(t *testing.T) {
	run := func() int {
		p := Profile{Loss: 0.05}.normalized()
		s := newShaper(42, 43)
		n := 0
		for i := range 4000 {
			if _, v := s.admit(epoch.Add(time.Duration(i)*time.Millisecond), 100, &p); v == lost {
				n++
			}
		}
		return n
	}
	n := run()
	require.Equal(t, n, run(), "same seed, same losses")
	require.InDelta(t, 200, n, 80)
}

func TestShaperAllocs(t *testing.T) {
	p := Profile{Loss: 0.1, Delay: time.Millisecond, Jitter: time.Millisecond, RateBps: 1_000_000}.normalized()
	s := newShaper(1, 2)
	now := epoch
	allocs := testing.AllocsPerRun(1000, func() {
		now = now.Add(time.Millisecond)
		s.admit(now, 1200, &p)
	})
	require.Zero(t, allocs)
}
