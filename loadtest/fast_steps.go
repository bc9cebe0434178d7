package loadtest

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// startFast starts the fast engine when the plan asks for it, and the
// relay's CPU meter when the plan names the relay's process.
func (r *runner) startFast() error {
	if pids := r.p.relayPIDs(); len(pids) > 0 {
		m, err := newProcCPU(pids...)
		if err != nil {
			return err
		}
		r.relayCPU = m
	}
	if r.p.Engine != EngineFast {
		return nil
	}
	e, err := newFastEngine(r)
	if err != nil {
		return err
	}
	r.fast = e
	return nil
}

// stepCost fills a ramp step's generator and relay CPU from its seconds,
// and says whether the generator was the limit in it: its CPU above 85 %
// of its cores, its ticks late by more than 10 ms on average, or its
// sockets dropping what the relay sent. A step limited by the generator
// does not measure the relay: it is marked, counted broken, and the ramp
// stops there.
func (r *runner) stepCost(st *Step, secs []Second) {
	var gen, relay, lag float64
	n := 0
	for _, s := range secs {
		if float64(s.T) >= st.StartS && float64(s.T) < st.EndS {
			gen += s.GeneratorCPUPct
			relay += s.RelayCPUPct
			lag += s.TickLagMs
			n++
		}
	}
	if n == 0 {
		return
	}
	st.GeneratorCPUPct = round3(gen / float64(n))
	dropped := r.mediaDropped.Load()
	bound := st.GeneratorCPUPct > 85*float64(maxProcs()) || lag/float64(n) > ms(lateTick) || dropped > r.stepDropped
	r.stepDropped = dropped
	if r.relayCPU != nil {
		st.RelayCPUPct = round3(relay / float64(n))
		if st.RelayCPUPct > 0 {
			st.PacketsPerRelayCPUSecond = round3(st.Measures.RelayPacketsPerSec / (st.RelayCPUPct / 100))
		}
	}
	if bound && r.fast != nil {
		st.GeneratorBound = true
		st.Met = false
		st.Broken = append(st.Broken, "generator_bound")
	}
}

// generatorBoundKnee withdraws a knee the generator caused: when the step
// that ended the ramp (the first broken, else the last) was generator
// bound, the relay's knee is not known.
func generatorBoundKnee(k *Knee, steps []Step) {
	if len(steps) == 0 {
		return
	}
	end := steps[len(steps)-1]
	if k.BrokeAtStep >= 0 && k.BrokeAtStep < len(steps) {
		end = steps[k.BrokeAtStep]
	}
	if end.GeneratorBound {
		k.GeneratorBound, k.Found = true, false
	}
}

// generatorCost fills the generator's packets per CPU-second over the run.
func generatorCost(g *GeneratorHealth, res *Result) {
	var cpuS float64
	for _, s := range res.Seconds {
		cpuS += s.GeneratorCPUPct / 100
	}
	pkts := float64(res.Totals.All.PacketsSent + res.Totals.All.PacketsReceived)
	if cpuS > 0 && pkts > 0 {
		g.PacketsPerCPUSecond = round3(pkts / cpuS)
		g.CPUPerPacketUs = round3(cpuS * 1e6 / pkts)
	}
}

// procCPU reads other processes' CPU time from /proc/<pid>/stat, summed:
// the relay's, or both forwarders' of calls spanning two over the trunk.
type procCPU struct {
	pids     []int
	lastCPU  time.Duration
	lastWall time.Time
}

func newProcCPU(pids ...int) (*procCPU, error) {
	m := &procCPU{pids: pids}
	c, err := m.total()
	if err != nil {
		return nil, err
	}
	m.lastCPU, m.lastWall = c, time.Now()
	return m, nil
}

// total is the processes' CPU time together.
func (m *procCPU) total() (time.Duration, error) {
	var sum time.Duration
	for _, pid := range m.pids {
		c, err := ProcessCPU(pid)
		if err != nil {
			return 0, err
		}
		sum += c
	}
	return sum, nil
}

// sample is the processes' CPU since the last sample, in percent of one
// core (0 for a nil meter or a process gone).
func (m *procCPU) sample() float64 {
	if m == nil {
		return 0
	}
	c, err := m.total()
	now := time.Now()
	wall := now.Sub(m.lastWall)
	used := c - m.lastCPU
	m.lastWall = now
	if err != nil || wall <= 0 {
		return 0
	}
	m.lastCPU = c
	return 100 * float64(used) / float64(wall)
}

// clockTick is USER_HZ, the unit of /proc/<pid>/stat's times (100 on
// every Linux architecture Go runs on).
const clockTick = 10 * time.Millisecond

// ProcessCPU is a process's user + system CPU time, from /proc/<pid>/stat
// (Linux).
func ProcessCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces: fields count from the
	// last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("loadtest: /proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("loadtest: /proc/%d/stat: %d fields", pid, len(f))
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseUint(f[12], 10, 64) // field 15
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("loadtest: /proc/%d/stat: bad times", pid)
	}
	return time.Duration(utime+stime) * clockTick, nil //nolint:gosec // CPU ticks
}

func maxProcs() int { return runtime.GOMAXPROCS(0) }

// validateEngine checks Plan.Engine and, for the fast one, what of the
// plan it can run.
func (p Plan) validateEngine() error {
	switch p.Engine {
	case EngineFull:
		return nil
	case EngineFast:
		if err := validateFast(&p); err != nil {
			return fmt.Errorf("%w: engine fast: %w", ErrPlan, err)
		}
		return nil
	}
	return fmt.Errorf("%w: engine = %q, want full or fast", ErrPlan, p.Engine)
}
