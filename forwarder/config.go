package forwarder

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"time"

	"go.uber.org/zap"

	"github.com/callrelay/callrelay/protocol"
)

// Config is what a forwarder needs. Start from Default() and override.
type Config struct {
	// Listen is the one UDP address the forwarder serves media on.
	Listen string
	// Verifier checks join tokens (the forwarder holds only public keys).
	Verifier *protocol.TokenVerifier
	// Readers is the number of reader goroutines, each on its own
	// SO_REUSEPORT socket bound to the same port (Linux). Default: one per core.
	Readers int
	// KeepaliveInterval is what devices are told to use.
	KeepaliveInterval time.Duration
	// IdleTimeout forgets a session that sent no authenticated keepalive for this long.
	IdleTimeout time.Duration
	// MaxSessions refuses new sessions beyond this with 508 (0: no limit).
	MaxSessions int
	// Alternate is where a draining forwarder sends new joins (300 Try Alternate).
	Alternate netip.AddrPort
	// STUNRate and STUNBurst bound the keepalives (and other requests) one
	// member's address may send per second before they are dropped unread.
	STUNRate  float64
	STUNBurst float64
	// JoinRate and JoinBurst bound the requests from addresses that are not
	// members, per IP address (all ports together). Higher than STUNRate:
	// one carrier-grade NAT address may carry many devices.
	JoinRate  float64
	JoinBurst float64
	// DrainDeadline is how long a draining forwarder keeps serving sessions
	// it has told to move before it gives up on them.
	DrainDeadline time.Duration

	// Cluster joins the forwarder to others through the state store, NATS
	// and the trunk. Zero: a forwarder on its own.
	Cluster Cluster

	// Logger receives lifecycle and control-path events, never per-packet lines.
	Logger *zap.Logger
	// Now is the clock (tests may replace it).
	Now func() time.Time
}

// Default returns a Config with production defaults and no verifier.
func Default() Config {
	return Config{
		Listen:            "0.0.0.0:3478",
		Readers:           runtime.NumCPU(),
		KeepaliveInterval: time.Second,
		IdleTimeout:       10 * time.Second,
		STUNRate:          20,
		STUNBurst:         40,
		JoinRate:          200,
		JoinBurst:         400,
		DrainDeadline:     30 * time.Second,
		Cluster:           DefaultCluster(),
		Logger:            zap.NewNop(),
		Now:               time.Now,
	}
}

// Validate says what to fix.
func (c *Config) Validate() error {
	var errs []error
	if c.Verifier == nil {
		errs = append(errs, errors.New("forwarder: no token verifier: give the signing service's public key (--public-key or CALLRELAY_PUBLIC_KEY)"))
	}
	if _, err := netip.ParseAddrPort(c.Listen); err != nil {
		errs = append(errs, fmt.Errorf("forwarder: listen address %q: want ip:port, e.g. 0.0.0.0:3478", c.Listen))
	}
	if c.Readers < 1 || c.Readers > 256 {
		errs = append(errs, fmt.Errorf("forwarder: readers = %d, want 1..256", c.Readers))
	}
	if c.KeepaliveInterval <= 0 || c.IdleTimeout < 2*c.KeepaliveInterval {
		errs = append(errs, fmt.Errorf("forwarder: idle timeout %s must be at least twice the keepalive interval %s", c.IdleTimeout, c.KeepaliveInterval))
	}
	if c.MaxSessions < 0 {
		errs = append(errs, fmt.Errorf("forwarder: max sessions = %d, want >= 0", c.MaxSessions))
	}
	if c.STUNRate <= 0 || c.STUNBurst < 1 || c.JoinRate <= 0 || c.JoinBurst < 1 {
		errs = append(errs, fmt.Errorf("forwarder: STUN rate %.1f/s burst %.1f, join rate %.1f/s burst %.1f: all must be positive",
			c.STUNRate, c.STUNBurst, c.JoinRate, c.JoinBurst))
	}
	if c.DrainDeadline <= 0 {
		errs = append(errs, fmt.Errorf("forwarder: drain deadline %s must be positive", c.DrainDeadline))
	}
	errs = append(errs, c.Cluster.validate())
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return errors.Join(errs...)
}
