package forwarder

import (
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var loadT0 = time.Date(2025, 12, 31, 23, 59, 0, 0, time.UTC)

// loadFeed drives a throttle with samples whose load is set directly
// through the CPU signal (CPUCores 1: CPU seconds per second = load), on a
// fake clock.
type loadFeed struct {
	t       *testing.T
	th      *throttle
	now     time.Time
	cpu     float64
	changes int
	last    time.Time // the last change
}

func newLoadFeed(t *testing.T, cfg LoadConfig) *loadFeed {
	t.Helper()
	cfg.CPUCores = 1
	require.NoError(t, cfg.validate())
	f := &loadFeed{t: t, th: newThrottle(cfg), now: loadT0}
	f.th.update(LoadSample{At: f.now}) // the base of the first rate
	return f
}

// step advances the clock by dt with load x over that interval.
func (f *loadFeed) step(dt time.Duration, x float64) ThrottleLevel {
	f.t.Helper()
	f.now = f.now.Add(dt)
	f.cpu += x * dt.Seconds()
	lvl, sig, changed := f.th.update(LoadSample{At: f.now, CPUSeconds: f.cpu})
	require.InDelta(f.t, x, sig.Max(), 1e-9)
	require.InDelta(f.t, x, f.th.load(), 1e-9)
	require.Equal(f.t, lvl, f.th.level())
	if changed {
		f.changes++
		f.last = f.now
	}
	return lvl
}

func TestLoadSignalsFromTwoSamples(t *testing.T) {
	cfg := LoadConfig{CPUCores: 2, CapacityPPS: 100_000, MemoryLimit: 1 << 30, QueueDropsFull: 100}
	require.NoError(t, cfg.validate())
	th := newThrottle(cfg)
	a := LoadSample{At: loadT0, CPUSeconds: 10, Packets: 1_000_000, QueueDrops: 7, MemoryBytes: 256 << 20}
	b := LoadSample{
		At:          loadT0.Add(2 * time.Second),
		CPUSeconds:  13,                  // 1.5 cores of 2
		Packets:     1_000_000 + 120_000, // 60,000/s of 100,000
		QueueDrops:  7 + 40,              // 20/s of 100
		MemoryBytes: 768 << 20,           // of 1 GiB
	}
	lvl, sig, changed := th.update(a)
	require.Equal(t, ThrottleNone, lvl, "the first sample has no rate")
	require.False(t, changed)
	require.Equal(t, LoadSignals{Memory: 0.25}, sig, "only memory, a level, counts at once")

	lvl, sig, changed = th.update(b)
	require.InDelta(t, 0.75, sig.CPU, 1e-9)
	require.InDelta(t, 0.60, sig.Packets, 1e-9)
	require.InDelta(t, 0.20, sig.QueueDrops, 1e-9)
	require.InDelta(t, 0.75, sig.Memory, 1e-9)
	require.InDelta(t, 0.75, sig.Max(), 1e-9)
	require.Equal(t, "cpu", sig.Worst(), "ties go to the first signal")
	require.Equal(t, ThrottleNewGroup, lvl)
	require.True(t, changed)
}

func TestLoadSignalsWorst(t *testing.T) {
	for _, tc := range []struct {
		sig  LoadSignals
		want string
		max  float64
	}{
		{LoadSignals{}, "cpu", 0},
		{LoadSignals{CPU: 0.5, Packets: 0.9}, "packets", 0.9},
		{LoadSignals{CPU: 0.5, QueueDrops: 3}, "queue_drops", 3},
		{LoadSignals{CPU: 0.5, Packets: 0.2, Memory: 0.95}, "memory", 0.95},
	} {
		require.Equal(t, tc.want, tc.sig.Worst(), "%+v", tc.sig)
		require.Equal(t, tc.max, tc.sig.Max(), "%+v", tc.sig)
	}
}

func TestLoadSignalsDisabledAndDefaults(t *testing.T) {
	// Zero config: CPU cores from the machine, packets and memory off.
	th := newThrottle(LoadConfig{})
	th.update(LoadSample{At: loadT0, Packets: 0, MemoryBytes: 1 << 40})
	_, sig, _ := th.update(LoadSample{At: loadT0.Add(time.Second), Packets: 1 << 40, MemoryBytes: 1 << 40, QueueDrops: 50})
	require.Zero(t, sig.Packets, "no capacity: packets are not a signal")
	require.Zero(t, sig.Memory, "no limit: memory is not a signal")
	require.InDelta(t, 0.5, sig.QueueDrops, 1e-9, "50 drops/s of the default 100")
}

func TestLoadCounterReset(t *testing.T) {
	cfg := LoadConfig{CPUCores: 1, CapacityPPS: 1000}
	th := newThrottle(cfg)
	th.update(LoadSample{At: loadT0, CPUSeconds: 100, Packets: 1_000_000, QueueDrops: 500})
	// Every counter went back (a restart of the counting side).
	lvl, sig, _ := th.update(LoadSample{At: loadT0.Add(time.Second), CPUSeconds: 1, Packets: 10, QueueDrops: 0})
	require.Equal(t, LoadSignals{}, sig, "a counter that went back is a zero rate, never negative")
	require.Equal(t, ThrottleNone, lvl)
	// The rates resume from the new values.
	_, sig, _ = th.update(LoadSample{At: loadT0.Add(2 * time.Second), CPUSeconds: 1.5, Packets: 510, QueueDrops: 10})
	require.InDelta(t, 0.5, sig.CPU, 1e-9)
	require.InDelta(t, 0.5, sig.Packets, 1e-9)
	require.InDelta(t, 0.1, sig.QueueDrops, 1e-9)
}

func TestLoadSampleWithoutTimeKeepsRates(t *testing.T) {
	th := newThrottle(LoadConfig{CPUCores: 1})
	th.update(LoadSample{At: loadT0})
	lvl, _, _ := th.update(LoadSample{At: loadT0.Add(time.Second), CPUSeconds: 0.95})
	require.Equal(t, ThrottleGroupJoin, lvl)
	// Same instant again: no interval to measure over, no division by zero.
	lvl, sig, changed := th.update(LoadSample{At: loadT0.Add(time.Second), CPUSeconds: 0.95})
	require.InDelta(t, 0.95, sig.CPU, 1e-9)
	require.Equal(t, ThrottleGroupJoin, lvl)
	require.False(t, changed)
}

func TestThrottleFastUp(t *testing.T) {
	f := newLoadFeed(t, LoadConfig{})
	require.Equal(t, ThrottleNone, f.step(time.Second, 0.5))
	require.Equal(t, ThrottleNewGroup, f.step(time.Second, 0.70))
	require.Equal(t, ThrottleGroupJoin, f.step(time.Second, 0.93), "two levels up in one sample")
	require.Equal(t, 2, f.changes)

	g := newLoadFeed(t, LoadConfig{})
	require.Equal(t, ThrottleSecondParty, g.step(250*time.Millisecond, 1.0), "at capacity: straight to level 4")
	h := newLoadFeed(t, LoadConfig{})
	require.Equal(t, ThrottleSecondParty, h.step(time.Second, 3.5))
}

func TestThrottleSlowDown(t *testing.T) {
	f := newLoadFeed(t, LoadConfig{HoldDown: 5 * time.Second})
	require.Equal(t, ThrottleSecondParty, f.step(time.Second, 1.2))

	// Within the hysteresis (level 4 is left below 0.90): no change, ever.
	for range 30 {
		require.Equal(t, ThrottleSecondParty, f.step(time.Second, 0.91))
	}
	// Idle from now on: one level per HoldDown, timed from the first sample below.
	start := f.now
	var got []ThrottleLevel
	var at []time.Duration
	for range 40 {
		prev := f.th.level()
		if l := f.step(time.Second, 0.05); l != prev {
			require.Equal(t, prev-1, l, "one level at a time")
			got = append(got, l)
			at = append(at, f.now.Sub(start))
		}
	}
	require.Equal(t, []ThrottleLevel{ThrottleGroupJoin, ThrottleNewOneToOne, ThrottleNewGroup, ThrottleNone}, got)
	require.Equal(t, []time.Duration{6 * time.Second, 11 * time.Second, 16 * time.Second, 21 * time.Second}, at)
}

func TestThrottleHoldDownRestartsOnRise(t *testing.T) {
	f := newLoadFeed(t, LoadConfig{})
	require.Equal(t, ThrottleNewOneToOne, f.step(time.Second, 0.85)) // exit line 0.70
	for range 4 {
		require.Equal(t, ThrottleNewOneToOne, f.step(time.Second, 0.3))
	}
	require.Equal(t, ThrottleNewOneToOne, f.step(time.Second, 0.72), "back above the exit line: the hold-down starts over")
	for range 5 {
		require.Equal(t, ThrottleNewOneToOne, f.step(time.Second, 0.3))
	}
	require.Equal(t, ThrottleNewGroup, f.step(time.Second, 0.3))
	// Below level 1's exit line (0.60) only now: level 1 needs its own HoldDown.
	for range 5 {
		require.Equal(t, ThrottleNewGroup, f.step(time.Second, 0.65))
	}
	for range 5 {
		require.Equal(t, ThrottleNewGroup, f.step(time.Second, 0.55))
	}
	require.Equal(t, ThrottleNone, f.step(time.Second, 0.55))
}

func TestThrottleNoFlapping(t *testing.T) {
	for _, tc := range []struct {
		name        string
		dt          time.Duration
		load        func(i int) float64
		wantChanges int
	}{
		// Every sample on the other side of level 2's threshold (0.80).
		{"around_threshold", 250 * time.Millisecond, func(i int) float64 { return 0.80 + 0.05*float64(1-2*(i%2)) }, 1},
		// A square wave across a threshold and its exit line, 2 s up, 2 s
		// down: faster than HoldDown, so never a step down.
		{"square_4s", 500 * time.Millisecond, func(i int) float64 {
			if i%8 < 4 {
				return 0.95
			}
			return 0.60
		}, 1},
		// Noise up to ±0.15 around 0.80.
		{"noise", 250 * time.Millisecond, func(int) float64 { return 0.65 + 0.3*rand.Float64() }, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newLoadFeed(t, LoadConfig{})
			hold := f.th.cfg.HoldDown
			var lastChange time.Time
			n := int(60 * time.Second / tc.dt)
			for i := range n {
				prev := f.th.level()
				l := f.step(tc.dt, tc.load(i))
				if l < prev {
					require.Equal(t, prev-1, l)
					require.GreaterOrEqual(t, f.now.Sub(lastChange), hold, "a level is left at least HoldDown after the last change")
				}
				if l != prev {
					lastChange = f.now
				}
			}
			if tc.wantChanges >= 0 {
				require.Equal(t, tc.wantChanges, f.changes, "changes over 60 simulated seconds")
			} else {
				require.LessOrEqual(t, f.changes, 60/int(hold/time.Second)+4)
			}
		})
	}
}

