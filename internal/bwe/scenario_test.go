package bwe

import (
	"math"
	"testing"
)

// within reports whether got is within tol (a fraction) of want.
func within(got, want, tol float64) bool { return math.Abs(got-want) <= tol*want }

// settledAt is the first sample time from which every later sample is
// within tol of want, or -1.
func settledAt(ss []sample, want, tol float64) int64 {
	at := int64(-1)
	for _, x := range ss {
		if !within(x.est, want, tol) {
			at = -1
		} else if at < 0 {
			at = x.t
		}
	}
	return at
}

// errorStats returns the worst and the mean relative error of the samples
// in [from, to].
func errorStats(ss []sample, want float64, from, to int64) (worst, mean float64) {
	n := 0
	for _, x := range ss {
		if x.t < from || x.t > to {
			continue
		}
		e := (x.est - want) / want
		if math.Abs(e) > math.Abs(worst) {
			worst = e
		}
		mean += e
		n++
	}
	return worst, mean / float64(max(n, 1))
}

func logTrace(t *testing.T, ss []sample, every int64) {
	t.Helper()
	for _, x := range ss {
		if x.t%every == 0 {
			t.Logf("t=%5.1fs est=%8.0f incoming=%8.0f loss=%.3f", float64(x.t)/1e9, x.est, x.incoming, x.loss)
		}
	}
}

// A sender that ignores the estimate and sends faster than the bottleneck:
// the estimate must find the capacity within 5 s and stay near it.
func TestSimOverdrivenBottleneck(t *testing.T) {
	cases := []struct {
		name       string
		sendBps    float64
		capBps     float64
		noSendTime bool
	}{
		{"1.2M into 300k", 1.2e6, 300e3, false},
		{"2.5M into 1M", 2.5e6, 1e6, false},
		{"1.2M into 300k without send times", 1.2e6, 300e3, true},
		{"2.5M into 1M without send times", 2.5e6, 1e6, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sm := newSim(simLink{capacityBps: tc.capBps, queueNs: 200 * ms, propNs: 20 * ms}, 1, paced(0, tc.sendBps))
			sm.noSendTime = tc.noSendTime
			ss := sm.run(15*s, 100*ms)
			worst, mean := errorStats(ss, tc.capBps, 5*s, 15*s)
			t.Logf("within 20%% from %.1fs, within 10%% from %.1fs; 5-15s worst error %+.1f%%, mean %+.1f%%; loss %.2f",
				float64(settledAt(ss, tc.capBps, 0.2))/1e9, float64(settledAt(ss, tc.capBps, 0.1))/1e9, worst*100, mean*100, ss[len(ss)-1].loss)
			if math.Abs(worst) > 0.2 {
				logTrace(t, ss, 500*ms)
				t.Fatalf("estimate off by %+.1f%% between 5 s and 15 s", worst*100)
			}
		})
	}
}

// A sender that sends what the estimate says (learning it 100 ms late):
// the loop must settle near the capacity, neither collapsing nor
// overshooting for good.
func TestSimAdaptiveSender(t *testing.T) {
	const capBps = 500e3
	for seed := uint64(1); seed <= 3; seed++ {
		snd := paced(0, DefaultInitialBps)
		snd.adaptive = true
		sm := newSim(simLink{capacityBps: capBps, queueNs: 200 * ms, propNs: 20 * ms, jitterNs: 1 * ms}, seed, snd)
		ss := sm.run(40*s, 100*ms)
		worst, mean := errorStats(ss, capBps, 10*s, 40*s)
		t.Logf("seed %d: within 20%% from %.1fs; 10-40s worst error %+.1f%%, mean %+.1f%%, link drops %d",
			seed, float64(settledAt(ss, capBps, 0.2))/1e9, worst*100, mean*100, sm.link.drops)
		if math.Abs(worst) > 0.2 {
			logTrace(t, ss, 500*ms)
			t.Fatalf("seed %d: estimate off by %+.1f%% between 10 s and 40 s", seed, worst*100)
		}
	}
}

// Without a bottleneck the estimate must never drop below what arrives and
// must leave the sender room to grow.
func TestSimNoBottleneck(t *testing.T) {
	sm := newSim(simLink{capacityBps: 10e6, queueNs: 200 * ms, propNs: 20 * ms}, 1, paced(0, 800e3))
	ss := sm.run(15*s, 100*ms)
	minRatio := math.Inf(1)
	for _, x := range ss {
		if x.est < x.incoming {
			logTrace(t, ss, 500*ms)
			t.Fatalf("t=%.1fs: estimate %.0f below incoming %.0f", float64(x.t)/1e9, x.est, x.incoming)
		}
		if x.t >= 5*s {
			minRatio = min(minRatio, x.est/x.incoming)
		}
	}
	t.Logf("estimate/incoming from 5 s: min %.2f; at 15 s %.0f / %.0f", minRatio, ss[len(ss)-1].est, ss[len(ss)-1].incoming)
	if minRatio < 1.2 {
		logTrace(t, ss, 500*ms)
		t.Fatalf("estimate/incoming fell to %.2f after 5 s, want >= 1.2", minRatio)
	}
}

