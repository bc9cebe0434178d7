package bwe

import (
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
)

func TestConfigDefaults(t *testing.T) {
	tests := []struct {
		name string
		in   Config
		want Config
	}{
		{"zero", Config{}, Config{InitialBps: 300_000, MinBps: 30_000, MaxBps: 20_000_000}},
		{"set", Config{1e6, 50e3, 5e6}, Config{1e6, 50e3, 5e6}},
		{"initial above max", Config{InitialBps: 30e6}, Config{20e6, 30e3, 20e6}},
		{"initial below min", Config{InitialBps: 10e3}, Config{30e3, 30e3, 20e6}},
		{"max below min", Config{MinBps: 2e6, MaxBps: 1e6}, Config{2e6, 2e6, 2e6}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, tc.in.withDefaults())
			var e Estimator
			e.Init(tc.in)
			require.Equal(t, tc.want.InitialBps, e.Estimate())
			require.Equal(t, tc.want.InitialBps, e.Update(simEpoch), "no packets: no change")
		})
	}
}

// An estimator with no packets, or whose sender went quiet, keeps its
// estimate.
func TestUpdateWithoutPackets(t *testing.T) {
	var e Estimator
	e.Init(Config{InitialBps: 500e3})
	for at := int64(0); at < 10*s; at += 50 * ms {
		require.Equal(t, uint64(500e3), e.Update(simEpoch+at))
	}
	require.Zero(t, e.IncomingBps())
	require.Zero(t, e.LossFraction())
}

func TestEstimateWithinBounds(t *testing.T) {
	// No bottleneck: the estimate would grow without end.
	sm := newSim(simLink{propNs: 20 * ms}, 1, paced(0, 5e6))
	sm.est.Init(Config{MaxBps: 1e6})
	for _, x := range sm.run(10*s, 100*ms) {
		require.LessOrEqual(t, x.est, 1e6)
	}
	require.Equal(t, uint64(1e6), sm.est.Estimate())

	// 30% random loss into an adaptive sender: the estimate is cut hard.
	snd := paced(0, DefaultInitialBps)
	snd.adaptive = true
	sm = newSim(simLink{propNs: 20 * ms, lossProb: 0.3}, 1, snd)
	sm.est.Init(Config{MinBps: 100e3})
	for _, x := range sm.run(20*s, 100*ms) {
		require.GreaterOrEqual(t, x.est, 100e3)
	}
	require.Equal(t, uint64(100e3), sm.est.Estimate())
}

// Packets with a stream index out of range count towards the rate only.
func TestStreamOutOfRange(t *testing.T) {
	var e Estimator
	e.Init(Config{})
	for i := 0; i < 200; i++ {
		at := simEpoch + int64(i)*10*ms
		e.OnPacket(at, int64(i)*10*ms, true, 1000, MaxStreams+i%3, uint16(i*7)) // seqs would be 85% loss
		e.OnPacket(at, int64(i)*10*ms, true, 1000, -1, 0)
	}
	e.Update(simEpoch + 2*s)
	require.InDelta(t, 1.6e6, float64(e.IncomingBps()), 1.6e6*0.02)
	require.Zero(t, e.LossFraction())
	require.False(t, e.detector.hasLast, "no delay samples")
}

// Packets without send times drive the estimate by rate and loss alone.
func TestWithoutSendTimes(t *testing.T) {
	sm := newSim(simLink{capacityBps: 10e6, queueNs: 200 * ms, propNs: 20 * ms}, 1, paced(0, 800e3))
	sm.noSendTime = true
	ss := sm.run(10*s, 100*ms)
	last := ss[len(ss)-1]
	require.GreaterOrEqual(t, last.est, 1.2*last.incoming)
	require.False(t, sm.est.detector.hasLast)
}

