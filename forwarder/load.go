package forwarder

import (
	"errors"
	"fmt"
	"math"
	"runtime"
	"runtime/metrics"
	"strconv"
	"time"
)

// Overload throttling, the pure part (DESIGN.md, "Throttling"): raw process
// counters become normalised load signals, the worst signal is the load, and
// the load drives a throttle level with hysteresis. The admission code
// refuses join classes by level (ThrottleLevel.Admits).

// LoadConfig tunes load measurement and the throttle. Start from
// DefaultLoad(); zero fields take the defaults given below.
type LoadConfig struct {
	// CapacityPPS is the packet rate (in + out, per second) the forwarder
	// is sized for. 0 (the default): packet rate is not a signal.
	CapacityPPS float64
	// CPUCores is how much CPU the process may use, in cores.
	// Default runtime.NumCPU().
	CPUCores float64
	// MemoryLimit is the Go runtime memory, in bytes, that counts as 100 %.
	// 0 (the default): memory is not a signal.
	MemoryLimit uint64
	// CapacitySessions is the number of sessions the forwarder is sized
	// for. Unlike the rates, this signal moves with every admission at
	// once, so a burst of joins within one sample cannot all land here.
	// 0 (the default): sessions are not a signal.
	CapacitySessions int
	// QueueDropsFull is the rate, per second, of datagrams the kernel
	// dropped because one of this forwarder's own sockets had a full
	// receive buffer that counts as 100 % load. Default 100. Other
	// programs' sockets never count, and neither do drops of the network
	// namespace as a whole. Measured on Linux (SO_RXQ_OVFL, internal/mmsg);
	// elsewhere the signal stays 0.
	QueueDropsFull float64
	// Thresholds are the loads (1.0 = at capacity) at which levels 1..4
	// begin, strictly increasing, the last at most 1.0.
	// Default 0.70, 0.80, 0.90, 1.00 (all four zero: the default).
	Thresholds [4]float64
	// Hysteresis: a level is left only when the load is below its
	// threshold minus this. Default 0.10.
	Hysteresis float64
	// HoldDown: and only after the load stayed there this long; levels are
	// left one at a time. Default 5s.
	HoldDown time.Duration
}

// DefaultLoad returns the load and throttle defaults.
func DefaultLoad() LoadConfig {
	return LoadConfig{
		CPUCores:       float64(runtime.NumCPU()),
		QueueDropsFull: 100,
		Thresholds:     [4]float64{0.70, 0.80, 0.90, 1.00},
		Hysteresis:     0.10,
		HoldDown:       5 * time.Second,
	}
}

// withDefaults returns c with its zero fields set to the defaults.
func (c LoadConfig) withDefaults() LoadConfig {
	d := DefaultLoad()
	if c.CPUCores == 0 {
		c.CPUCores = d.CPUCores
	}
	if c.QueueDropsFull == 0 {
		c.QueueDropsFull = d.QueueDropsFull
	}
	if c.Thresholds == ([4]float64{}) {
		c.Thresholds = d.Thresholds
	}
	if c.Hysteresis == 0 {
		c.Hysteresis = d.Hysteresis
	}
	if c.HoldDown == 0 {
		c.HoldDown = d.HoldDown
	}
	return c
}

