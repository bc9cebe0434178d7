package loadtest

import (
	"fmt"
	"math/rand/v2"
	"time"
)

// Rate returns the call arrival rate (calls/s) the profile asks for at t
// since the start, and the phase name there. After Length it returns 0 and
// "ending".
func (p Profile) Rate(t time.Duration) (float64, string) {
	if t < 0 || t >= p.Length() {
		return 0, "ending"
	}
	switch p.Kind {
	case ProfileSpike:
		return p.Spike.rate(t)
	case ProfileRamp:
		i := p.Ramp.StepAt(t)
		return p.Ramp.StepRate(i), fmt.Sprintf("step-%d", i)
	default:
		return p.Steady.Rate, "steady"
	}
}

// Length is how long the profile generates arrivals.
func (p Profile) Length() time.Duration {
	switch p.Kind {
	case ProfileSpike:
		k := p.Spike
		return (k.Lead + k.RampUp + k.Hold + k.Decay + k.Tail).D()
	case ProfileRamp:
		return time.Duration(p.Ramp.MaxSteps) * p.Ramp.StepDuration.D()
	default:
		return p.Steady.Duration.D()
	}
}

// maxRate is the largest rate the profile asks for.
func (p Profile) maxRate() float64 {
	switch p.Kind {
	case ProfileSpike:
		return max(p.Spike.Peak, p.Spike.Base)
	case ProfileRamp:
		return p.Ramp.StepRate(p.Ramp.MaxSteps - 1)
	default:
		return p.Steady.Rate
	}
}

func (k Spike) rate(t time.Duration) (float64, string) {
	lerp := func(from, to float64, t, d time.Duration) float64 {
		if d <= 0 {
			return to
		}
		return from + (to-from)*float64(t)/float64(d)
	}
	if t < k.Lead.D() {
		return k.Base, "base"
	}
	t -= k.Lead.D()
	if t < k.RampUp.D() {
		return lerp(k.Base, k.Peak, t, k.RampUp.D()), "rise"
	}
	t -= k.RampUp.D()
	if t < k.Hold.D() {
		return k.Peak, "hold"
	}
	t -= k.Hold.D()
	if t < k.Decay.D() {
		return lerp(k.Peak, k.Base, t, k.Decay.D()), "decay"
	}
	return k.Base, "tail"
}

// StepAt returns the index of the ramp step running at t.
func (r Ramp) StepAt(t time.Duration) int {
	if r.StepDuration <= 0 || t < 0 {
		return 0
	}
	return int(t / r.StepDuration.D())
}

// StepRate returns step i's arrival rate.
func (r Ramp) StepRate(i int) float64 { return r.Start + float64(i)*r.Step }

// Arrivals draws the call arrival times of a non-homogeneous Poisson
// process following the profile's rate, by thinning (Lewis and Shedler):
// candidates at the profile's peak rate, each kept with probability
// rate(t)/peak. It stops at end, at the profile's Length, or after max
// arrivals, whichever comes first, so the list is always bounded.
func Arrivals(rng *rand.Rand, p Profile, end time.Duration, max int) []time.Duration {
	peak := p.maxRate()
	if peak <= 0 || max <= 0 {
		return nil
	}
	end = min(end, p.Length())
	var out []time.Duration
	t := 0.0
	for len(out) < max {
		t += rng.ExpFloat64() / peak
		at := time.Duration(t * float64(time.Second))
		if at >= end {
			break
		}
		if r, _ := p.Rate(at); rng.Float64()*peak < r {
			out = append(out, at)
		}
	}
	return out
}

// drawDuration draws a call length: exponential with the given mean,
// clamped to [Min, Max].
func (c CallDuration) draw(rng *rand.Rand) time.Duration {
	d := time.Duration(rng.ExpFloat64() * float64(c.Mean))
	return min(max(d, c.Min.D()), c.Max.D())
}