// Random loads: every change is an immediate rise to the level the load
// reaches, or one step down at least HoldDown after the previous change.
func TestThrottleRandomWalkInvariants(t *testing.T) {
	f := newLoadFeed(t, LoadConfig{})
	cfg := f.th.cfg
	rng := rand.New(rand.NewPCG(1, 2))
	x := 0.5
	var lastChange time.Time
	for range 20_000 {
		x = min(1.3, max(0, x+0.08*(rng.Float64()-0.5)))
		prev := f.th.level()
		l := f.step(time.Duration(250+rng.IntN(750))*time.Millisecond, x)
		switch {
		case l > prev:
			require.Equal(t, f.th.levelFor(x), l)
			require.GreaterOrEqual(t, x, cfg.Thresholds[l-1])
		case l < prev:
			require.Equal(t, prev-1, l)
			require.Less(t, x, cfg.Thresholds[prev-1]-cfg.Hysteresis)
			require.GreaterOrEqual(t, f.now.Sub(lastChange), cfg.HoldDown)
		}
		if l != prev {
			lastChange = f.now
		}
		require.GreaterOrEqual(t, l, f.th.levelFor(x), "never below the level the load reaches")
	}
	require.Greater(t, f.changes, 10, "the walk moved the level")
}

func TestThrottleAdmitsOrder(t *testing.T) {
	order := []JoinClass{JoinNewGroup, JoinNewOneToOne, JoinGroupMember, JoinSecondParty, JoinRejoin}
	want := map[ThrottleLevel]string{ // one letter per class in order: A admitted, r refused
		ThrottleNone:        "AAAAA",
		ThrottleNewGroup:    "rAAAA",
		ThrottleNewOneToOne: "rrAAA",
		ThrottleGroupJoin:   "rrrAA",
		ThrottleSecondParty: "rrrrA",
		ThrottleLevel(9):    "rrrrA",
	}
	for l, w := range want {
		var got strings.Builder
		for i, c := range order {
			if l.Admits(c) {
				got.WriteByte('A')
				for _, later := range order[i+1:] {
					require.True(t, l.Admits(later), "%s admits %s but refuses %s, refused later in DESIGN.md's order", l, c, later)
				}
			} else {
				got.WriteByte('r')
			}
		}
		require.Equal(t, w, got.String(), "level %s", l)
	}
	require.True(t, ThrottleNone.Admits(JoinClass(0)))
	require.False(t, ThrottleNewGroup.Admits(JoinClass(0)), "an unknown class is refused first")
	require.False(t, ThrottleNewGroup.Admits(JoinClass(42)))
}

