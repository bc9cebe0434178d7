package conductor

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"math"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/callrelay/callrelay/statestore"
)

// Conductor holds partitions by lease and runs a decider for each. Create
// it with New, run it with Run.
type Conductor struct {
	cfg     Config
	log     *zap.Logger
	owner   string
	m       *metrics
	io      *ioQueue
	mu      sync.Mutex // guards owned (read by Owned from other goroutines)
	owned   map[int]*ownedPartition
	started bool
}

type ownedPartition struct {
	lease   statestore.Lease
	renewed time.Time // last successful acquire or renew
	p       *partition
	cancel  context.CancelFunc
	done    chan struct{}
}

// New validates cfg.
func New(cfg Config) (*Conductor, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var nonce [4]byte
	_, _ = rand.Read(nonce[:])
	c := &Conductor{
		cfg:   cfg,
		owner: cfg.ID + "/" + hex.EncodeToString(nonce[:]),
		owned: make(map[int]*ownedPartition),
	}
	c.log = cfg.Logger.With(zap.String("conductor", c.owner))
	c.m = newMetrics(cfg.Registerer)
	c.io = newIOQueue(cfg.Store, c.m, c.log)
	return c, nil
}

// Owner is this instance's lease holder name.
func (c *Conductor) Owner() string { return c.owner }

// Owned returns the partitions held now and their epochs.
func (c *Conductor) Owned() map[int]uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[int]uint64, len(c.owned))
	for p, o := range c.owned {
		out[p] = o.lease.Epoch
	}
	return out
}

// Run holds leases and decides until ctx is done, then releases its
// leases, so a successor takes over without waiting for the TTL.
func (c *Conductor) Run(ctx context.Context) error {
	if c.started {
		return errors.New("conductor: Run called twice")
	}
	c.started = true
	c.log.Info("conductor running", zap.Int("partitions", c.cfg.Partitions), zap.Duration("lease_ttl", c.cfg.LeaseTTL))
	ioCtx, stopIO := context.WithCancel(context.Background())
	ioDone := make(chan struct{})
	go func() { defer close(ioDone); c.io.run(ioCtx) }()
	rttDone := make(chan struct{})
	go func() { defer close(rttDone); c.measureNATS(ioCtx) }()

	acquire := time.NewTicker(c.cfg.AcquireEvery)
	defer acquire.Stop()
	renew := time.NewTicker(c.cfg.LeaseTTL / 4)
	defer renew.Stop()
	c.acquireFree(ctx)
	for {
		select {
		case <-ctx.Done():
			c.releaseAll()
			stopIO()
			<-ioDone
			<-rttDone
			c.log.Info("conductor stopped")
			return nil
		case <-acquire.C:
			c.acquireFree(ctx)
		case <-renew.C:
			c.renewOwned(ctx)
		}
	}
}

// opTimeout bounds one lease operation.
func (c *Conductor) opTimeout() time.Duration { return max(50*time.Millisecond, c.cfg.LeaseTTL/4) }

// acquireFree tries every partition not held here, up to MaxPartitions.
func (c *Conductor) acquireFree(ctx context.Context) {
	for part := 0; part < c.cfg.Partitions; part++ {
		if ctx.Err() != nil {
			return
		}
		c.mu.Lock()
		_, held := c.owned[part]
		n := len(c.owned)
		c.mu.Unlock()
		if held {
			continue
		}
		if c.cfg.MaxPartitions > 0 && n >= c.cfg.MaxPartitions {
			return
		}
		octx, cancel := context.WithTimeout(ctx, c.opTimeout())
		now := c.cfg.Now()
		began := time.Now()
		l, err := c.cfg.Leases.AcquireLease(octx, statestore.PartitionLease(part), c.owner, c.cfg.LeaseTTL)
		c.m.storeLatency.Observe(time.Since(began).Seconds())
		cancel()
		switch {
		case errors.Is(err, statestore.ErrLeaseHeld):
			continue
		case err != nil:
			c.m.leaseErrors.Inc()
			if !c.m.noteStoreDown(true) {
				c.log.Warn("state store unreachable: cannot take partitions", zap.Error(err))
			}
			return // the store is down: try again next round
		}
		c.storeBack()
		if l.Epoch > math.MaxUint32 {
			c.log.Error("lease epoch beyond the wire's 32 bits; releasing", zap.Int("partition", part), zap.Uint64("epoch", l.Epoch))
			_ = c.cfg.Leases.ReleaseLease(ctx, l)
			continue
		}
		c.start(part, l, now)
	}
}

