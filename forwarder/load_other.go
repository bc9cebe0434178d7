//go:build !linux

package forwarder

import "runtime/metrics"

// processCPUSeconds is the portable fallback: the Go runtime's estimate of
// the CPU time its threads used (available minus idle). It leaves out
// threads the runtime does not run (cgo) and is updated in steps, not
// continuously; production forwarders run on Linux.
func processCPUSeconds() float64 {
	s := []metrics.Sample{
		{Name: "/cpu/classes/total:cpu-seconds"},
		{Name: "/cpu/classes/idle:cpu-seconds"},
	}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindFloat64 || s[1].Value.Kind() != metrics.KindFloat64 {
		return 0
	}
	return max(0, s[0].Value.Float64()-s[1].Value.Float64())
}