func TestThrottleNames(t *testing.T) {
	require.Equal(t, []string{"none", "new_group", "new_one_to_one", "group_join", "second_party", "ThrottleLevel(5)"},
		[]string{ThrottleNone.String(), ThrottleNewGroup.String(), ThrottleNewOneToOne.String(),
			ThrottleGroupJoin.String(), ThrottleSecondParty.String(), ThrottleLevel(5).String()})
	require.Equal(t, []string{"new_group", "new_one_to_one", "group_member", "second_party", "rejoin", "JoinClass(0)"},
		[]string{JoinNewGroup.String(), JoinNewOneToOne.String(), JoinGroupMember.String(),
			JoinSecondParty.String(), JoinRejoin.String(), JoinClass(0).String()})
}

func TestLoadConfigValidate(t *testing.T) {
	var zero LoadConfig
	require.NoError(t, zero.validate())
	require.Equal(t, DefaultLoad(), zero, "zero fields take the defaults")
	d := DefaultLoad()
	require.NoError(t, d.validate())

	for _, tc := range []struct {
		name string
		mod  func(*LoadConfig)
		want string
	}{
		{"negative_capacity", func(c *LoadConfig) { c.CapacityPPS = -1 }, "capacity"},
		{"negative_cores", func(c *LoadConfig) { c.CPUCores = -2 }, "CPU cores"},
		{"negative_drops", func(c *LoadConfig) { c.QueueDropsFull = -5 }, "queue drops"},
		{"negative_hysteresis", func(c *LoadConfig) { c.Hysteresis = -0.1 }, "hysteresis"},
		{"decreasing", func(c *LoadConfig) { c.Thresholds = [4]float64{0.7, 0.9, 0.8, 1} }, "strictly increasing"},
		{"partial", func(c *LoadConfig) { c.Thresholds = [4]float64{0.7, 0.8} }, "strictly increasing"},
		{"above_one", func(c *LoadConfig) { c.Thresholds = [4]float64{0.7, 0.8, 0.9, 1.2} }, "at most 1.0"},
		{"first_inside_hysteresis", func(c *LoadConfig) { c.Hysteresis = 0.75 }, "above the hysteresis"},
		{"negative_hold", func(c *LoadConfig) { c.HoldDown = -time.Second }, "hold-down"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultLoad()
			tc.mod(&c)
			err := c.validate()
			require.Error(t, err)
			require.Contains(t, err.Error(), tc.want)
			require.True(t, strings.HasPrefix(err.Error(), "forwarder: load "), err.Error())
		})
	}
}

func TestLoadReadProcessSample(t *testing.T) {
	// Use some CPU so there is something to measure.
	x := 0
	for i := range 20_000_000 {
		x ^= i * i
	}
	_ = x
	at := time.Now()
	s := readProcessSample(at)
	require.Equal(t, at, s.At)
	require.Positive(t, s.MemoryBytes)
	require.Zero(t, s.Packets, "the caller fills packets")
	require.Zero(t, s.QueueDrops, "the caller fills its sockets' drops")
	if runtime.GOOS == "linux" {
		require.Positive(t, s.CPUSeconds)
	}
	s2 := readProcessSample(at.Add(time.Second))
	require.GreaterOrEqual(t, s2.CPUSeconds, s.CPUSeconds)

	th := newThrottle(DefaultLoad())
	th.update(s)
	_, sig, _ := th.update(s2)
	require.GreaterOrEqual(t, sig.CPU, 0.0)
}
