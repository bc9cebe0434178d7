package main

import (
	"flag"
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/internal/httpserve"
)

// addMetricsFlags registers the forwarder's and the conductor's metrics
// listener flags (shared keys: one variable each for both).
func addMetricsFlags(fs *flag.FlagSet, listen *string, maxConns *int) {
	fs.StringVar(listen, "metrics-listen", "", "TCP ip:port for /metrics, /healthz and /readyz, on a private address "+
		"(never one devices reach); empty: none")
	fs.IntVar(maxConns, "metrics-max-conns", httpserve.Default().MaxConns, "connections the metrics listener keeps open at once; "+
		"more are closed at once and counted (callrelay_http_connections_refused_total)")
}

// serveMetrics serves Prometheus metrics from reg (plus Go, process and
// its own connection metrics) and health endpoints: /healthz is 200 while
// the process runs, /readyz 503 while ready says no (a draining forwarder:
// a load balancer stops sending new devices). The server is bounded
// (internal/httpserve): timeouts on every phase, at most maxConns
// connections.
func serveMetrics(addr string, maxConns int, reg *prometheus.Registry, ready func() bool, log *zap.Logger) (func(), error) {
	if maxConns < 1 {
		return nil, fmt.Errorf("--metrics-max-conns %d: want at least 1", maxConns)
	}
	cfg := httpserve.Default()
	cfg.Name, cfg.MaxConns, cfg.Logger = "metrics", maxConns, log
	srv, err := httpserve.Listen(addr, cfg)
	if err != nil {
		return nil, fmt.Errorf("--metrics-listen %s: %w", addr, err)
	}
	reg.MustRegister(srv.Collector(), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	go func() {
		if err := srv.Serve(mux); err != nil {
			log.Error("metrics server", zap.Error(err))
		}
	}()
	log.Info("metrics serving", zap.Stringer("addr", srv.Addr()), zap.Int("max_conns", maxConns))
	return func() { _ = srv.Close() }, nil
}
