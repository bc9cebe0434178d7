package loadtest

import (
	"math/rand/v2"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/internal/talkspurt"
	"github.com/callrelay/callrelay/protocol"
)

func TestWheelFiresInOrderAndOnTime(t *testing.T) {
	w := newWheel(8)
	var fired []wheelEvent
	var at []int64
	fire := func(tick int64, e wheelEvent) { fired = append(fired, e); at = append(at, tick) }
	w.schedule(3, 1, 0)
	w.schedule(3, 2, 0)
	w.schedule(20, 3, 0) // more than a turn ahead: waits for its turn
	w.schedule(11, 4, 0) // same slot as 3, next turn
	w.schedule(0, 5, 0)  // overdue: fires at the next tick
	require.Equal(t, 5, w.pending())
	require.Equal(t, 3, w.advance(3, fire))
	require.Equal(t, []int32{5, 1, 2}, ids(fired))
	require.Equal(t, []int64{1, 3, 3}, at)
	fired, at = nil, nil
	require.Equal(t, 1, w.advance(19, fire))
	require.Equal(t, []int32{4}, ids(fired))
	require.Equal(t, []int64{11}, at)
	fired, at = nil, nil
	require.Equal(t, 1, w.advance(20, fire))
	require.Equal(t, []int64{20}, at)
	require.Zero(t, w.pending())
}

// A periodic event rescheduled from fire, as a device's 20 ms frames are,
// fires once per period, also when the wheel catches up on late ticks and
// when the period is a whole turn.
func TestWheelPeriodic(t *testing.T) {
	for _, period := range []int64{1, 5, 16, 20} {
		w := newWheel(16)
		var at []int64
		var fire func(tick int64, e wheelEvent)
		fire = func(tick int64, e wheelEvent) {
			at = append(at, tick)
			w.schedule(e.due+period, e.id, e.kind)
		}
		w.schedule(2, 1, 0)
		w.advance(7, fire)
		w.advance(200, fire) // a late advance catches up tick by tick
		require.Len(t, at, int((200-2)/period)+1, "period %d", period)
		for i, tk := range at {
			require.Equal(t, 2+int64(i)*period, tk, "period %d", period)
		}
		require.Equal(t, 1, w.pending())
	}
}

func TestWheelSizeMustBePowerOfTwo(t *testing.T) {
	require.Panics(t, func() { newWheel(10) })
	require.NotPanics(t, func() { newWheel(1024) })
}

func ids(es []wheelEvent) []int32 {
	var out []int32
	for _, e := range es {
		out = append(out, e.id)
	}
	return out
}

func TestDeviceAddresses(t *testing.T) {
	seen := map[netip.Addr]bool{}
	for _, i := range []int{0, 1, 253, 254, 255, 65023, 65024, 1 << 20, maxDevices - 1} {
		a, err := deviceAddr(i)
		require.NoError(t, err)
		require.True(t, a.IsLoopback(), "%d: %s", i, a)
		b := a.As4()
		require.NotContains(t, []byte{0, 255}, b[3], "%d: %s", i, a)
		require.NotEqual(t, netip.MustParseAddr("127.0.0.1"), a)
		require.False(t, seen[a], "%s twice", a)
		seen[a] = true
		j, ok := deviceOf(a)
		require.True(t, ok)
		require.Equal(t, i, j)
	}
	first, _ := deviceAddr(0)
	require.Equal(t, netip.MustParseAddr("127.16.0.1"), first)
	next, _ := deviceAddr(254)
	require.Equal(t, netip.MustParseAddr("127.16.1.1"), next)
	last, _ := deviceAddr(maxDevices - 1)
	require.Equal(t, netip.MustParseAddr("127.255.255.254"), last)
	for _, i := range []int{-1, maxDevices} {
		_, err := deviceAddr(i)
		require.Error(t, err)
	}
	for _, s := range []string{"127.0.0.1", "127.15.9.9", "127.16.0.0", "127.16.0.255", "10.16.0.1", "::1"} {
		_, ok := deviceOf(netip.MustParseAddr(s))
		require.False(t, ok, s)
	}
	// Consecutive devices have distinct addresses all the way.
	prev := netip.Addr{}
	for i := range 100_000 {
		a, _ := deviceAddr(i)
		require.True(t, prev.Less(a), "%d", i)
		prev = a
	}
}

