package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/callrelay/callrelay/dashboard"
)

var dashboardProc = process[dashboardOptions]{name: "dashboard", file: true, flags: dashboardFlags,
	about: "serve the live throttling dashboard: who is throttling, where, and whom it refuses"}

// dashboardOptions is what the dashboard's flags set.
type dashboardOptions struct {
	cfg      dashboard.Config
	cluster  clusterFlags
	logLevel string
}

func dashboardFlags(fs *flag.FlagSet) *dashboardOptions {
	o := &dashboardOptions{cfg: dashboard.Default(), logLevel: "info"}
	cfg := &o.cfg
	fs.StringVar(&cfg.Listen, "listen", cfg.Listen, "TCP ip:port of the page; without a token, a loopback address only")
	fs.StringVar(&cfg.ViewerToken, "viewer-token", "", "bearer token that shows the page and calls without device addresses "+
		"(make one with: callrelay token dashboard); prefer the variable or the config file to the command line")
	fs.StringVar(&cfg.AdminToken, "admin-token", "", "bearer token that also shows device addresses; neither token set: "+
		"the page is served on loopback only, addresses hidden")
	fs.IntVar(&cfg.HTTP.MaxConns, "max-conns", cfg.HTTP.MaxConns, "connections the page keeps open at once (a browser tab holds one event stream); "+
		"more are closed at once and counted (callrelay_http_connections_refused_total)")
	o.cluster = addClusterFlags(fs, "for partitions and call drill-downs")
	fs.StringVar(&cfg.Subject, "subject", cfg.Subject, "NATS subject prefix, the forwarders' one")
	fs.IntVar(&cfg.Partitions, "partitions", cfg.Partitions, "partitions calls hash into; the conductors' number")
	fs.DurationVar(&cfg.DownAfter, "down-after", cfg.DownAfter, "a forwarder silent this long is shown as down")
	fs.BoolVar(&cfg.AdminAPI, "admin-api", false, "serve the admin API (/api/admin/..., callrelay admin) to --admin-token's bearers: "+
		"list and inspect calls, remove, hold, move, drain, pin, capture; every request audit-logged")
	fs.DurationVar(&cfg.AdminTimeout, "admin-timeout", cfg.AdminTimeout, "how long the admin API waits for a forwarder's answer to a command")
	fs.StringVar(&o.logLevel, "log-level", o.logLevel, "debug, info, warn or error")
	return o
}

// runDashboard serves the live throttling dashboard until the context ends.
func runDashboard(ctx context.Context, args []string) error {
	o, done, err := dashboardProc.parse(args, os.Stdout)
	if err != nil || done {
		return err
	}
	log, deps, err := o.cluster.start("dashboard", o.logLevel)
	if err != nil {
		return err
	}
	defer deps.close()
	cfg := o.cfg
	cfg.Logger, cfg.Key, cfg.NATS = log, deps.key, deps.nats
	if deps.store != nil {
		cfg.Store, cfg.Leases = deps.store, deps.store
	}
	d, err := dashboard.New(cfg)
	if err != nil {
		return err
	}
	if cfg.ViewerToken != "" || cfg.AdminToken != "" {
		fmt.Printf("callrelay dashboard on http://%s (open it once as http://%s/?token=<your token>)\n", d.Addr(), d.Addr())
	} else {
		fmt.Printf("callrelay dashboard on http://%s (loopback only: no token set)\n", d.Addr())
	}
	return d.Run(ctx)
}