// Random loss below the loss threshold must not pull the estimate down.
func TestSimRandomLoss(t *testing.T) {
	for seed := uint64(1); seed <= 5; seed++ {
		sm := newSim(simLink{capacityBps: 10e6, queueNs: 200 * ms, propNs: 20 * ms, lossProb: 0.05}, seed, paced(0, 800e3))
		ss := sm.run(15*s, 100*ms)
		minRatio, meanLoss, n := math.Inf(1), 0.0, 0
		for _, x := range ss {
			if x.t < 1*s {
				continue
			}
			minRatio = min(minRatio, x.est/x.incoming)
			meanLoss += x.loss
			n++
		}
		meanLoss /= float64(n)
		t.Logf("seed %d: estimate/incoming from 1 s: min %.2f; mean measured loss %.3f", seed, minRatio, meanLoss)
		if minRatio < 0.7 {
			logTrace(t, ss, 500*ms)
			t.Fatalf("seed %d: estimate fell to %.2f of incoming", seed, minRatio)
		}
		if meanLoss < 0.03 || meanLoss > 0.07 {
			t.Fatalf("seed %d: measured loss %.3f, want about 0.05", seed, meanLoss)
		}
	}
}

// Delay jitter without a bottleneck must not read as congestion.
func TestSimJitter(t *testing.T) {
	for seed := uint64(1); seed <= 5; seed++ {
		sm := newSim(simLink{capacityBps: 10e6, queueNs: 200 * ms, propNs: 20 * ms, jitterNs: 10 * ms}, seed, paced(0, 800e3))
		ss := sm.run(15*s, 100*ms)
		minRatio := math.Inf(1)
		for _, x := range ss {
			if x.t >= 1*s {
				minRatio = min(minRatio, x.est/x.incoming)
			}
		}
		t.Logf("seed %d: estimate/incoming from 1 s: min %.2f, at 15 s %.2f; threshold %.1f ms",
			seed, minRatio, ss[len(ss)-1].est/ss[len(ss)-1].incoming, sm.est.detector.thresholdMs)
		if minRatio < 1 {
			logTrace(t, ss, 500*ms)
			t.Fatalf("seed %d: estimate fell to %.2f of incoming", seed, minRatio)
		}
	}
}

// The client's downlink: packets of two senders, each stamped on its own
// clock (one of them wrapping its abs-send-time during the run), share the
// relay-to-client bottleneck. Both follow the estimate, half each.
func TestSimTwoSenderClocks(t *testing.T) {
	const capBps = 1e6
	for seed := uint64(1); seed <= 3; seed++ {
		a, b := paced(0, DefaultInitialBps/2), paced(1, DefaultInitialBps/2)
		a.adaptive, b.adaptive = true, true
		a.share, b.share = 0.5, 0.5
		a.clockNs, b.clockNs = 63*s, 5_000*s+123*ms
		b.frames = true
		sm := newSim(simLink{capacityBps: capBps, queueNs: 200 * ms, propNs: 30 * ms, jitterNs: 2 * ms}, seed, a, b)
		ss := sm.run(40*s, 100*ms)
		worst, mean := errorStats(ss, capBps, 15*s, 40*s)
		t.Logf("seed %d: within 20%% from %.1fs; 15-40s worst error %+.1f%%, mean %+.1f%%, link drops %d",
			seed, float64(settledAt(ss, capBps, 0.2))/1e9, worst*100, mean*100, sm.link.drops)
		if math.Abs(worst) > 0.2 {
			logTrace(t, ss, 500*ms)
			t.Fatalf("seed %d: estimate off by %+.1f%% between 15 s and 40 s", seed, worst*100)
		}
	}
}

// Video-like traffic (30 bursts a second) from an adaptive sender, and a
// capacity that halves mid-call: the estimate follows it down within a
// few seconds and settles again.
func TestSimCapacityDrop(t *testing.T) {
	snd := paced(0, DefaultInitialBps)
	snd.adaptive, snd.frames = true, true
	sm := newSim(simLink{capacityBps: 1.2e6, queueNs: 200 * ms, propNs: 25 * ms, jitterNs: 2 * ms}, 7, snd)
	before := sm.run(30*s, 100*ms)
	w1, m1 := errorStats(before, 1.2e6, 15*s, 30*s)
	sm.link.capacityBps = 600e3
	after := sm.run(60*s, 100*ms)
	w2, m2 := errorStats(after, 600e3, 35*s, 60*s)
	down := int64(-1)
	for _, x := range after {
		if x.est <= 1.2*600e3 {
			down = x.t - 30*s
			break
		}
	}
	t.Logf("1.2 Mbit/s: 15-30s worst %+.1f%% mean %+.1f%%; after the drop to 600 kbit/s: within +20%% after %.1fs, 35-60s worst %+.1f%% mean %+.1f%%; link drops %d",
		w1*100, m1*100, float64(down)/1e9, w2*100, m2*100, sm.link.drops)
	if math.Abs(w1) > 0.2 || math.Abs(w2) > 0.2 || down < 0 || down > 2*s {
		logTrace(t, append(before, after...), 500*ms)
		t.Fatal("estimate did not follow the capacity")
	}
}

