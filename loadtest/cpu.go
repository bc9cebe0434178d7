package loadtest

import "time"

// cpuMeter turns process CPU time into percent of one core between
// samples.
type cpuMeter struct {
	lastCPU  time.Duration
	lastWall time.Time
}

func newCPUMeter() *cpuMeter {
	c, _ := processCPU()
	return &cpuMeter{lastCPU: c, lastWall: time.Now()}
}

// sample returns the CPU used since the last sample, in percent of one
// core (0 when it cannot be measured).
func (m *cpuMeter) sample() float64 {
	c, ok := processCPU()
	now := time.Now()
	wall := now.Sub(m.lastWall)
	used := c - m.lastCPU
	m.lastCPU, m.lastWall = c, now
	if !ok || wall <= 0 {
		return 0
	}
	return 100 * float64(used) / float64(wall)
}
