package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/callrelay/callrelay/dashboard"
)

// runDashboard serves the live throttling dashboard until the context ends.
func runDashboard(ctx context.Context, args []string) error {
	cfg := dashboard.Default()
	fs := flag.NewFlagSet("dashboard", flag.ContinueOnError)
	fs.StringVar(&cfg.Listen, "listen", envOr("CALLRELAY_DASHBOARD_LISTEN", cfg.Listen), "TCP ip:port of the page (env CALLRELAY_DASHBOARD_LISTEN)")
	cf := addClusterFlags(fs, "for partitions and call drill-downs")
	fs.StringVar(&cfg.Subject, "subject", envOr("CALLRELAY_SUBJECT", cfg.Subject), "NATS subject prefix, the forwarders' one (env CALLRELAY_SUBJECT)")
	fs.IntVar(&cfg.Partitions, "partitions", cfg.Partitions, "partitions calls hash into; the conductors' number")
	fs.DurationVar(&cfg.DownAfter, "down-after", cfg.DownAfter, "a forwarder silent this long is shown as down")
	level := fs.String("log-level", envOr("CALLRELAY_LOG_LEVEL", "info"), "debug, info, warn or error (env CALLRELAY_LOG_LEVEL)")
	if done, err := parseWithConfig(fs, args, os.Stdout); err != nil || done {
		return err
	}
	log, deps, err := cf.start("dashboard", *level)
	if err != nil {
		return err
	}
	defer deps.close()
	cfg.Logger, cfg.Key, cfg.NATS = log, deps.key, deps.nats
	if deps.store != nil {
		cfg.Store, cfg.Leases = deps.store, deps.store
	}
	d, err := dashboard.New(cfg)
	if err != nil {
		return err
	}
	fmt.Printf("callrelay dashboard on http://%s\n", d.Addr())
	return d.Run(ctx)
}
