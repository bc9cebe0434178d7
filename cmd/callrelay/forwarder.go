package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/logging"
	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// runForwarder runs one forwarder until the context ends.
func runForwarder(ctx context.Context, args []string) error {
	cfg := forwarder.Default()
	readers, err := envInt("CALLRELAY_READERS", cfg.Readers)
	if err != nil {
		return err
	}
	maxSessions, err := envInt("CALLRELAY_MAX_SESSIONS", 0)
	if err != nil {
		return err
	}
	fs := flag.NewFlagSet("forwarder", flag.ContinueOnError)
	fs.StringVar(&cfg.Listen, "listen", envOr("CALLRELAY_LISTEN", cfg.Listen), "UDP ip:port to serve (env CALLRELAY_LISTEN)")
	pubKey := fs.String("public-key", envOr("CALLRELAY_PUBLIC_KEY", ""), "base64 Ed25519 public key of the token signer (env CALLRELAY_PUBLIC_KEY)")
	fs.IntVar(&cfg.Readers, "readers", readers, "reader goroutines on SO_REUSEPORT sockets (env CALLRELAY_READERS)")
	fs.IntVar(&cfg.MaxSessions, "max-sessions", maxSessions, "refuse new sessions beyond this many with 508; 0 = no limit (env CALLRELAY_MAX_SESSIONS)")
	fs.DurationVar(&cfg.KeepaliveInterval, "keepalive", cfg.KeepaliveInterval, "keepalive interval devices are told to use")
	fs.DurationVar(&cfg.IdleTimeout, "idle-timeout", cfg.IdleTimeout, "forget sessions silent this long")
	alt := fs.String("alternate", envOr("CALLRELAY_ALTERNATE", ""), "ip:port to send joins to while draining (env CALLRELAY_ALTERNATE)")
	fs.StringVar(&cfg.Cluster.ID, "id", envOr("CALLRELAY_ID", ""), "forwarder id in the cluster and the state store, stable across restarts (env CALLRELAY_ID)")
	fs.StringVar(&cfg.Cluster.TrunkListen, "trunk-listen", envOr("CALLRELAY_TRUNK_LISTEN", ""), "internal UDP ip:port for other forwarders; empty: no cluster (env CALLRELAY_TRUNK_LISTEN)")
	trunkAdv := fs.String("trunk-advertise", envOr("CALLRELAY_TRUNK_ADVERTISE", ""), "trunk ip:port as other forwarders reach it (default: the bound one)")
	mediaAdv := fs.String("media-advertise", envOr("CALLRELAY_MEDIA_ADVERTISE", ""), "media ip:port as devices reach it (default: the bound one)")
	clusterKey := fs.String("cluster-key", envOr("CALLRELAY_CLUSTER_KEY", ""), "64 hex digits shared by the cluster (env CALLRELAY_CLUSTER_KEY; `callrelay token cluster-key`)")
	redisURL := fs.String("redis-url", envOr("CALLRELAY_REDIS_URL", ""), "redis:// or rediss:// URL of the call state store; empty: none (env CALLRELAY_REDIS_URL)")
	natsCfg := addNATSFlags(fs)
	fs.Float64Var(&cfg.Load.CapacityPPS, "capacity-pps", cfg.Load.CapacityPPS, "packets/s (in + out) this forwarder is sized for: a load signal for throttling; 0 = not a signal")
	fs.IntVar(&cfg.Load.CapacitySessions, "capacity-sessions", cfg.Load.CapacitySessions, "sessions this forwarder is sized for: a load signal for throttling; 0 = not a signal")
	fs.Float64Var(&cfg.Load.CPUCores, "cpu-cores", cfg.Load.CPUCores, "CPU cores the process may use: 100 % of the CPU load signal")
	fs.Uint64Var(&cfg.Load.MemoryLimit, "memory-limit", cfg.Load.MemoryLimit, "bytes of Go memory that count as 100 % load; 0 = not a signal")
	fs.IntVar(&cfg.Cluster.Partitions, "partitions", cfg.Cluster.Partitions, "conductor partitions calls hash into; the same on every forwarder and conductor")
	fs.DurationVar(&cfg.DrainDeadline, "drain-deadline", cfg.DrainDeadline, "on SIGTERM, stop admitting, ask sessions to move, and exit when empty or after this long")
	metricsListen := fs.String("metrics-listen", envOr("CALLRELAY_METRICS_LISTEN", ""), "TCP ip:port for /metrics, /healthz and /readyz; empty: none (env CALLRELAY_METRICS_LISTEN)")
	level := fs.String("log-level", envOr("CALLRELAY_LOG_LEVEL", "info"), "debug, info, warn or error (env CALLRELAY_LOG_LEVEL)")
	statsEvery := fs.Duration("stats-every", 10*time.Second, "log a stats line this often (0: never)")
	fs.IntVar(&cfg.Adapt.NackCacheBytes, "nack-cache-bytes", cfg.Adapt.NackCacheBytes, "bytes of each sender's recent packets kept to answer NACKs (512 KiB: about 4 s at 1 Mbit/s)")
	fs.DurationVar(&cfg.Adapt.NackResendGap, "nack-resend-gap", cfg.Adapt.NackResendGap, "least time between two resends of one packet (about a round trip)")
	videoExt := fs.Uint("video-frame-ext-id", uint(cfg.Adapt.VideoFrameExtensionID), "RFC 8285 id of the video frame header extension (layer, key frame), 1..14")
	absExt := fs.Uint("abs-send-time-ext-id", uint(cfg.Adapt.AbsSendTimeExtensionID), "RFC 8285 id of the abs-send-time header extension, 1..14")
	if done, err := parseWithConfig(fs, args, os.Stdout); err != nil || done {
		return err
	}
	log, err := logging.New(*level)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	cfg.Logger = log
	if *pubKey != "" {
		pk, err := protocol.ParsePublicKey(*pubKey)
		if err != nil {
			return fmt.Errorf("forwarder: --public-key: %w", err)
		}
		if cfg.Verifier, err = protocol.NewTokenVerifier(pk); err != nil {
			return err
		}
	}
	if *videoExt > 14 || *absExt > 14 {
		return fmt.Errorf("forwarder: --video-frame-ext-id %d, --abs-send-time-ext-id %d: want 1..14", *videoExt, *absExt)
	}
	cfg.Adapt.VideoFrameExtensionID, cfg.Adapt.AbsSendTimeExtensionID = uint8(*videoExt), uint8(*absExt)
	if *alt != "" {
		if cfg.Alternate, err = netip.ParseAddrPort(*alt); err != nil {
			return fmt.Errorf("forwarder: --alternate %q: want ip:port", *alt)
		}
	}
	if err := parseAddr("--trunk-advertise", *trunkAdv, &cfg.Cluster.TrunkAdvertise); err != nil {
		return err
	}
	if err := parseAddr("--media-advertise", *mediaAdv, &cfg.Cluster.MediaAdvertise); err != nil {
		return err
	}
	if *clusterKey != "" {
		if cfg.Cluster.Key, err = protocol.ParseClusterKey(*clusterKey); err != nil {
			return fmt.Errorf("forwarder: --cluster-key: %w", err)
		}
	}
	closeDeps, err := connectDeps(&cfg, *redisURL, natsCfg, log)
	if err != nil {
		return err
	}
	defer closeDeps()
	f, err := forwarder.New(cfg)
	if err != nil {
		return err
	}
	if *statsEvery > 0 {
		go logStats(ctx, log, f, *statsEvery)
	}
	if *metricsListen != "" {
		reg := prometheus.NewRegistry()
		reg.MustRegister(f.Collector())
		stopHTTP, err := serveMetrics(*metricsListen, reg, func() bool { return !f.Stats().Draining }, log)
		if err != nil {
			return err
		}
		defer stopHTTP()
	}
	// The first signal drains: no new sessions, sessions asked to move,
	// exit when empty or at the deadline (the second signal exits at once).
	runCtx, stop := context.WithCancel(context.Background())
	defer stop()
	done := make(chan error, 1)
	go func() { done <- f.Run(runCtx) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	dctx, cancel := context.WithTimeout(context.Background(), cfg.DrainDeadline)
	_ = f.Shutdown(dctx)
	cancel()
	stop()
	return <-done
}

func parseAddr(flag, v string, dst *netip.AddrPort) error {
	if v == "" {
		return nil
	}
	ap, err := netip.ParseAddrPort(v)
	if err != nil {
		return fmt.Errorf("forwarder: %s %q: want ip:port", flag, v)
	}
	*dst = ap
	return nil
}

// connectDeps opens the state store and NATS the flags name.
func connectDeps(cfg *forwarder.Config, redisURL string, natsCfg *natsConfig, log *zap.Logger) (func(), error) {
	var closers []func()
	closeAll := func() {
		for _, c := range closers {
			c()
		}
	}
	if redisURL != "" {
		st, err := statestore.OpenRedis(redisURL, statestore.Config{})
		if err != nil {
			return nil, fmt.Errorf("forwarder: --redis-url: %w", err)
		}
		cfg.Cluster.Store = st
		closers = append(closers, func() { _ = st.Close() })
	}
	nc, err := connectNATS(natsCfg, "callrelay forwarder "+cfg.Cluster.ID, log)
	if err != nil {
		closeAll()
		return nil, fmt.Errorf("forwarder: %w", err)
	}
	if nc != nil {
		cfg.Cluster.NATS = nc
		closers = append(closers, nc.Close)
	}
	return closeAll, nil
}

func logStats(ctx context.Context, log *zap.Logger, f *forwarder.Forwarder, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s := f.Stats()
			log.Info("stats", zap.Int("sessions", s.Sessions), zap.Int("calls", s.Calls),
				zap.Uint64("packets_in", s.PacketsIn), zap.Uint64("packets_out", s.PacketsOut),
				zap.Uint64("drops", s.TotalDrops()), zap.Uint64("trunk_in", s.TrunkIn), zap.Uint64("trunk_out", s.TrunkOut),
				zap.Int("peers", s.Peers), zap.Bool("state_degraded", s.StateDegraded), zap.Int("state_queued", s.StateQueued),
				zap.Uint64("state_errors", s.StateErrors), zap.Uint64("cluster_bad", s.ClusterBad),
				zap.Stringer("throttle", s.ThrottleLevel), zap.Float64("load", s.Load.Max()), zap.String("load_worst", s.Load.Worst()))
		}
	}
}

// envInt reads an integer environment variable; a value that is set but
// not an integer is an error, not a silent default.
func envInt(name string, def int) (int, error) {
	v, ok := os.LookupEnv(name)
	if !ok || v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("%s=%q: want an integer", name, v)
	}
	return n, nil
}

// serveMetrics serves Prometheus metrics from reg (plus Go and process
// metrics) and health endpoints: /healthz is 200 while the process runs,
// /readyz 503 while ready says no (a draining forwarder: a load balancer
// stops sending new devices).
func serveMetrics(addr string, reg *prometheus.Registry, ready func() bool, log *zap.Logger) (func(), error) {
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
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
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-listen %s: %w", addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server", zap.Error(err))
		}
	}()
	log.Info("metrics serving", zap.Stringer("addr", l.Addr()))
	return func() { _ = srv.Close() }, nil
}
