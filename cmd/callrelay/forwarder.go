package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/logging"
	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

var forwarderProc = process[forwarderOptions]{name: "forwarder", about: "run a forwarder on one UDP port", file: true, flags: forwarderFlags}

// forwarderOptions is what the forwarder's flags set: the component's
// config, and what is parsed or opened into it at start.
type forwarderOptions struct {
	cfg                               forwarder.Config
	publicKey, alternate, clusterKey  string
	trunkAdvertise, mediaAdvertise    string
	mediaAdvertise6                   string
	redisURL, metricsListen, logLevel string
	nats                              *natsConfig
	statsEvery                        time.Duration
	metricsMaxConns                   int
	videoFrameExtID, absSendTimeExtID uint
	stream                            streamOptions // forwarder_stream.go
}

func forwarderFlags(fs *flag.FlagSet) *forwarderOptions {
	o := &forwarderOptions{cfg: forwarder.Default(), logLevel: "info", statsEvery: 10 * time.Second}
	cfg := &o.cfg
	fs.StringVar(&cfg.Listen, "listen", cfg.Listen, "UDP ip:port to serve")
	fs.StringVar(&o.publicKey, "public-key", "", "base64 Ed25519 public key of the token signer")
	fs.IntVar(&cfg.Readers, "readers", cfg.Readers, "reader goroutines on SO_REUSEPORT sockets")
	fs.IntVar(&cfg.MaxSessions, "max-sessions", cfg.MaxSessions, "refuse new sessions beyond this many with 508; 0 = no limit")
	fs.DurationVar(&cfg.KeepaliveInterval, "keepalive", cfg.KeepaliveInterval, "keepalive interval devices are told to use")
	fs.DurationVar(&cfg.IdleTimeout, "idle-timeout", cfg.IdleTimeout, "forget sessions silent this long")
	fs.StringVar(&o.alternate, "alternate", "", "ip:port to send joins to while draining")
	fs.StringVar(&cfg.Cluster.ID, "id", cfg.Cluster.ID, "forwarder id in the cluster and the state store, stable across restarts")
	fs.StringVar(&cfg.Cluster.Region, "region", cfg.Cluster.Region, "label for where this forwarder runs (up to 32 printable ASCII characters, no space), told to dashboards in its load reports; empty: none")
	fs.Var(&cfg.Cluster.SpillLevel, "spill-level", "with a region: joins refused for load go to another region only while every forwarder of this one is at this throttle `level` or above (new_group, new_one_to_one, group_join, second_party or 1..4)")
	fs.DurationVar(&cfg.Cluster.SpillBudget, "spill-budget", cfg.Cluster.SpillBudget, "with a region: the largest trunk RTT to another region that joins refused for load are sent to (the nearest with room within it); 0: never another region")
	fs.StringVar(&cfg.Cluster.TrunkListen, "trunk-listen", cfg.Cluster.TrunkListen, "internal UDP ip:port for other forwarders; empty: no cluster")
	fs.StringVar(&o.trunkAdvertise, "trunk-advertise", "", "trunk ip:port as other forwarders reach it (default: the bound one)")
	fs.StringVar(&o.mediaAdvertise, "media-advertise", "", "media ip:port as devices reach it (default: the bound one)")
	fs.StringVar(&o.mediaAdvertise6, "media-advertise6", "", "a dual-stack forwarder's IPv6 media [ip]:port as devices reach it, told to the cluster beside the IPv4 --media-advertise (needs --listen [::]:port; upgrade every forwarder first); empty: none")
	fs.StringVar(&o.clusterKey, "cluster-key", "", "64 hex digits shared by the cluster (make one with: callrelay token cluster-key)")
	fs.StringVar(&o.redisURL, "redis-url", "", "redis:// or rediss:// URL of the call state store; empty: none")
	o.nats = addNATSFlags(fs)
	fs.Float64Var(&cfg.Load.CapacityPPS, "capacity-pps", cfg.Load.CapacityPPS, "packets/s (in + out) this forwarder is sized for: a load signal for throttling; 0 = not a signal")
	fs.IntVar(&cfg.Load.CapacitySessions, "capacity-sessions", cfg.Load.CapacitySessions, "sessions this forwarder is sized for: a load signal for throttling; 0 = not a signal")
	fs.Float64Var(&cfg.Load.CPUCores, "cpu-cores", cfg.Load.CPUCores, "CPU cores the process may use: 100 % of the CPU load signal")
	fs.Uint64Var(&cfg.Load.MemoryLimit, "memory-limit", cfg.Load.MemoryLimit, "bytes of Go memory that count as 100 % load; 0 = not a signal")
	fs.IntVar(&cfg.Cluster.Partitions, "partitions", cfg.Cluster.Partitions, "conductor partitions calls hash into; the same on every forwarder and conductor")
	fs.DurationVar(&cfg.Audio.DecisionTimeout, "decision-timeout", cfg.Audio.DecisionTimeout, "a call with no fresh conductor decision for this long forwards every voice until one comes (longer than a conductor takeover)")
	fs.DurationVar(&cfg.DrainDeadline, "drain-deadline", cfg.DrainDeadline, "on SIGTERM, stop admitting, ask sessions to move, and exit when empty or after this long")
	fs.DurationVar(&cfg.TicketLifetime, "ticket-lifetime", cfg.TicketLifetime, "how long a resumption ticket lets a session whose token expired come back (10s..1h; renewed every fifth of it while the session lives)")
	addStreamFlags(fs, o)
	addMetricsFlags(fs, &o.metricsListen, &o.metricsMaxConns)
	fs.StringVar(&o.logLevel, "log-level", o.logLevel, "debug, info, warn or error")
	fs.DurationVar(&o.statsEvery, "stats-every", o.statsEvery, "log a stats line this often (0: never)")
	fs.IntVar(&cfg.Adapt.NackCacheBytes, "nack-cache-bytes", cfg.Adapt.NackCacheBytes, "bytes of each sender's recent packets kept to answer NACKs (512 KiB: about 4 s at 1 Mbit/s)")
	fs.DurationVar(&cfg.Adapt.NackResendGap, "nack-resend-gap", cfg.Adapt.NackResendGap, "least time between two resends of one packet (about a round trip)")
	fs.Float64Var(&cfg.Adapt.NackShare, "nack-share", cfg.Adapt.NackShare, "bytes of retransmission a receiver's NACKs may cost per byte of media sent to it, whatever its REMB says (0.01..1)")
	fs.Uint64Var(&cfg.Police.GroupBps, "police-group-bps", cfg.Police.GroupBps, "bit/s a member of a group call may have forwarded while no conductor target names it; more is dropped, video before audio (0 here and in --police-one-to-one-bps: no policing)")
	fs.Uint64Var(&cfg.Police.OneToOneBps, "police-one-to-one-bps", cfg.Police.OneToOneBps, "the same for a member of a one-to-one call")
	fs.Float64Var(&cfg.Police.TargetHeadroom, "police-target-headroom", cfg.Police.TargetHeadroom, "with a conductor target, a member may send the target times this (1..10), and at least --police-min-bps")
	fs.Uint64Var(&cfg.Police.MinBps, "police-min-bps", cfg.Police.MinBps, "bit/s a member with a conductor target may always send")
	fs.Uint64Var(&cfg.Police.AudioBps, "police-audio-bps", cfg.Police.AudioBps, "bit/s of audio a member may send (Opus tops out at 510 kbit/s)")
	fs.Float64Var(&cfg.CookieRate, "cookie-rate", cfg.CookieRate, "address checks (401 with a cookie) the whole forwarder answers per second; requests over it are dropped, and devices repeat them")
	fs.Float64Var(&cfg.CookieBurst, "cookie-burst", cfg.CookieBurst, "address checks answered at once above --cookie-rate")
	fs.IntVar(&cfg.AddrChangeBurst, "address-change-burst", cfg.AddrChangeBurst, "address changes a session may make at once; then one per --address-change-every, the rest not answered")
	fs.DurationVar(&cfg.AddrChangeEvery, "address-change-every", cfg.AddrChangeEvery, "after the burst, one address change per session this often")
	fs.BoolVar(&cfg.RequireDeviceTokens, "require-device-tokens", cfg.RequireDeviceTokens, "refuse version 1 join tokens (401): every session must be bound to a device key (version 2 tokens, callrelay token mint --device-key)")
	o.videoFrameExtID, o.absSendTimeExtID = uint(cfg.Adapt.VideoFrameExtensionID), uint(cfg.Adapt.AbsSendTimeExtensionID)
	fs.UintVar(&o.videoFrameExtID, "video-frame-ext-id", o.videoFrameExtID, "RFC 8285 id of the video frame header extension (layer, key frame), 1..14")
	fs.UintVar(&o.absSendTimeExtID, "abs-send-time-ext-id", o.absSendTimeExtID, "RFC 8285 id of the abs-send-time header extension, 1..14")
	return o
}