func TestProbeSampling(t *testing.T) {
	n := 0
	for no := range 1000 {
		if isProbeCall(no, 50) {
			n++
		}
	}
	require.Equal(t, 20, n)
	require.True(t, isProbeCall(0, 50), "the first call is a probe")
	require.False(t, isProbeCall(1, 50))
	for no := range 10 {
		require.True(t, isProbeCall(no, 1))
		require.True(t, isProbeCall(no, 0))
	}
	for _, dev := range []int{0, 1, 12345, maxDevices - 1} {
		for _, probe := range []bool{false, true} {
			s := fastSSRC(dev, probe)
			require.NotZero(t, s)
			d, p, ok := fastSender(s)
			require.True(t, ok)
			require.Equal(t, dev, d)
			require.Equal(t, probe, p)
		}
	}
	_, _, ok := fastSender(0x1234)
	require.False(t, ok)
}

// A device's talking cursor answers as talkspurt.Schedule.Talking does,
// frame after frame (20 ms apart, with late ticks that skip ahead), for
// every member of a two-party and a group schedule.
func TestDeviceTalkingCursor(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, s := range []talkspurt.Schedule{talkspurt.TwoParty(rng, 10*time.Minute), talkspurt.Group(rng, 5, 10*time.Minute)} {
		for idx := range len(s) + 1 { // one past the end never talks
			d := &fastDev{idx: idx}
			talked := 0
			for at := time.Duration(0); at < 11*time.Minute; at += 20 * time.Millisecond * time.Duration(1+rng.IntN(3)) {
				want := s.Talking(idx, at)
				require.Equal(t, want, d.talking(s, at), "member %d at %s", idx, at)
				if want {
					talked++
				}
			}
			if idx < len(s) {
				require.Positive(t, talked, "member %d never talked: the test would prove nothing", idx)
			}
		}
	}
}

// With Fast.Spread and two forwarders, the fast engine's calls span them:
// a one-to-one call's two devices on different forwarders (every frame
// crosses the trunk once), a group of 4 two on each; without it every
// member of a call is on the call's forwarder, calls taken in turn.
func TestFastMemberTargetSpread(t *testing.T) {
	a, b := netip.MustParseAddrPort("127.0.0.1:1000"), netip.MustParseAddrPort("127.0.0.1:2000")
	fwds := []netip.AddrPort{a, b}
	for no := range 10 {
		require.NotEqual(t, memberTarget(fwds, no, 0, true), memberTarget(fwds, no, 1, true), "call %d", no)
		on := map[netip.AddrPort]int{}
		for i := range 4 {
			on[memberTarget(fwds, no, i, true)]++
			require.Equal(t, fwds[no%2], memberTarget(fwds, no, i, false), "call %d member %d", no, i)
		}
		require.Equal(t, map[netip.AddrPort]int{a: 2, b: 2}, on, "call %d", no)
	}
	require.Equal(t, a, memberTarget(fwds[:1], 7, 3, true), "one forwarder: all on it")
}

// The plan of make capacity's group4 case draws group calls of exactly 4
// (class group), and the fast engine's device bound makes room for 4 per
// call; the one2one case's calls are pairs.
func TestFastCallShapes(t *testing.T) {
	for _, tc := range []struct {
		mix   Mix
		size  int
		class protocol.CallClass
	}{
		{Mix{OneToOne: 1, GroupMin: 3, GroupMax: 6}, 2, protocol.ClassOneToOne},
		{Mix{OneToOne: 0, GroupMin: 4, GroupMax: 4}, 4, protocol.ClassGroup},
	} {
		p := Plan{Engine: EngineFast, Mix: tc.mix, Bounds: Bounds{MaxCalls: 100}, Fast: Fast{BaselinePairs: 4},
			CallDuration: CallDuration{Mean: Duration(time.Minute), Min: Duration(time.Minute), Max: Duration(time.Minute)}}
		r := &runner{p: p}
		rng := rand.New(rand.NewPCG(1, 2))
		for no := range 50 {
			c := r.drawCall(rng, no)
			c.sched = r.speech(c, 0)
			require.Equal(t, tc.size, c.size)
			require.Equal(t, tc.class, c.class)
			require.Len(t, c.sched, tc.size, "every member talks")
		}
		require.Equal(t, 100*tc.size+8, deviceBound(p))
	}
}