// validate fills zero fields with defaults and says what to fix.
func (c *LoadConfig) validate() error {
	*c = c.withDefaults()
	var errs []error
	if !finite(c.CapacityPPS) || c.CapacityPPS < 0 {
		errs = append(errs, fmt.Errorf("forwarder: load capacity %v packets/s: want >= 0 (0: packet rate is not a load signal)", c.CapacityPPS))
	}
	if !finite(c.CPUCores) || c.CPUCores <= 0 {
		errs = append(errs, fmt.Errorf("forwarder: load CPU cores %v: want > 0, the cores the process may use (e.g. %d)", c.CPUCores, runtime.NumCPU()))
	}
	if !finite(c.QueueDropsFull) || c.QueueDropsFull <= 0 {
		errs = append(errs, fmt.Errorf("forwarder: load queue drops at full load %v/s: want > 0 (default 100)", c.QueueDropsFull))
	}
	if !finite(c.Hysteresis) || c.Hysteresis < 0 {
		errs = append(errs, fmt.Errorf("forwarder: load hysteresis %v: want >= 0 (default 0.10)", c.Hysteresis))
	}
	t := c.Thresholds
	ok := t[0] > c.Hysteresis && t[3] <= 1
	for i := 1; i < len(t); i++ {
		ok = ok && t[i] > t[i-1]
	}
	for _, x := range t {
		ok = ok && finite(x)
	}
	if !ok {
		errs = append(errs, fmt.Errorf("forwarder: load thresholds %v: want four strictly increasing loads, the first above the hysteresis %v, the last at most 1.0 (default 0.70 0.80 0.90 1.00)",
			t, c.Hysteresis))
	}
	if c.CapacitySessions < 0 {
		errs = append(errs, fmt.Errorf("forwarder: load capacity %d sessions: want >= 0 (0: sessions are not a load signal)", c.CapacitySessions))
	}
	if c.HoldDown < 0 {
		errs = append(errs, fmt.Errorf("forwarder: load hold-down %s: want > 0 (default 5s)", c.HoldDown))
	}
	return errors.Join(errs...)
}

func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }

// LoadSample is one reading of the raw, cumulative counters.
type LoadSample struct {
	At          time.Time
	CPUSeconds  float64 // user+system CPU of this process so far
	Packets     uint64  // packets in + out so far (the caller fills this from Stats)
	QueueDrops  uint64  // datagrams dropped so far by the kernel from this forwarder's full receive buffers (the caller fills this)
	MemoryBytes uint64  // Go runtime memory now
	Sessions    int     // sessions now, admissions of this instant included (the caller fills this)
}

// readProcessSample reads this process's CPU time and the Go runtime's
// memory. Packets, QueueDrops and Sessions are left for the caller, who
// has the readers' counters. Not for the per-packet path: it allocates.
func readProcessSample(at time.Time) LoadSample {
	return LoadSample{
		At:          at,
		CPUSeconds:  processCPUSeconds(),
		MemoryBytes: goMemoryBytes(),
	}
}

// goMemoryBytes is the memory the Go runtime has mapped, less what it has
// returned to the operating system (the quantity GOMEMLIMIT bounds). Released
// memory is left out so that a spike, once freed, stops counting.
func goMemoryBytes() uint64 {
	s := []metrics.Sample{
		{Name: "/memory/classes/total:bytes"},
		{Name: "/memory/classes/heap/released:bytes"},
	}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	total := s[0].Value.Uint64()
	if s[1].Value.Kind() == metrics.KindUint64 && s[1].Value.Uint64() <= total {
		total -= s[1].Value.Uint64()
	}
	return total
}

// LoadSignals are the normalised load signals, 1.0 = at capacity.
type LoadSignals struct {
	CPU        float64 // CPU used / CPUCores
	Packets    float64 // packet rate / CapacityPPS
	QueueDrops float64 // receive-buffer drop rate / QueueDropsFull
	Memory     float64 // Go runtime memory / MemoryLimit
	Sessions   float64 // sessions / CapacitySessions
}

var loadSignalNames = [5]string{"cpu", "packets", "queue_drops", "memory", "sessions"}

func (s LoadSignals) values() [5]float64 {
	return [5]float64{s.CPU, s.Packets, s.QueueDrops, s.Memory, s.Sessions}
}

func (s LoadSignals) worst() (int, float64) {
	v := s.values()
	w := 0
	for i := 1; i < len(v); i++ {
		if v[i] > v[w] || math.IsNaN(v[w]) {
			w = i
		}
	}
	return w, v[w]
}

// Max is the load: the worst signal.
func (s LoadSignals) Max() float64 {
	_, v := s.worst()
	return v
}

