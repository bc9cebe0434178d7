package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/conductor"
	"github.com/callrelay/callrelay/internal/httpserve"
	"github.com/callrelay/callrelay/internal/logging"
	"github.com/callrelay/callrelay/protocol"
)

var locateProc = process[locateOptions]{name: "locate", file: true, flags: locateFlags,
	about: "answer devices' 'which forwarders for region R' (GET /v1/locate?region=R) from the forwarders' heartbeats"}

// locateOptions is what the locator's flags set.
type locateOptions struct {
	key, subject, listen, regions string
	maxConns, maxNeighbours       int
	maxConnsPerSource             int
	nats                          *natsConfig
	metricsListen, logLevel       string
	metricsMaxConns               int
}

func locateFlags(fs *flag.FlagSet) *locateOptions {
	o := &locateOptions{subject: "callrelay", logLevel: "info", maxConns: httpserve.Default().MaxConns, maxNeighbours: 2, maxConnsPerSource: 8}
	fs.StringVar(&o.key, "cluster-key", "", "64 hex digits, the forwarders' cluster key (authenticates their heartbeats)")
	o.nats = addNATSFlags(fs)
	fs.StringVar(&o.subject, "subject", o.subject, "NATS subject prefix, the forwarders' one")
	fs.StringVar(&o.listen, "listen", "", "TCP ip:port of the locator's HTTP endpoint (GET /v1/locate?region=R)")
	fs.IntVar(&o.maxConns, "max-conns", o.maxConns, "connections the endpoint keeps open at once; more are closed at once and counted")
	fs.IntVar(&o.maxConnsPerSource, "max-conns-per-source", o.maxConnsPerSource, "connections the endpoint keeps open at once from one IPv4 address or IPv6 /64 (0: no such cap), so one host cannot take every slot")
	fs.StringVar(&o.regions, "regions", "", "region adjacency, nearest first: 'eu:uk,za;za:eu;uk:eu'; a region not listed gets the regions its forwarders' trunks measured nearest")
	fs.IntVar(&o.maxNeighbours, "max-neighbours", o.maxNeighbours, "neighbouring regions answered for a region the table does not list")
	addMetricsFlags(fs, &o.metricsListen, &o.metricsMaxConns)
	fs.StringVar(&o.logLevel, "log-level", o.logLevel, "debug, info, warn or error")
	return o
}

// runLocate serves the locator until the context ends.
func runLocate(ctx context.Context, args []string) error {
	o, done, err := locateProc.parse(args, os.Stdout)
	if err != nil || done {
		return err
	}
	if o.listen == "" {
		return errors.New("locate: --listen is required")
	}
	key, err := protocol.ParseClusterKey(o.key)
	if err != nil {
		return fmt.Errorf("locate: --cluster-key: %w", err)
	}
	table, err := conductor.ParseRegionTable(o.regions)
	if err != nil {
		return fmt.Errorf("locate: --regions: %w", err)
	}
	log, err := logging.New(o.logLevel)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	nc, err := connectNATS(o.nats, "callrelay locate", log)
	if err != nil {
		return fmt.Errorf("locate: %w", err)
	}
	if nc == nil {
		return errors.New("locate: --nats-url is required (the forwarders' heartbeats)")
	}
	defer nc.Close()
	reg := prometheus.NewRegistry()
	bad := prometheus.NewCounter(prometheus.CounterOpts{Name: "callrelay_locate_fleet_messages_rejected_total",
		Help: "Heartbeats and load reports dropped: they did not authenticate or parse, or were stale (not newer than the last taken from their forwarder, or made over 10 s from this clock: replayed)."})
	reg.MustRegister(bad)
	fleet := conductor.NewFleet(key, 5*time.Second, bad)
	if err := fleet.Subscribe(nc, o.subject); err != nil {
		return fmt.Errorf("locate: subscribing: %w", err)
	}
	defer fleet.Close()
	loc := conductor.NewLocator(fleet, conductor.LocatorConfig{Neighbours: table, MaxNeighbours: o.maxNeighbours, Registerer: reg})
	if o.metricsListen != "" {
		stop, err := serveMetrics(o.metricsListen, o.metricsMaxConns, reg, func() bool { return len(fleet.View(time.Now()).Forwarders) > 0 }, log)
		if err != nil {
			return err
		}
		defer stop()
	}
	return serveLocate(ctx, o, loc, log)
}

func serveLocate(ctx context.Context, o *locateOptions, loc http.Handler, log *zap.Logger) error {
	cfg := httpserve.Default()
	cfg.Name, cfg.MaxConns, cfg.MaxConnsPerSource, cfg.Logger = "locate", o.maxConns, o.maxConnsPerSource, log
	srv, err := httpserve.Listen(o.listen, cfg)
	if err != nil {
		return fmt.Errorf("locate: --listen %s: %w", o.listen, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/v1/locate", loc)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(mux) }()
	log.Info("locator serving", zap.Stringer("addr", srv.Addr()))
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		return nil
	case err := <-errc:
		return err
	}
}