// runForwarder runs one forwarder until the context ends.
func runForwarder(ctx context.Context, args []string) error {
	o, done, err := forwarderProc.parse(args, os.Stdout)
	if err != nil || done {
		return err
	}
	log, err := logging.New(o.logLevel)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	o.cfg.Logger = log
	if err := o.parseValues(); err != nil {
		return err
	}
	closeDeps, err := connectDeps(&o.cfg, o.redisURL, o.nats, log)
	if err != nil {
		return err
	}
	defer closeDeps()
	f, err := forwarder.New(o.cfg)
	if err != nil {
		return err
	}
	if o.statsEvery > 0 {
		go logStats(ctx, log, f, o.statsEvery)
	}
	if o.metricsListen != "" {
		reg := prometheus.NewRegistry()
		reg.MustRegister(f.Collector())
		if o.stream.certs != nil {
			reg.MustRegister(o.stream.certs)
		}
		stopHTTP, err := serveMetrics(o.metricsListen, o.metricsMaxConns, reg, func() bool { return !f.Stats().Draining }, log)
		if err != nil {
			return err
		}
		defer stopHTTP()
	}
	o.watchStreamTLS(ctx) // forwarder_stream.go
	return runUntilDrained(ctx, f, o.cfg.DrainDeadline)
}

