package main

import (
	"context"
	"flag"
	"os"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/callrelay/callrelay/conductor"
)

var conductorProc = process[conductorOptions]{name: "conductor", file: true, flags: conductorFlags,
	about: "decide dominant speakers and audio forwarding for the calls of the partitions it leases"}

// conductorOptions is what the conductor's flags set.
type conductorOptions struct {
	cfg                     conductor.Config
	cluster                 clusterFlags
	metricsListen, logLevel string
	metricsMaxConns         int
}

func conductorFlags(fs *flag.FlagSet) *conductorOptions {
	o := &conductorOptions{cfg: conductor.Default(), logLevel: "info"}
	cfg := &o.cfg
	fs.StringVar(&cfg.ID, "id", cfg.ID, "conductor id (a per-start suffix is added)")
	o.cluster = addClusterFlags(fs, "for leases, calls and checkpoints")
	fs.StringVar(&cfg.Subject, "subject", cfg.Subject, "NATS subject prefix, the forwarders' one")
	fs.IntVar(&cfg.Partitions, "partitions", cfg.Partitions, "partitions calls hash into; the forwarders' number")
	fs.IntVar(&cfg.MaxPartitions, "max-partitions", cfg.MaxPartitions, "hold at most this many partitions (0: as many as are free)")
	fs.DurationVar(&cfg.LeaseTTL, "lease-ttl", cfg.LeaseTTL, "partition lease TTL: the bulk of the decision gap when a conductor dies")
	fs.DurationVar(&cfg.StoreGrace, "store-grace", cfg.StoreGrace, "while Redis does not answer, keep deciding this long after the last lease renewal (fenced by epoch; 0: stop at 3/4 of the TTL)")
	fs.IntVar(&cfg.MaxForwarded, "max-forwarded", cfg.MaxForwarded, "audio streams forwarded per call: the dominant speaker and the most recent speakers")
	fs.DurationVar(&cfg.RecentWindow, "recent-window", cfg.RecentWindow, "a member who spoke within this window stays in the audio forwarding set")
	fs.Uint64Var(&cfg.Video.AudioBps, "audio-bps", cfg.Video.AudioBps, "bit/s one forwarded audio stream costs a receiver, reserved before any video")
	fs.Uint64Var(&cfg.Video.LowBps, "video-low-bps", cfg.Video.LowBps, "bit/s of a simulcast sender's low layer")
	fs.Uint64Var(&cfg.Video.HighBps, "video-high-bps", cfg.Video.HighBps, "bit/s of a sender's high layer or single stream (less when its uplink is smaller)")
	fs.StringVar(&cfg.Report.Region, "region", cfg.Report.Region, "this conductor's region label in its reports to dashboards (as the forwarders' --region)")
	fs.DurationVar(&cfg.Report.Every, "report-every", cfg.Report.Every, "how often the conductor publishes its report (decision latency, decisions, calls, timeline events) on <subject>.conductors")
	pl := &cfg.Placement
	fs.DurationVar(&pl.Budget, "placement-budget", pl.Budget, "a placement avoiding throttling regions is taken while its worst member-to-member path is within this of the best one")
	fs.IntVar(&pl.AvoidLevel, "placement-avoid-level", pl.AvoidLevel, "throttle level from which a forwarder or region is avoided for members not already on it (5: never)")
	fs.IntVar(&pl.MaxTrunkHops, "placement-max-trunk-hops", pl.MaxTrunkHops, "0 keeps every call on one forwarder; 1 lets a call span forwarders joined by trunks")
	fs.IntVar(&pl.MaxForwarders, "placement-max-forwarders", pl.MaxForwarders, "forwarders (one trunk copy each) one call may span")
	fs.DurationVar(&pl.MinGain, "placement-min-gain", pl.MinGain, "a member is moved only when the call's worst path shrinks by at least this...")
	fs.Float64Var(&pl.MinGainFraction, "placement-min-gain-fraction", pl.MinGainFraction, "...and by at least this fraction of it")
	fs.DurationVar(&pl.Cooldown, "placement-cooldown", pl.Cooldown, "a call's members are moved at most once per this")
	fs.DurationVar(&pl.First, "placement-first", pl.First, "a member that joined less than this ago is placed on the first decision after its RTT report, moved at once without the hysteresis above (once); 0: off")
	addMetricsFlags(fs, &o.metricsListen, &o.metricsMaxConns)
	fs.StringVar(&o.logLevel, "log-level", o.logLevel, "debug, info, warn or error")
	return o
}

// runConductor runs one conductor instance until the context ends.
func runConductor(ctx context.Context, args []string) error {
	o, done, err := conductorProc.parse(args, os.Stdout)
	if err != nil || done {
		return err
	}
	log, deps, err := o.cluster.start("conductor", o.logLevel)
	if err != nil {
		return err
	}
	defer deps.close()
	cfg := o.cfg
	cfg.Logger, cfg.Key, cfg.NATS = log, deps.key, deps.nats
	if deps.store != nil {
		cfg.Store, cfg.Leases = deps.store, deps.store
	}
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	c, err := conductor.New(cfg)
	if err != nil {
		return err
	}
	if o.metricsListen != "" {
		stop, err := serveMetrics(o.metricsListen, o.metricsMaxConns, reg, func() bool { return len(c.Owned()) > 0 }, log)
		if err != nil {
			return err
		}
		defer stop()
	}
	// The first signal releases the leases (a successor takes over at
	// once, without waiting for the TTL); the second exits at once.
	return c.Run(ctx)
}