// Worst names the worst signal: "cpu", "packets", "queue_drops", "memory"
// or "sessions" (the first of them in that order on a tie, "cpu" when all
// are 0).
func (s LoadSignals) Worst() string {
	i, _ := s.worst()
	return loadSignalNames[i]
}

// ThrottleLevel says which joins an overloaded forwarder refuses. Each
// level refuses what the one below does and one class more (DESIGN.md's
// admission order); rejoins are never refused by level.
type ThrottleLevel uint8

const (
	ThrottleNone        ThrottleLevel = iota // admit every join
	ThrottleNewGroup                         // refuse new group calls
	ThrottleNewOneToOne                      // also new one-to-one calls
	ThrottleGroupJoin                        // also new members of ongoing group calls
	ThrottleSecondParty                      // also second parties of one-to-one calls
	numThrottleLevels
)

var throttleNames = [numThrottleLevels]string{"none", "new_group", "new_one_to_one", "group_join", "second_party"}

func (l ThrottleLevel) String() string {
	if l < numThrottleLevels {
		return throttleNames[l]
	}
	return "ThrottleLevel(" + strconv.Itoa(int(l)) + ")"
}

// JoinClass is what a join asks for, in the order admission refuses them
// (first refused first).
type JoinClass uint8

const (
	JoinNewGroup    JoinClass = iota + 1 // a new group call
	JoinNewOneToOne                      // a new one-to-one call
	JoinGroupMember                      // a new member of an ongoing group call
	JoinSecondParty                      // the second party completing a one-to-one call
	JoinRejoin                           // a member rejoining its own ongoing call (failover, migration)
)

var joinClassNames = [...]string{"", "new_group", "new_one_to_one", "group_member", "second_party", "rejoin"}

func (c JoinClass) String() string {
	if c >= JoinNewGroup && c <= JoinRejoin {
		return joinClassNames[c]
	}
	return "JoinClass(" + strconv.Itoa(int(c)) + ")"
}

// Admits reports whether level l admits class c: level L refuses the first
// L classes; JoinRejoin is always admitted. A level above
// ThrottleSecondParty refuses what ThrottleSecondParty does; an unknown class
// is refused first, like JoinNewGroup.
func (l ThrottleLevel) Admits(c JoinClass) bool {
	if c == JoinRejoin {
		return true
	}
	if c < JoinNewGroup || c > JoinRejoin {
		c = JoinNewGroup
	}
	return uint8(c) > uint8(l)
}

// throttle is the level state machine, fed one sample at a time (every
// 250 ms to 1 s) by the forwarder's control goroutine; not safe for
// concurrent use.
//
// Fast up: a sample whose load reaches a higher level's threshold moves there
// at once (to level 4 if the load is 1.0 or more). Slow down: one level at a
// time, only after the load stayed below the current level's threshold minus
// Hysteresis for HoldDown, timed from the first sample below. So a level is
// never left less than HoldDown after the previous change, and a load that
// oscillates around a threshold (within the hysteresis, or faster than
// HoldDown) changes the level once, not back and forth. Raising the level is
// never delayed: a load that really falls for HoldDown and then rises again
// gets a step down followed at once by a step up.
type throttle struct {
	cfg LoadConfig

	prev     LoadSample // the last sample, the base of the next rates
	havePrev bool
	sig      LoadSignals
	lvl      ThrottleLevel

	below      bool      // the load is below the current level's exit line
	belowSince time.Time // since this sample

	// pinned: an operator pinned the level at pin (admin.go); the load is
	// still measured, and the level follows it again once released.
	pinned bool
	pin    ThrottleLevel
}

// newThrottle returns a throttle at level none. cfg's zero fields take the
// defaults; the caller has validated it.
func newThrottle(cfg LoadConfig) *throttle {
	return &throttle{cfg: cfg.withDefaults()}
}

