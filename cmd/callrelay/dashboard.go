package main

import (
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/dashboard"
	"github.com/callrelay/callrelay/internal/logging"
	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// runDashboard serves the live throttling dashboard until the context ends.
func runDashboard(ctx context.Context, args []string) error {
	cfg := dashboard.Default()
	fs := flag.NewFlagSet("dashboard", flag.ContinueOnError)
	fs.StringVar(&cfg.Listen, "listen", envOr("CALLRELAY_DASHBOARD_LISTEN", cfg.Listen), "TCP ip:port of the page (env CALLRELAY_DASHBOARD_LISTEN)")
	natsURL := fs.String("nats-url", envOr("CALLRELAY_NATS_URL", ""), "NATS server URL(s), comma-separated (env CALLRELAY_NATS_URL)")
	redisURL := fs.String("redis-url", envOr("CALLRELAY_REDIS_URL", ""), "redis:// or rediss:// URL of the state store, for partitions and call drill-downs (env CALLRELAY_REDIS_URL)")
	clusterKey := fs.String("cluster-key", envOr("CALLRELAY_CLUSTER_KEY", ""), "64 hex digits, the forwarders' cluster key (env CALLRELAY_CLUSTER_KEY)")
	fs.StringVar(&cfg.Subject, "subject", envOr("CALLRELAY_SUBJECT", cfg.Subject), "NATS subject prefix, the forwarders' one (env CALLRELAY_SUBJECT)")
	fs.IntVar(&cfg.Partitions, "partitions", cfg.Partitions, "partitions calls hash into; the conductors' number")
	fs.DurationVar(&cfg.DownAfter, "down-after", cfg.DownAfter, "a forwarder silent this long is shown as down")
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
			return fmt.Errorf("dashboard: --cluster-key: %w", err)
		}
	}
	if *redisURL != "" {
		st, err := statestore.OpenRedis(*redisURL, statestore.Config{})
		if err != nil {
			return fmt.Errorf("dashboard: --redis-url: %w", err)
		}
		defer func() { _ = st.Close() }()
		cfg.Store, cfg.Leases = st, st
	}
	if *natsURL != "" {
		nc, err := nats.Connect(*natsURL, nats.Name("callrelay dashboard"), nats.MaxReconnects(-1),
			nats.ReconnectWait(200*time.Millisecond),
			nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { log.Warn("NATS disconnected", zap.Error(err)) }),
			nats.ReconnectHandler(func(c *nats.Conn) { log.Info("NATS reconnected", zap.String("url", c.ConnectedUrl())) }))
		if err != nil {
			return fmt.Errorf("dashboard: --nats-url: %w", err)
		}
		defer nc.Close()
		cfg.NATS = nc
	}
	d, err := dashboard.New(cfg)
	if err != nil {
		return err
	}
	fmt.Printf("callrelay dashboard on http://%s\n", d.Addr())
	return d.Run(ctx)
}
