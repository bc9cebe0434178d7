package httpserve

import "github.com/prometheus/client_golang/prometheus"

var (
	mOpen = prometheus.NewDesc("callrelay_http_connections",
		"Connections open now on the process's HTTP listener (metrics and health, or the dashboard).", nil, nil)
	mMax = prometheus.NewDesc("callrelay_http_connections_max",
		"The most connections the HTTP listener keeps open at once.", nil, nil)
	mRefused = prometheus.NewDesc("callrelay_http_connections_refused_total",
		"Connections closed at once by the HTTP listener because it was at its cap (in all, or from one source when it has a cap per source).", nil, nil)
)

// Collector exports the listener's connections open, their cap and the
// connections refused over it, for the process's registry.
func (s *Server) Collector() prometheus.Collector { return collector{s} }

type collector struct{ s *Server }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- mOpen
	ch <- mMax
	ch <- mRefused
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.Stats()
	ch <- prometheus.MustNewConstMetric(mOpen, prometheus.GaugeValue, float64(st.Open))
	ch <- prometheus.MustNewConstMetric(mMax, prometheus.GaugeValue, float64(st.Max))
	ch <- prometheus.MustNewConstMetric(mRefused, prometheus.CounterValue, float64(st.Refused))
}
