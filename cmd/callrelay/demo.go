package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/callrelay/callrelay/demo"
	"github.com/callrelay/callrelay/internal/logging"
)

var demoProc = process[demoOptions]{name: "demo", flags: demoFlags,
	about: "run a forwarder and simulated, end-to-end encrypted calls on this machine"}

// demoOptions is what the demo's flags set.
type demoOptions struct {
	cfg          demo.Config
	videoSenders int
	logLevel     string
}

func demoFlags(fs *flag.FlagSet) *demoOptions {
	o := &demoOptions{videoSenders: 3, logLevel: "warn"}
	cfg := &o.cfg
	fs.StringVar(&cfg.Listen, "listen", "127.0.0.1:0", "forwarder UDP address")
	fs.IntVar(&cfg.OneToOne, "one-to-one", 2, "number of one-to-one calls")
	fs.IntVar(&cfg.Groups, "groups", 1, "number of group calls")
	fs.IntVar(&cfg.GroupSize, "group-size", 5, "members per group call")
	fs.DurationVar(&cfg.Duration, "duration", 0, "stop after the calls have run this long, counted once every member joined (default: until Ctrl-C)")
	fs.DurationVar(&cfg.Interval, "interval", cfg.Interval, "summary line period (default 1s)")
	fs.StringVar(&cfg.Dashboard, "dashboard", "127.0.0.1:8080", "serve the live dashboard here (empty: none; port 0: any free port)")
	fs.IntVar(&cfg.CapacitySessions, "capacity-sessions", 0, "size each forwarder for this many sessions, so a spike makes it throttle (0: sessions are not a load signal)")
	fs.IntVar(&cfg.SpikeCalls, "spike-calls", 0, "group calls that join at once, --spike-after into the run (a New Year's Eve spike in small)")
	fs.DurationVar(&cfg.SpikeAfter, "spike-after", 5*time.Second, "when the spike joins")
	fs.IntVar(&o.videoSenders, "video-senders", o.videoSenders, "members of each group call that send camera video, which the others subscribe to (0: audio only)")
	fs.Float64Var(&cfg.LossyPercent, "lossy-percent", 0, "drop this percentage (0..50) of the RTP one group call member receives, in its own client before its feedback sees it, to show NACK recovery (emulated loss)")
	fs.StringVar(&o.logLevel, "log-level", o.logLevel, "log level of the components (debug, info, warn, error)")
	return o
}

// runDemo runs the whole system on this machine with embedded defaults.
func runDemo(ctx context.Context, args []string) error {
	o, _, err := demoProc.parse(args, os.Stdout)
	if err != nil {
		return err
	}
	cfg := o.cfg
	cfg.VideoSenders = o.videoSenders
	if cfg.VideoSenders == 0 {
		cfg.VideoSenders = -1 // the library's zero means its default
	}
	log, err := logging.NewConsole(o.logLevel)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	cfg.Logger = log
	res, err := demo.Run(ctx, cfg, os.Stdout)
	if err != nil {
		return err
	}
	if res.Failed > 0 || res.Decrypted == 0 {
		return fmt.Errorf("demo: receivers decrypted %d packets, %d failed", res.Decrypted, res.Failed)
	}
	return nil
}
