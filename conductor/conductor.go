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
	rep     *reporter // report.go
	fleet   *Fleet    // the forwarders' regions, levels, addresses (placement_fleet.go)
	pm      *placementMetrics
	mu      sync.Mutex // guards owned (read by Owned from other goroutines)
	owned   map[int]*ownedPartition
	started bool
	// The Run goroutine's: when to try each partition not held here next
	// (at the acquire interval, or the moment its holder's lease lapses if
	// that is sooner), and when the store last came back after an outage.
	tryAt  []time.Time
	backAt time.Time
}

type ownedPartition struct {
	lease   statestore.Lease
	renewed time.Time // last successful acquire or renew
	graced  bool      // deciding on while the store is unreachable (logged once)
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
		tryAt: make([]time.Time, cfg.Partitions),
	}
	c.log = cfg.Logger.With(zap.String("conductor", c.owner))
	c.m = newMetrics(cfg.Registerer)
	c.io = newIOQueue(cfg.Store, c.m, c.log)
	c.rep = newReporter(cfg.Registerer, cfg.Now())
	c.pm = newPlacementMetrics(cfg.Registerer)
	c.fleet = NewFleet(cfg.Key, fleetTimeout, c.pm.fleetBad)
	return c, nil
}

// fleetTimeout: a forwarder silent this long is left out of placement.
const fleetTimeout = 5 * time.Second

// Fleet is the conductor's view of the forwarders (for a locator served by
// the same process).
func (c *Conductor) Fleet() *Fleet { return c.fleet }

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
	repDone := make(chan struct{})
	go func() { defer close(repDone); c.report(ioCtx) }()
	if err := c.fleet.Subscribe(c.cfg.NATS, c.cfg.Subject); err != nil {
		c.log.Warn("not hearing the forwarders: calls are not placed by latency", zap.Error(err))
	}
	defer c.fleet.Close()

	acquire := time.NewTimer(c.acquireFree(ctx))
	defer acquire.Stop()
	renew := time.NewTicker(c.cfg.LeaseTTL / 4)
	defer renew.Stop()
	for {
		select {
		case <-ctx.Done():
			c.releaseAll()
			stopIO()
			<-ioDone
			<-rttDone
			<-repDone
			c.log.Info("conductor stopped")
			return nil
		case <-acquire.C:
			acquire.Reset(c.acquireFree(ctx))
		case <-renew.C:
			c.renewOwned(ctx)
		}
	}
}

// opTimeout bounds one lease operation.
func (c *Conductor) opTimeout() time.Duration { return max(50*time.Millisecond, c.cfg.LeaseTTL/4) }

// acquireFree tries the partitions not held here whose time has come, up
// to MaxPartitions, and returns how long to wait before the next try.
//
// A partition held by another conductor is tried again every AcquireEvery,
// or the moment its holder's lease lapses (the store says how long it has
// left) if that is sooner: a successor takes a dead conductor's partitions
// when the TTL runs out, not up to an acquire interval later. A holder
// that stopped gracefully released its leases, so the next try takes them.
//
// While the store is away, the store is only probed (a read); once it is
// back, nothing is taken for a lease TTL: the leases lapsed in the store
// meanwhile, and their holders, which decided on through the outage (store
// grace), take them again in place, with their state, in that time.
func (c *Conductor) acquireFree(ctx context.Context) time.Duration {
	now := c.cfg.Now()
	if c.m.down.Load() && !c.probeStore(ctx) {
		return c.cfg.AcquireEvery
	}
	if until := c.backAt.Add(c.cfg.LeaseTTL); now.Before(until) {
		return until.Sub(now)
	}
	next := now.Add(c.cfg.AcquireEvery)
	for part := 0; part < c.cfg.Partitions && ctx.Err() == nil; part++ {
		c.mu.Lock()
		_, held := c.owned[part]
		n := len(c.owned)
		c.mu.Unlock()
		if held {
			continue
		}
		if c.cfg.MaxPartitions > 0 && n >= c.cfg.MaxPartitions {
			break
		}
		if now.Before(c.tryAt[part]) {
			next = minTime(next, c.tryAt[part])
			continue
		}
		c.tryAt[part] = now.Add(c.cfg.AcquireEvery)
		if !c.tryAcquire(ctx, part) {
			break // the store is down: try again next round
		}
		next = minTime(next, c.tryAt[part])
	}
	return max(time.Millisecond, next.Sub(c.cfg.Now()))
}

