package conductor

import (
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// Config is what a conductor needs. Start from Default() and override.
type Config struct {
	// ID names this conductor instance; a random suffix is added per
	// process start, so a restarted instance is a new lease holder.
	ID string
	// NATS carries metadata in and decisions out.
	NATS *nats.Conn
	// Subject is the prefix of every NATS subject (the forwarders' prefix).
	Subject string
	// Key authenticates metadata and decisions (the cluster key).
	Key protocol.ClusterKey
	// Leases grants partition ownership; Store has the calls' critical
	// state and checkpoints. Usually the same *statestore.Redis.
	Leases statestore.Leases
	Store  statestore.Store

	// Partitions must equal the forwarders' number.
	Partitions int
	// LeaseTTL is how long a partition stays owned without a renewal: the
	// bulk of the decision gap when a conductor dies. Renewals happen every
	// LeaseTTL/4; free partitions are tried every AcquireEvery.
	LeaseTTL     time.Duration
	AcquireEvery time.Duration
	// StoreGrace is how long a lease holder keeps deciding after its last
	// renewal while the store does not answer at all (Redis down or cut
	// off); 0 stops it after three quarters of the TTL, as when its lease
	// was lost. Nobody can take the lease from a store that does not
	// answer, and forwarders fence off the epoch of a holder that was
	// replaced meanwhile (doc.go), so deciding on is safe; it keeps calls'
	// audio forwarding sets current through a Redis outage.
	StoreGrace time.Duration
	// MaxPartitions caps how many partitions this instance holds (0: all),
	// so a fleet of conductors can share them.
	MaxPartitions int

	// DecideEvery is the decision tick; Republish resends an unchanged
	// decision this often (forwarders that just got the call learn it).
	DecideEvery, Republish time.Duration
	// CheckpointEvery is how often a changed call's ephemeral state is
	// saved; CheckpointTTL is how long it is kept.
	CheckpointEvery, CheckpointTTL time.Duration
	// MaxForwarded is the size of the audio forwarding set (dominant
	// speaker plus the most recent speakers); RecentWindow is how recently
	// a member must have spoken to be in it.
	MaxForwarded int
	RecentWindow time.Duration
	// IdleCall forgets a call that sent no metadata for this long.
	IdleCall time.Duration
	// Speaker tunes dominant-speaker detection.
	Speaker SpeakerConfig
	// Video is the bitrate ladder the allocator plans with (allocate.go).
	Video VideoLadder
	// Report says how the conductor reports to dashboards (report.go).
	Report ReportConfig
	// Placement says where calls' members attach (placement.go).
	Placement PlacementConfig
	// Queue bounds the metadata waiting per partition; beyond it messages
	// are dropped and counted.
	Queue int

	Logger *zap.Logger
	// Registerer receives the conductor's metrics (nil: none).
	Registerer prometheus.Registerer
	// Now is the clock.
	Now func() time.Time
}

// Default returns the production defaults.
func Default() Config {
	return Config{
		ID:              "conductor",
		Subject:         "callrelay",
		Partitions:      64,
		LeaseTTL:        2 * time.Second,
		AcquireEvery:    250 * time.Millisecond,
		StoreGrace:      time.Minute,
		DecideEvery:     100 * time.Millisecond,
		Republish:       time.Second,
		CheckpointEvery: 2 * time.Second,
		CheckpointTTL:   2 * time.Minute,
		MaxForwarded:    3,
		RecentWindow:    5 * time.Second,
		IdleCall:        30 * time.Second,
		Speaker:         DefaultSpeakerConfig(),
		Video:           DefaultVideoLadder(),
		Report:          DefaultReportConfig(),
		Placement:       DefaultPlacementConfig(),
		Queue:           1024,
		Logger:          zap.NewNop(),
		Now:             time.Now,
	}
}

// Validate says what to fix.
func (c *Config) Validate() error {
	var errs []error
	if err := protocol.ValidForwarderID(c.ID); err != nil {
		errs = append(errs, fmt.Errorf("conductor: id (--id): %w", err))
	}
	if c.NATS == nil {
		errs = append(errs, errors.New("conductor: no NATS connection (--nats-url)"))
	}
	if c.Leases == nil || c.Store == nil {
		errs = append(errs, errors.New("conductor: no state store (--redis-url)"))
	}
	if c.Key.IsZero() {
		errs = append(errs, errors.New("conductor: no cluster key (--cluster-key or CALLRELAY_CLUSTER_KEY), the forwarders' one"))
	}
	if c.Subject == "" {
		errs = append(errs, errors.New("conductor: empty NATS subject prefix"))
	}
	if c.Partitions < 1 || c.Partitions > 65535 {
		errs = append(errs, fmt.Errorf("conductor: %d partitions, want 1..65535 (the forwarders' number)", c.Partitions))
	}
	if c.LeaseTTL < 100*time.Millisecond || c.AcquireEvery <= 0 || c.AcquireEvery > c.LeaseTTL {
		errs = append(errs, fmt.Errorf("conductor: lease TTL %s (>= 100ms) and acquire interval %s (0 < it <= TTL)", c.LeaseTTL, c.AcquireEvery))
	}
	if c.StoreGrace < 0 {
		errs = append(errs, fmt.Errorf("conductor: store grace %s, want >= 0", c.StoreGrace))
	}
	if c.MaxPartitions < 0 {
		errs = append(errs, fmt.Errorf("conductor: max partitions %d, want >= 0", c.MaxPartitions))
	}
	if err := c.Video.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.Placement.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("conductor: %w", err))
	}
	if err := c.Report.validate(); err != nil {
		errs = append(errs, err)
	}
	if c.DecideEvery <= 0 || c.Republish < c.DecideEvery || c.CheckpointEvery <= 0 || c.CheckpointTTL < c.CheckpointEvery {
		errs = append(errs, fmt.Errorf("conductor: decide every %s, republish %s (>= decide), checkpoint every %s, kept %s (>= every)",
			c.DecideEvery, c.Republish, c.CheckpointEvery, c.CheckpointTTL))
	}
	if c.MaxForwarded < 1 || c.MaxForwarded > 255 || c.RecentWindow <= 0 || c.IdleCall <= 0 || c.Queue < 1 {
		errs = append(errs, fmt.Errorf("conductor: max forwarded %d (1..255), recent window %s, idle call %s, queue %d: all must be positive",
			c.MaxForwarded, c.RecentWindow, c.IdleCall, c.Queue))
	}
	if err := c.Speaker.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("conductor: speaker detection: %w", err))
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return errors.Join(errs...)
}