// A sender whose clock jumps (a restarted device, a new unwrapper) does not
// read as congestion.
func TestSenderClockJump(t *testing.T) {
	snd := paced(0, DefaultInitialBps)
	snd.adaptive = true
	sm := newSim(simLink{capacityBps: 1e6, queueNs: 200 * ms, propNs: 20 * ms}, 1, snd)
	sm.run(30*s, 100*ms)
	before := float64(sm.est.Estimate())
	for _, jump := range []int64{-20 * s, 25 * s, -5 * s, -500 * ms, 2 * s, 1000 * s} {
		snd.clockNs += jump // the unwrapper sees it modulo 64 s
		ss := sm.run(sm.now+5*s, 100*ms)
		for _, x := range ss {
			require.Greater(t, x.est, 0.8*before, "jump by %v at %.1fs", jump, float64(x.t)/1e9)
		}
	}
}

func TestEstimatorSize(t *testing.T) {
	size := unsafe.Sizeof(Estimator{})
	t.Logf("Estimator is %d bytes", size)
	require.Less(t, size, uintptr(8<<10))
}

// packetStream is a precomputed run of packets for the allocation test and
// the benchmarks: four streams at 2 Mbit/s in total, with 5 ms of jitter.
type packetStream struct {
	arrival, send []int64
	stream        []int
	seq           []uint16
}

func newPacketStream(n int) packetStream {
	sm := newSim(simLink{capacityBps: 3e6, queueNs: 200 * ms, propNs: 20 * ms, jitterNs: 5 * ms}, 9,
		paced(0, 1e6), paced(1, 500e3), paced(2, 400e3), paced(3, 100e3))
	var ps packetStream
	sm.onDeliver = func(arrival, sendTime int64, _, stream int, seq uint16) {
		ps.arrival = append(ps.arrival, arrival)
		ps.send = append(ps.send, sendTime)
		ps.stream = append(ps.stream, stream)
		ps.seq = append(ps.seq, seq)
	}
	for len(ps.arrival) < n {
		sm.step()
	}
	return ps
}

func TestOnPacketAllocs(t *testing.T) {
	ps := newPacketStream(5000)
	var e Estimator
	e.Init(Config{})
	i := 0
	allocs := testing.AllocsPerRun(len(ps.arrival)-1, func() {
		e.OnPacket(ps.arrival[i], ps.send[i], true, 1200, ps.stream[i], ps.seq[i])
		if i%20 == 0 {
			e.Update(ps.arrival[i])
		}
		i++
	})
	require.Zero(t, allocs)
	require.NotZero(t, e.IncomingBps())
}

func BenchmarkOnPacket(b *testing.B) {
	ps := newPacketStream(100_000)
	var e Estimator
	e.Init(Config{})
	n := len(ps.arrival)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		j := i % n
		if j == 0 && i > 0 {
			e.Init(Config{}) // times restart: start afresh
		}
		e.OnPacket(ps.arrival[j], ps.send[j], true, 1200, ps.stream[j], ps.seq[j])
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "packets/s")
}

func BenchmarkUpdate(b *testing.B) {
	ps := newPacketStream(20_000)
	var e Estimator
	e.Init(Config{})
	for j := range ps.arrival {
		e.OnPacket(ps.arrival[j], ps.send[j], true, 1200, ps.stream[j], ps.seq[j])
	}
	now := ps.arrival[len(ps.arrival)-1]
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		e.Update(now + int64(i%10)*ms)
	}
}

// A gap the caller says was skipped (the relay held those packets back) is
// not loss; the same gap unannounced is.
func TestSkipToIsNotLoss(t *testing.T) {
	run := func(skip bool) float64 {
		var e Estimator
		e.Init(Config{})
		now := int64(0)
		seq := uint16(0)
		for i := 0; i < 100; i++ {
			if i%10 == 0 && i > 0 {
				seq += 50 // a silence the relay did not forward
				if skip {
					e.SkipTo(0, seq)
				}
			}
			e.OnPacket(now, now, true, 100, 0, seq)
			seq++
			now += 20e6
		}
		e.Update(now)
		return e.LossFraction()
	}
	require.Zero(t, run(true))
	require.Greater(t, run(false), 0.5)
}