// tryAcquire makes one attempt at a partition's lease; false: the store did
// not answer.
func (c *Conductor) tryAcquire(ctx context.Context, part int) bool {
	octx, cancel := context.WithTimeout(ctx, c.opTimeout())
	began := c.cfg.Now()
	l, err := c.cfg.Leases.AcquireLease(octx, statestore.PartitionLease(part), c.owner, c.cfg.LeaseTTL)
	now := c.cfg.Now()
	took := now.Sub(began)
	c.m.storeLatency.Observe(took.Seconds())
	cancel()
	var held *statestore.HeldError
	switch {
	case errors.As(err, &held):
		if held.Remaining > 0 {
			// The store measured what is left when it answered; a try
			// sent that much later reaches it after the lapse.
			c.tryAt[part] = minTime(c.tryAt[part], now.Add(held.Remaining+time.Millisecond))
		}
		c.storeBack()
		return true
	case errors.Is(err, statestore.ErrLeaseHeld):
		c.storeBack()
		return true
	case err != nil:
		c.m.leaseErrors.Inc()
		if !c.m.noteStoreDown(true) {
			c.log.Warn("state store unreachable: cannot take partitions", zap.Error(err))
		}
		return false
	}
	c.storeBack()
	if l.Epoch > math.MaxUint32 {
		c.log.Error("lease epoch beyond the wire's 32 bits; releasing", zap.Int("partition", part), zap.Uint64("epoch", l.Epoch))
		_ = c.cfg.Leases.ReleaseLease(ctx, l)
		return true
	}
	c.start(part, l, began)
	return true
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
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

// renewOwned renews every held lease. A lease that is lost stops its
// decider, unless the store lost it with nobody else holding it (it lapsed
// while the store was away), in which case it is taken again in place at a
// new epoch. A lease that could not be renewed stops its decider after
// validFor, or, while the store does not answer at all, after StoreGrace
// (see holdFor).
func (c *Conductor) renewOwned(ctx context.Context) {
	c.mu.Lock()
	parts := make([]int, 0, len(c.owned))
	for p := range c.owned {
		parts = append(parts, p)
	}
	c.mu.Unlock()
	down := false // the store did not answer this round: the rest are not tried
	for _, part := range parts {
		c.mu.Lock()
		o := c.owned[part]
		c.mu.Unlock()
		now := c.cfg.Now()
		if down {
			c.unrenewed(part, o, now, true)
			continue
		}
		octx, cancel := context.WithTimeout(ctx, c.opTimeout())
		began := time.Now()
		err := c.cfg.Leases.RenewLease(octx, o.lease, c.cfg.LeaseTTL)
		c.m.storeLatency.Observe(time.Since(began).Seconds())
		cancel()
		switch {
		case err == nil:
			c.renewed(o, now)
			c.storeBack()
		case errors.Is(err, statestore.ErrLeaseLost):
			c.storeBack()
			if !c.retake(ctx, part, o, now) {
				c.log.Warn("partition lease lost", zap.Int("partition", part), zap.Uint64("epoch", o.lease.Epoch))
				c.stop(part, false)
			}
		default:
			c.m.leaseErrors.Inc()
			if !c.m.noteStoreDown(true) {
				c.log.Warn("state store unreachable: renewing partition leases", zap.Error(err))
			}
			down = errors.Is(err, statestore.ErrUnavailable)
			c.unrenewed(part, o, now, down)
		}
	}
}

// renewed notes a successful renewal (or acquisition) of o's lease.
func (c *Conductor) renewed(o *ownedPartition, now time.Time) {
	c.mu.Lock()
	o.renewed = now
	c.mu.Unlock()
	o.graced = false
	o.p.setValidUntil(now.Add(c.validFor()))
}

// unrenewed handles a renewal that failed without an answer about the
// lease: the decider goes on until holdFor after the last renewal, then
// stops.
func (c *Conductor) unrenewed(part int, o *ownedPartition, now time.Time, unreachable bool) {
	c.mu.Lock()
	since := o.renewed
	c.mu.Unlock()
	hold := c.validFor()
	if unreachable {
		hold = c.holdFor()
		o.p.setValidUntil(since.Add(hold))
		if hold > c.validFor() && !o.graced {
			o.graced = true
			c.log.Warn("state store unreachable: deciding on under the lease's epoch meanwhile (forwarders fence it off if another conductor takes the partition)",
				zap.Int("partition", part), zap.Uint64("epoch", o.lease.Epoch), zap.Duration("for_at_most", hold))
		}
	}
	if now.Sub(since) >= hold {
		c.log.Warn("partition lease unrenewed for too long: no longer deciding", zap.Int("partition", part), zap.Duration("since_renewed", now.Sub(since)))
		c.stop(part, false)
	}
}

// retake takes a lost lease again in place, if nobody else holds it: the
// store let it lapse (it was away, or it restarted empty) while this
// instance decided on. The decider goes on with the new epoch, and its
// next decisions override the old epoch's at every forwarder.
func (c *Conductor) retake(ctx context.Context, part int, o *ownedPartition, now time.Time) bool {
	octx, cancel := context.WithTimeout(ctx, c.opTimeout())
	l, err := c.cfg.Leases.AcquireLease(octx, o.lease.Name, c.owner, c.cfg.LeaseTTL)
	cancel()
	if err != nil || l.Epoch > math.MaxUint32 {
		if err == nil {
			_ = c.cfg.Leases.ReleaseLease(ctx, l)
		}
		return false
	}
	c.mu.Lock()
	old := o.lease
	o.lease = l
	c.mu.Unlock()
	o.p.setEpoch(uint32(l.Epoch))
	c.renewed(o, now)
	c.m.takeovers.Inc()
	c.log.Info("partition lease lapsed in the store while deciding; taken again", zap.Int("partition", part),
		zap.Uint64("old_epoch", old.Epoch), zap.Uint64("epoch", l.Epoch))
	return true
}

// storeBack notes that the store answered, and logs it if it had not.
func (c *Conductor) storeBack() {
	if c.m.noteStoreDown(false) {
		c.backAt = c.cfg.Now()
		c.log.Info("state store reachable again")
	}
}

// probeStore asks the store something harmless and reports whether it
// answered (noting it, if so).
func (c *Conductor) probeStore(ctx context.Context) bool {
	octx, cancel := context.WithTimeout(ctx, c.opTimeout())
	_, err := c.cfg.Leases.LeaseHolder(octx, statestore.PartitionLease(0))
	cancel()
	if err != nil && !errors.Is(err, statestore.ErrNotFound) {
		return false
	}
	c.storeBack()
	return true
}

// validFor is how long after a successful renewal this instance still
// decides: the TTL less a margin for the difference between our clock and
// the store's.
func (c *Conductor) validFor() time.Duration { return c.cfg.LeaseTTL * 3 / 4 }

// holdFor is how long after its last renewal this instance decides on
// while the store does not answer at all: StoreGrace, if longer than
// validFor. Nobody can take the lease from a store that does not answer;
// a conductor that can, while this one cannot (a partition), takes it at
// a higher epoch, and forwarders then ignore this one's decisions (README
// 7.4). The bound keeps such a cut-off instance from talking for long.
func (c *Conductor) holdFor() time.Duration { return max(c.validFor(), c.cfg.StoreGrace) }

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