// Heavy jitter (±20 ms) with a bottleneck: congestion is still found.
func TestSimJitterWithBottleneck(t *testing.T) {
	const capBps = 800e3
	for seed := uint64(1); seed <= 3; seed++ {
		snd := paced(0, DefaultInitialBps)
		snd.adaptive = true
		sm := newSim(simLink{capacityBps: capBps, queueNs: 200 * ms, propNs: 20 * ms, jitterNs: 20 * ms}, seed, snd)
		ss := sm.run(40*s, 100*ms)
		worst, mean := errorStats(ss, capBps, 15*s, 40*s)
		t.Logf("seed %d: 15-40s worst error %+.1f%%, mean %+.1f%%, link drops %d", seed, worst*100, mean*100, sm.link.drops)
		if math.Abs(worst) > 0.25 {
			logTrace(t, ss, 500*ms)
			t.Fatalf("seed %d: estimate off by %+.1f%% between 15 s and 40 s", seed, worst*100)
		}
	}
}

// A sender that goes quiet keeps its estimate: silence is not congestion.
func TestSimSenderPause(t *testing.T) {
	snd := paced(0, DefaultInitialBps)
	snd.adaptive = true
	sm := newSim(simLink{capacityBps: 600e3, queueNs: 200 * ms, propNs: 20 * ms}, 1, snd)
	sm.run(20*s, 100*ms)
	est := float64(sm.est.Estimate())
	snd.stopped = true
	pause := sm.run(25*s, 100*ms)
	snd.stopped, snd.next = false, sm.now
	after := sm.run(40*s, 100*ms)
	lowest := math.Inf(1)
	for _, x := range append(pause, after...) {
		lowest = min(lowest, x.est)
	}
	worst, _ := errorStats(after, 600e3, 30*s, 40*s)
	t.Logf("before the pause %.0f, lowest during and after %.0f; 30-40s worst error %+.1f%%", est, lowest, worst*100)
	if lowest < 0.8*est || math.Abs(worst) > 0.2 {
		logTrace(t, append(pause, after...), 500*ms)
		t.Fatal("a pause moved the estimate")
	}
}

// A sweep over capacities, traffic shapes, delays and starting points, so
// that tuning for the scenarios above cannot break the others.
func TestSimSweep(t *testing.T) {
	t.Run("adaptive", func(t *testing.T) {
		for _, c := range []float64{150e3, 500e3, 2e6} {
			for _, fb := range []int64{50, 300} {
				for _, frames := range []bool{false, true} {
					snd := paced(0, DefaultInitialBps)
					snd.adaptive, snd.frames = true, frames
					sm := newSim(simLink{capacityBps: c, queueNs: 200 * ms, propNs: 50 * ms, jitterNs: 2 * ms}, 1, snd)
					sm.feedbackDelayNs = fb * ms
					ss := sm.run(45*s, 100*ms)
					worst, mean := errorStats(ss, c, 25*s, 45*s)
					t.Logf("%4.0f kbit/s, feedback %3d ms, frames %-5v: 25-45s worst %+5.1f%% mean %+5.1f%%", c/1e3, fb, frames, worst*100, mean*100)
					if math.Abs(worst) > 0.2 {
						t.Errorf("%4.0f kbit/s, feedback %d ms, frames %v: off by %+.1f%%", c/1e3, fb, frames, worst*100)
					}
				}
			}
		}
	})
	t.Run("overdriven", func(t *testing.T) {
		for _, c := range []float64{100e3, 1e6, 3e6} {
			for _, over := range []float64{1.1, 4} {
				for _, initial := range []uint64{100e3, 3e6} {
					sm := newSim(simLink{capacityBps: c, queueNs: 200 * ms, propNs: 30 * ms, jitterNs: 2 * ms}, 1, paced(0, c*over))
					sm.est.Init(Config{InitialBps: initial})
					ss := sm.run(15*s, 100*ms)
					worst, mean := errorStats(ss, c, 5*s, 15*s)
					t.Logf("%4.0f kbit/s sent %.1fx, initial %4d kbit/s: 5-15s worst %+5.1f%% mean %+5.1f%%", c/1e3, over, initial/1000, worst*100, mean*100)
					if math.Abs(worst) > 0.2 {
						t.Errorf("%4.0f kbit/s sent %.1fx, initial %d kbit/s: off by %+.1f%%", c/1e3, over, initial/1000, worst*100)
					}
				}
			}
		}
	})
}
