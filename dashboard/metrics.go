package dashboard

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// The dashboard's own /metrics: what it sees of the cluster and what it
// dropped, read from a snapshot at each scrape. Labels are bounded
// (reasons, statuses), never forwarder or call ids.
var (
	mUp         = prometheus.NewDesc("callrelay_dashboard_forwarders", "Forwarders heard, by state (up, down).", []string{"state"}, nil)
	mThrottling = prometheus.NewDesc("callrelay_dashboard_forwarders_throttling",
		"Forwarders whose last report shows a throttle level above none.", nil, nil)
	mDropped = prometheus.NewDesc("callrelay_dashboard_heartbeats_dropped_total",
		"Heartbeats and load reports dropped, by reason.", []string{"reason"}, nil)
	mMalformed = prometheus.NewDesc("callrelay_dashboard_malformed_records_total",
		"Records read from the state store that did not decode, by record (call, checkpoint, lease).", []string{"record"}, nil)
	mVerdict = prometheus.NewDesc("callrelay_dashboard_verdict",
		"1 for the current cluster verdict (OK, DEGRADED, THROTTLING, DOWN).", []string{"verdict"}, nil)
)

type collector struct{ s *Server }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- mUp
	ch <- mThrottling
	ch <- mDropped
	ch <- mMalformed
	ch <- mVerdict
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	snap := c.s.Snapshot()
	up, down, throttling := 0, 0, 0
	for _, f := range snap.Forwarders {
		if f.Up {
			up++
		} else {
			down++
		}
		if f.Level > 0 {
			throttling++
		}
	}
	ch <- prometheus.MustNewConstMetric(mUp, prometheus.GaugeValue, float64(up), "up")
	ch <- prometheus.MustNewConstMetric(mUp, prometheus.GaugeValue, float64(down), "down")
	ch <- prometheus.MustNewConstMetric(mThrottling, prometheus.GaugeValue, float64(throttling))
	d := snap.Dropped
	for reason, n := range map[string]uint64{"forged": d.Forged, "malformed": d.Malformed, "unexpected": d.Unexpected,
		"stale": d.Stale, "overflow": d.Overflow} {
		ch <- prometheus.MustNewConstMetric(mDropped, prometheus.CounterValue, float64(n), reason)
	}
	m := &c.s.malformed
	for record, n := range map[string]uint64{"call": m.call.Load(), "checkpoint": m.checkpoint.Load(), "lease": m.lease.Load()} {
		ch <- prometheus.MustNewConstMetric(mMalformed, prometheus.CounterValue, float64(n), record)
	}
	for _, v := range []string{"OK", "DEGRADED", "THROTTLING", "DOWN"} {
		x := 0.0
		if snap.Verdict.Status == v {
			x = 1
		}
		ch <- prometheus.MustNewConstMetric(mVerdict, prometheus.GaugeValue, x, v)
	}
}

// metricsHandler serves the dashboard's metrics with those of its HTTP
// listener (callrelay_http_*), Go and the process.
func (s *Server) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{s}, s.http.Collector(), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}
