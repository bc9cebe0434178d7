package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/logging"
	"github.com/callrelay/callrelay/protocol"
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
	level := fs.String("log-level", envOr("CALLRELAY_LOG_LEVEL", "info"), "debug, info, warn or error (env CALLRELAY_LOG_LEVEL)")
	statsEvery := fs.Duration("stats-every", 10*time.Second, "log a stats line this often (0: never)")
	if err := fs.Parse(args); err != nil {
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
	if *alt != "" {
		if cfg.Alternate, err = netip.ParseAddrPort(*alt); err != nil {
			return fmt.Errorf("forwarder: --alternate %q: want ip:port", *alt)
		}
	}
	f, err := forwarder.New(cfg)
	if err != nil {
		return err
	}
	if *statsEvery > 0 {
		go logStats(ctx, log, f, *statsEvery)
	}
	return f.Run(ctx)
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
				zap.Uint64("drops", s.TotalDrops()))
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
