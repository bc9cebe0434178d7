package forwarder

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// latencyHistogram is a fixed-bucket histogram one goroutine observes
// into and the metrics collector reads, without locks.
type latencyHistogram struct {
	counts [len(latencyBuckets) + 1]atomic.Uint64 // the last counts what is above every bound
	sumNS  atomic.Int64
}

// latencyBuckets are the upper bounds, in seconds.
var latencyBuckets = [...]float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}

func (h *latencyHistogram) observe(d time.Duration) {
	s := d.Seconds()
	i := 0
	for i < len(latencyBuckets) && s > latencyBuckets[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sumNS.Add(int64(d))
}

// totals is how many durations were observed and their sum in
// microseconds (a LoadReport's operations section).
func (h *latencyHistogram) totals() (n, sumUs uint64) {
	for i := range h.counts {
		n += h.counts[i].Load()
	}
	return n, uint64(max(0, h.sumNS.Load()) / 1000)
}

// metric is the histogram as a Prometheus constant metric (cumulative
// buckets).
func (h *latencyHistogram) metric(desc *prometheus.Desc) prometheus.Metric {
	buckets := make(map[float64]uint64, len(latencyBuckets))
	var n uint64
	for i, ub := range latencyBuckets {
		n += h.counts[i].Load()
		buckets[ub] = n
	}
	n += h.counts[len(latencyBuckets)].Load()
	return prometheus.MustNewConstHistogram(desc, n, time.Duration(h.sumNS.Load()).Seconds(), buckets)
}

// measureNATS times a NATS round trip every natsRTTEvery until ctx ends
// (off the control goroutine: a round trip waits on the network).
func (f *Forwarder) measureNATS(ctx context.Context) {
	t := time.NewTicker(natsRTTEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if d, err := f.cfg.Cluster.NATS.RTT(); err == nil {
				f.natsRTT.observe(d)
			} else {
				f.natsErrors.Add(1)
			}
		}
	}
}

const natsRTTEvery = 5 * time.Second
