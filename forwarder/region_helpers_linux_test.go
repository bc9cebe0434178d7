package forwarder_test

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/regions"
)

// Helpers of the region tests (region_netns_linux_test.go). The
// topology, the env (Redis and NATS on the host's loopback: the emulated
// paths are the ones media takes, devices to forwarders and trunks between
// them), forwarders started in a region's namespace and the hand-written
// city devices are internal/testkit/regions', shared with systemtest.

// regionRTT is f's published trunk RTT to region (0: none yet).
func regionRTT(f *forwarder.Forwarder, region string) time.Duration {
	return regions.RegionRTT(f, region)
}

// gauge reads a gauge of f's collector by its labels.
func gauge(t *testing.T, f *forwarder.Forwarder, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	reg := prometheus.NewRegistry()
	require.NoError(t, reg.Register(f.Collector()))
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if want, ok := labels[l.GetName()]; ok && want != l.GetValue() {
					continue next
				}
			}
			return m.GetGauge().GetValue(), true
		}
	}
	return 0, false
}