// TestSpeechEndsWithTheRun checks that a call's talkspurt schedule stops
// at the run's end (plus the join time), not at the call's: an hour-long
// call in a 70 s run gets 70 s of speech, the same speech an uncapped
// schedule has up to there, and a call arriving later gets less.
func TestSpeechEndsWithTheRun(t *testing.T) {
	p := Plan{JoinTimeout: Duration(5 * time.Second), Bounds: Bounds{MaxDuration: Duration(70 * time.Second)}}
	r := &runner{p: p}
	for _, size := range []int{2, 4, 8} {
		c := &callSpec{size: size, seed: uint64(size) * 7919, duration: time.Hour}
		full := talkspurt.Group(rand.New(rand.NewPCG(c.seed, 0x59)), size, time.Hour)
		for _, at := range []time.Duration{0, 30 * time.Second, 69 * time.Second} {
			got := r.speech(c, at)
			end := p.Bounds.MaxDuration.D() - at + p.JoinTimeout.D()
			require.Len(t, got, size)
			talked := false
			for m := range size {
				for i, sp := range got[m] {
					require.LessOrEqual(t, sp.End, end, "member %d's spurt %d ends after the run", m, i)
					want := full[m][i]
					require.Equal(t, want.Start, sp.Start, "member %d's spurt %d", m, i)
					if want.End <= end {
						require.Equal(t, want.End, sp.End, "member %d's spurt %d", m, i)
					} else {
						require.Equal(t, end, sp.End, "the last spurt is cut at the end")
					}
					talked = true
				}
				if n := len(got[m]); n < len(full[m]) {
					require.Greater(t, full[m][n].Start, end-1, "member %d: a spurt starting before the end is missing", m)
				}
			}
			require.True(t, talked, "size %d at %v: nobody talks", size, at)
		}
	}
	short := &callSpec{size: 2, seed: 3, duration: 10 * time.Second}
	for _, sp := range r.speech(short, 0) {
		for _, s := range sp {
			require.LessOrEqual(t, s.End, 15*time.Second, "a short call keeps its own length")
		}
	}
}

// TestFanoutKeptOnceEveryPeerCounts checks the receiver count a device
// keeps: counted afresh while a peer is not up or not ready yet, kept
// once every peer counts, and the call's class and start kept with it.
func TestFanoutKeptOnceEveryPeerCounts(t *testing.T) {
	start := time.Now()
	e := &fastEngine{epoch: start, readyAt: make([]atomic.Int64, 3)}
	c := &fastCall{cls: idxGroup, start: start.Add(time.Second), devs: []int32{0, 1, 2}}
	e.calls = []*fastCall{c}
	for no := range int32(3) {
		e.devs = append(e.devs, &fastDev{no: no, call: 0, state: devUp})
	}
	d := e.devs[0]
	e.devs[2].state = devJoining
	e.readyAt[1].Store(int64(100 * time.Millisecond))
	cls, n := e.fanout(d, int64(50*time.Millisecond))
	require.Equal(t, idxGroup, cls)
	require.Equal(t, 0, n, "peer 1 is not ready yet, peer 2 not up")
	require.False(t, d.fanFull)
	require.Equal(t, c.start, d.callStart)
	_, n = e.fanout(d, int64(150*time.Millisecond))
	require.Equal(t, 1, n, "peer 1 counts from its readiness")
	require.False(t, d.fanFull, "peer 2 may still join")
	e.devs[2].state = devUp
	e.readyAt[2].Store(int64(200 * time.Millisecond))
	_, n = e.fanout(d, int64(250*time.Millisecond))
	require.Equal(t, 2, n)
	require.True(t, d.fanFull, "every peer counts: kept")
	c.devs = nil // the call is no longer read
	cls, n = e.fanout(d, int64(300*time.Millisecond))
	require.Equal(t, idxGroup, cls)
	require.Equal(t, 2, n)
}