// start runs a decider for a newly held partition.
func (c *Conductor) start(part int, l statestore.Lease, now time.Time) {
	pctx, cancel := context.WithCancel(context.Background())
	p := newPartition(c, part, uint32(l.Epoch))
	o := &ownedPartition{lease: l, renewed: now, p: p, cancel: cancel, done: make(chan struct{})}
	if err := p.subscribe(); err != nil {
		cancel()
		c.m.natsErrors.Inc()
		c.log.Warn("subscribing to partition metadata", zap.Int("partition", part), zap.Error(err))
		_ = c.cfg.Leases.ReleaseLease(context.Background(), l)
		return
	}
	c.mu.Lock()
	c.owned[part] = o
	c.m.owned.Set(float64(len(c.owned)))
	c.mu.Unlock()
	c.m.takeovers.Inc()
	c.log.Info("partition taken", zap.Int("partition", part), zap.Uint64("epoch", l.Epoch))
	go func() { defer close(o.done); p.run(pctx, o) }()
}

// renewOwned renews every held lease; a lease that is lost, or that could
// not be renewed for its whole TTL, stops its decider.
func (c *Conductor) renewOwned(ctx context.Context) {
	c.mu.Lock()
	parts := make([]int, 0, len(c.owned))
	for p := range c.owned {
		parts = append(parts, p)
	}
	c.mu.Unlock()
	for _, part := range parts {
		c.mu.Lock()
		o := c.owned[part]
		c.mu.Unlock()
		now := c.cfg.Now()
		octx, cancel := context.WithTimeout(ctx, c.opTimeout())
		began := time.Now()
		err := c.cfg.Leases.RenewLease(octx, o.lease, c.cfg.LeaseTTL)
		c.m.storeLatency.Observe(time.Since(began).Seconds())
		cancel()
		switch {
		case err == nil:
			c.mu.Lock()
			o.renewed = now
			c.mu.Unlock()
			o.p.setValidUntil(now.Add(c.validFor()))
			c.storeBack()
		case errors.Is(err, statestore.ErrLeaseLost):
			c.log.Warn("partition lease lost", zap.Int("partition", part), zap.Uint64("epoch", o.lease.Epoch))
			c.stop(part, false)
		default:
			c.m.leaseErrors.Inc()
			if !c.m.noteStoreDown(true) {
				c.log.Warn("state store unreachable: renewing partition leases", zap.Error(err))
			}
			c.mu.Lock()
			expired := now.Sub(o.renewed) >= c.validFor()
			c.mu.Unlock()
			if expired {
				c.log.Warn("partition lease expired unrenewed: no longer deciding", zap.Int("partition", part))
				c.stop(part, false)
			}
		}
	}
}

// storeBack notes that the store answered, and logs it if it had not.
func (c *Conductor) storeBack() {
	if c.m.noteStoreDown(false) {
		c.log.Info("state store reachable again")
	}
}

// validFor is how long after a successful renewal this instance still
// decides: the TTL less a margin for the difference between our clock and
// the store's.
func (c *Conductor) validFor() time.Duration { return c.cfg.LeaseTTL * 3 / 4 }

// stop ends a partition's decider; release frees the lease too.
func (c *Conductor) stop(part int, release bool) {
	c.mu.Lock()
	o := c.owned[part]
	delete(c.owned, part)
	c.m.owned.Set(float64(len(c.owned)))
	c.mu.Unlock()
	if o == nil {
		return
	}
	o.cancel()
	<-o.done
	if release {
		ctx, cancel := context.WithTimeout(context.Background(), c.opTimeout())
		_ = c.cfg.Leases.ReleaseLease(ctx, o.lease)
		cancel()
	}
}

func (c *Conductor) releaseAll() {
	c.mu.Lock()
	parts := make([]int, 0, len(c.owned))
	for p := range c.owned {
		parts = append(parts, p)
	}
	c.mu.Unlock()
	for _, p := range parts {
		c.stop(p, true)
	}
}

// measureNATS times a NATS round trip every few seconds, off the lease
// loop (a round trip waits on the network).
func (c *Conductor) measureNATS(ctx context.Context) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if rtt, err := c.cfg.NATS.RTT(); err == nil {
				c.m.natsRTT.Set(rtt.Seconds())
			} else {
				c.m.natsErrors.Inc()
			}
		}
	}
}