// update takes a sample and returns the level, the signals, and whether the
// level changed.
func (t *throttle) update(s LoadSample) (ThrottleLevel, LoadSignals, bool) {
	t.sig = t.signals(s)
	t.prev, t.havePrev = s, true
	x := t.sig.Max()
	old := t.lvl
	if up := t.levelFor(x); up > t.lvl {
		t.lvl = up
		t.below = false
		return t.lvl, t.sig, true
	}
	if !t.belowExit(x) {
		t.below = false
		return t.lvl, t.sig, false
	}
	if !t.below {
		t.below, t.belowSince = true, s.At
		return t.lvl, t.sig, false
	}
	if s.At.Sub(t.belowSince) >= t.cfg.HoldDown {
		t.lvl--
		// The next level down is timed afresh, from this sample.
		t.below, t.belowSince = t.belowExit(x), s.At
	}
	return t.lvl, t.sig, t.lvl != old
}

// level is the current level: the pinned one while an operator pins it.
func (t *throttle) level() ThrottleLevel {
	if t.pinned {
		return t.pin
	}
	return t.lvl
}

// admitted re-reads the sessions signal right after an admission, between
// two samples: the level may rise at once (never fall: that waits for the
// next sample and the hold-down).
func (t *throttle) admitted(sessions int) (ThrottleLevel, bool) {
	if t.cfg.CapacitySessions <= 0 {
		return t.lvl, false
	}
	t.sig.Sessions = float64(sessions) / float64(t.cfg.CapacitySessions)
	t.prev.Sessions = sessions
	if up := t.levelFor(t.sig.Max()); up > t.lvl {
		t.lvl, t.below = up, false
		return t.lvl, true
	}
	return t.lvl, false
}

// load is the last load (the worst signal of the last update).
func (t *throttle) load() float64 { return t.sig.Max() }

// levelFor is the highest level whose threshold x reaches.
func (t *throttle) levelFor(x float64) ThrottleLevel {
	l := ThrottleNone
	for i, th := range t.cfg.Thresholds {
		if x >= th {
			l = ThrottleLevel(i + 1)
		}
	}
	return l
}

// belowExit: x is low enough to start leaving the current level.
func (t *throttle) belowExit(x float64) bool {
	return t.lvl > ThrottleNone && x < t.cfg.Thresholds[t.lvl-1]-t.cfg.Hysteresis
}

// signals derives the normalised signals from s and the previous sample.
// The first sample gives no rates (only memory, a level, counts). A counter
// that went backwards (a reset) gives a zero rate, not a negative one. A
// sample no later than the previous one keeps the previous rates.
func (t *throttle) signals(s LoadSample) LoadSignals {
	var sig LoadSignals
	if t.cfg.MemoryLimit > 0 {
		sig.Memory = float64(s.MemoryBytes) / float64(t.cfg.MemoryLimit)
	}
	if t.cfg.CapacitySessions > 0 {
		sig.Sessions = float64(s.Sessions) / float64(t.cfg.CapacitySessions)
	}
	if !t.havePrev {
		return sig
	}
	dt := s.At.Sub(t.prev.At).Seconds()
	if dt <= 0 {
		sig.CPU, sig.Packets, sig.QueueDrops = t.sig.CPU, t.sig.Packets, t.sig.QueueDrops
		return sig
	}
	if d := s.CPUSeconds - t.prev.CPUSeconds; d > 0 {
		sig.CPU = d / dt / t.cfg.CPUCores
	}
	if t.cfg.CapacityPPS > 0 {
		sig.Packets = counterDelta(t.prev.Packets, s.Packets) / dt / t.cfg.CapacityPPS
	}
	sig.QueueDrops = counterDelta(t.prev.QueueDrops, s.QueueDrops) / dt / t.cfg.QueueDropsFull
	return sig
}

// counterDelta is how much a cumulative counter grew; 0 if it went back.
func counterDelta(prev, cur uint64) float64 {
	if cur < prev {
		return 0
	}
	return float64(cur - prev)
}