// parseValues parses the keys, addresses and extension ids the flags
// carry as text into the forwarder's config.
func (o *forwarderOptions) parseValues() error {
	cfg := &o.cfg
	var err error
	if o.publicKey != "" {
		pk, err := protocol.ParsePublicKey(o.publicKey)
		if err != nil {
			return fmt.Errorf("forwarder: --public-key: %w", err)
		}
		if cfg.Verifier, err = protocol.NewTokenVerifier(pk); err != nil {
			return err
		}
	}
	if o.videoFrameExtID > 14 || o.absSendTimeExtID > 14 {
		return fmt.Errorf("forwarder: --video-frame-ext-id %d, --abs-send-time-ext-id %d: want 1..14", o.videoFrameExtID, o.absSendTimeExtID)
	}
	cfg.Adapt.VideoFrameExtensionID, cfg.Adapt.AbsSendTimeExtensionID = uint8(o.videoFrameExtID), uint8(o.absSendTimeExtID)
	if err := o.loadStreamTLS(); err != nil {
		return err
	}
	if err := o.parseStreamAdvertise(); err != nil {
		return err
	}
	if o.alternate != "" {
		if cfg.Alternate, err = netip.ParseAddrPort(o.alternate); err != nil {
			return fmt.Errorf("forwarder: --alternate %q: want ip:port", o.alternate)
		}
	}
	if err := parseAddr("--trunk-advertise", o.trunkAdvertise, &cfg.Cluster.TrunkAdvertise); err != nil {
		return err
	}
	if err := parseAddr("--media-advertise", o.mediaAdvertise, &cfg.Cluster.MediaAdvertise); err != nil {
		return err
	}
	if err := parseAddr("--media-advertise6", o.mediaAdvertise6, &cfg.Cluster.MediaAdvertise6); err != nil {
		return err
	}
	if o.clusterKey != "" {
		if cfg.Cluster.Key, err = protocol.ParseClusterKey(o.clusterKey); err != nil {
			return fmt.Errorf("forwarder: --cluster-key: %w", err)
		}
	}
	return nil
}

// runUntilDrained runs f; the first signal (ctx ending) drains it: no new
// sessions, sessions asked to move, exit when empty or at the deadline
// (the second signal exits at once, see main).
func runUntilDrained(ctx context.Context, f *forwarder.Forwarder, deadline time.Duration) error {
	runCtx, stop := context.WithCancel(context.Background())
	defer stop()
	done := make(chan error, 1)
	go func() { done <- f.Run(runCtx) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	dctx, cancel := context.WithTimeout(context.Background(), deadline)
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
