package dashboard

import (
	"net/http"
	"strconv"

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
	// By region: the forwarders' --region labels (the operator's few
	// names; "(none)" for forwarders without one).
	mRegionLevel = prometheus.NewDesc("callrelay_dashboard_region_forwarders",
		"Forwarders by region and state: a throttle level 0..4 for those up, down, or unknown (up without a load report).",
		[]string{"region", "level"}, nil)
	mRegionLoad = prometheus.NewDesc("callrelay_dashboard_region_load_max_ratio",
		"The worst load signal of the most loaded forwarder up in the region (1 = at capacity).", []string{"region"}, nil)
	mConductors    = prometheus.NewDesc("callrelay_dashboard_conductors", "Conductors heard, by state (up, down).", []string{"state"}, nil)
	mDecideLatency = prometheus.NewDesc("callrelay_dashboard_conductor_decision_latency_seconds",
		"The worst decision latency quantile (0.5, 0.99) among the region's conductors up, from their last reports "+
			"(metadata arrival to decision sent, over the report's interval).", []string{"region", "quantile"}, nil)
	mDecideRate = prometheus.NewDesc("callrelay_dashboard_conductor_decisions_per_second",
		"Decisions per second sent by the region's conductors up, from their last reports.", []string{"region"}, nil)
	mCondDropped = prometheus.NewDesc("callrelay_dashboard_conductor_reports_dropped_total",
		"Conductor reports dropped, by reason: forged (tag), malformed, stale (not newer: replayed or reordered), skewed (at more than 10 s off), overflow.",
		[]string{"reason"}, nil)
	mRegionJoins = prometheus.NewDesc("callrelay_dashboard_region_joins_total",
		"Joins by region, class and outcome (admitted, refused), summed over the forwarders on the page from their load reports "+
			"(a forwarder that restarts or leaves the page makes the sum go back: rate() takes it as a reset).",
		[]string{"region", "class", "outcome"}, nil)
	// Regional spill-over, kept by the dashboard from the growth of the
	// load reports' spill-over counters (spill.go).
	mSpillJoins = prometheus.NewDesc("callrelay_dashboard_region_spill_joins_total",
		"Joins a region's forwarders refused for load and referred to a forwarder of another region (regional spill-over), "+
			"by referring region (from) and target region (to), from the growth of their load reports' spill-over counters. "+
			"Kept by the dashboard: it does not go back when a forwarder restarts or leaves the page.",
		[]string{"from", "to"}, nil)
	mSpillRefused = prometheus.NewDesc("callrelay_dashboard_region_spill_refused_total",
		"Joins a region's forwarders refused at the spill level because no other region with room was within the latency "+
			"budget (or none was measured), from their load reports; kept by the dashboard like the spill joins.",
		[]string{"region"}, nil)
)

type collector struct{ s *Server }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- mUp
	ch <- mThrottling
	ch <- mDropped
	ch <- mMalformed
	ch <- mVerdict
	ch <- mRegionLevel
	ch <- mRegionLoad
	ch <- mRegionJoins
	ch <- mConductors
	ch <- mDecideLatency
	ch <- mDecideRate
	ch <- mCondDropped
	ch <- mTrunkRTT
	ch <- mSpillJoins
	ch <- mSpillRefused
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
	collectRegions(ch, snap.Forwarders)
	collectTrunks(ch, snap.Forwarders)
	collectSpill(ch, c.s.fwd)
	collectConductors(ch, c.s)
}

// collectConductors exports what the conductors' last reports say, by
// region, and the reports dropped.
func collectConductors(ch chan<- prometheus.Metric, s *Server) {
	conds, drops := s.cond.view(s.cfg.Now(), s.cfg.DownAfter)
	up, down := 0, 0
	type region struct{ p50, p99, rate float64 }
	by := map[string]*region{}
	for _, c := range conds {
		if !c.Up {
			down++
			continue
		}
		up++
		name := c.Region
		if name == "" {
			name = seriesNoRegion
		}
		r := by[name]
		if r == nil {
			r = &region{}
			by[name] = r
		}
		r.p50, r.p99, r.rate = max(r.p50, c.P50Ms/1000), max(r.p99, c.P99Ms/1000), r.rate+c.PerSecond
	}
	ch <- prometheus.MustNewConstMetric(mConductors, prometheus.GaugeValue, float64(up), "up")
	ch <- prometheus.MustNewConstMetric(mConductors, prometheus.GaugeValue, float64(down), "down")
	for name, r := range by {
		ch <- prometheus.MustNewConstMetric(mDecideLatency, prometheus.GaugeValue, r.p50, name, "0.5")
		ch <- prometheus.MustNewConstMetric(mDecideLatency, prometheus.GaugeValue, r.p99, name, "0.99")
		ch <- prometheus.MustNewConstMetric(mDecideRate, prometheus.GaugeValue, r.rate, name)
	}
	for reason, n := range map[string]uint64{"forged": drops.Forged, "malformed": drops.Malformed, "stale": drops.Stale,
		"skewed": drops.Skewed, "overflow": drops.Overflow} {
		ch <- prometheus.MustNewConstMetric(mCondDropped, prometheus.CounterValue, float64(n), reason)
	}
}

// classLabels name the join classes in metrics, as the forwarder's do.
var classLabels = [6]string{"unclassified", "new_group", "new_one_to_one", "group_member", "second_party", "rejoin"}

// collectRegions exports the per-region series.
func collectRegions(ch chan<- prometheus.Metric, fwds []ForwarderView) {
	type region struct {
		levels            map[string]int
		load              int
		admitted, refused [6]uint64
	}
	by := map[string]*region{}
	for i := range fwds {
		f := &fwds[i]
		name := f.Region
		if name == "" {
			name = seriesNoRegion
		}
		r := by[name]
		if r == nil {
			r = &region{levels: map[string]int{"0": 0, "1": 0, "2": 0, "3": 0, "4": 0, "down": 0, "unknown": 0}, load: 0}
			by[name] = r
		}
		switch {
		case !f.Up:
			r.levels["down"]++
		case f.Level < 0:
			r.levels["unknown"]++
		default:
			r.levels[strconv.Itoa(f.Level)]++
			r.load = max(r.load, f.Load)
		}
		for _, c := range f.Classes {
			r.admitted[c.Class] += c.AdmittedTotal
			r.refused[c.Class] += c.RefusedTotal
		}
	}
	for name, r := range by {
		for level, n := range r.levels {
			ch <- prometheus.MustNewConstMetric(mRegionLevel, prometheus.GaugeValue, float64(n), name, level)
		}
		ch <- prometheus.MustNewConstMetric(mRegionLoad, prometheus.GaugeValue, float64(r.load)/1000, name)
		for c, class := range classLabels {
			ch <- prometheus.MustNewConstMetric(mRegionJoins, prometheus.CounterValue, float64(r.admitted[c]), name, class, "admitted")
			ch <- prometheus.MustNewConstMetric(mRegionJoins, prometheus.CounterValue, float64(r.refused[c]), name, class, "refused")
		}
	}
}

// metricsHandler serves the dashboard's metrics with those of its HTTP
// listener (callrelay_http_*), Go and the process.
func (s *Server) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{s}, s.adminReqs, s.http.Collector(), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}
