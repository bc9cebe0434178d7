package main

import (
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/conductor"
	"github.com/callrelay/callrelay/internal/logging"
	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// runConductor runs one conductor instance until the context ends.
func runConductor(ctx context.Context, args []string) error {
	cfg := conductor.Default()
	fs := flag.NewFlagSet("conductor", flag.ContinueOnError)
	fs.StringVar(&cfg.ID, "id", envOr("CALLRELAY_ID", cfg.ID), "conductor id (a per-start suffix is added) (env CALLRELAY_ID)")
	clusterKey := fs.String("cluster-key", envOr("CALLRELAY_CLUSTER_KEY", ""), "64 hex digits, the forwarders' cluster key (env CALLRELAY_CLUSTER_KEY)")
	redisURL := fs.String("redis-url", envOr("CALLRELAY_REDIS_URL", ""), "redis:// or rediss:// URL of the state store (env CALLRELAY_REDIS_URL)")
	natsURL := fs.String("nats-url", envOr("CALLRELAY_NATS_URL", ""), "NATS server URL(s), comma-separated (env CALLRELAY_NATS_URL)")
	fs.StringVar(&cfg.Subject, "subject", envOr("CALLRELAY_SUBJECT", cfg.Subject), "NATS subject prefix, the forwarders' one")
	fs.IntVar(&cfg.Partitions, "partitions", cfg.Partitions, "partitions calls hash into; the forwarders' number")
	fs.IntVar(&cfg.MaxPartitions, "max-partitions", cfg.MaxPartitions, "hold at most this many partitions (0: as many as are free)")
	fs.DurationVar(&cfg.LeaseTTL, "lease-ttl", cfg.LeaseTTL, "partition lease TTL: the bulk of the decision gap when a conductor dies")
	fs.IntVar(&cfg.MaxForwarded, "max-forwarded", cfg.MaxForwarded, "audio streams forwarded per call: the dominant speaker and the most recent speakers")
	fs.DurationVar(&cfg.RecentWindow, "recent-window", cfg.RecentWindow, "a member who spoke within this window stays in the audio forwarding set")
	metricsListen := fs.String("metrics-listen", envOr("CALLRELAY_METRICS_LISTEN", ""), "TCP ip:port for /metrics, /healthz and /readyz; empty: none")
	level := fs.String("log-level", envOr("CALLRELAY_LOG_LEVEL", "info"), "debug, info, warn or error (env CALLRELAY_LOG_LEVEL)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log, err := logging.New(*level)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	cfg.Logger = log
	if *clusterKey != "" {
		if cfg.Key, err = protocol.ParseClusterKey(*clusterKey); err != nil {
			return fmt.Errorf("conductor: --cluster-key: %w", err)
		}
	}
	if *redisURL != "" {
		st, err := statestore.OpenRedis(*redisURL, statestore.Config{})
		if err != nil {
			return fmt.Errorf("conductor: --redis-url: %w", err)
		}
		defer func() { _ = st.Close() }()
		cfg.Store, cfg.Leases = st, st
	}
	if *natsURL != "" {
		nc, err := nats.Connect(*natsURL, nats.Name("callrelay conductor "+cfg.ID), nats.MaxReconnects(-1),
			nats.ReconnectWait(200*time.Millisecond),
			nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { log.Warn("NATS disconnected", zap.Error(err)) }),
			nats.ReconnectHandler(func(c *nats.Conn) { log.Info("NATS reconnected", zap.String("url", c.ConnectedUrl())) }))
		if err != nil {
			return fmt.Errorf("conductor: --nats-url: %w", err)
		}
		defer nc.Close()
		cfg.NATS = nc
	}
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	c, err := conductor.New(cfg)
	if err != nil {
		return err
	}
	if *metricsListen != "" {
		stop, err := serveMetrics(*metricsListen, reg, func() bool { return len(c.Owned()) > 0 }, log)
		if err != nil {
			return err
		}
		defer stop()
	}
	// The first signal releases the leases (a successor takes over at
	// once, without waiting for the TTL); the second exits at once.
	return c.Run(ctx)
}
