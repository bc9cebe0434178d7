package conductor

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// fakeClock is a clock the test moves.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// A partition held by another conductor is tried again the moment the
// holder's lease lapses (as the store says), not up to an acquire interval
// later; a holder that renews meanwhile is simply found holding again.
func TestAcquireAtLapse(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	mem := statestore.NewMemory(statestore.Config{Now: clock.Now})
	nc, err := nats.Connect(testenv.NATS(t).ClientURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	key, err := protocol.NewClusterKey()
	require.NoError(t, err)
	cfg := Default()
	cfg.NATS, cfg.Key, cfg.Store, cfg.Leases, cfg.Now = nc, key, mem, mem, clock.Now
	cfg.Partitions, cfg.LeaseTTL, cfg.AcquireEvery = 1, time.Second, time.Second
	c, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(c.releaseAll)
	ctx := context.Background()
	name := statestore.PartitionLease(0)

	ghost, err := mem.AcquireLease(ctx, name, "ghost", 300*time.Millisecond)
	require.NoError(t, err)
	require.Equal(t, 301*time.Millisecond, c.acquireFree(ctx), "next try: when the lease lapses, not after AcquireEvery")
	require.Empty(t, c.Owned())

	// The holder renews before the lapse: found holding, tried again at
	// the new lapse.
	clock.add(200 * time.Millisecond)
	require.NoError(t, mem.RenewLease(ctx, ghost, 400*time.Millisecond))
	clock.add(101 * time.Millisecond)
	require.Equal(t, 300*time.Millisecond, c.acquireFree(ctx))
	require.Empty(t, c.Owned())

	// It dies: taken at the lapse, at the next epoch.
	clock.add(300 * time.Millisecond)
	require.Equal(t, time.Second, c.acquireFree(ctx), "held here now: nothing else to try")
	require.Equal(t, map[int]uint64{0: ghost.Epoch + 1}, c.Owned())
}

// After a store outage, partitions held by nobody are not taken for a lease
// TTL: their holders, deciding on through the outage, take them back in
// place meanwhile. While the store is away it is only probed.
func TestNoAcquireRightAfterStoreOutage(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	mem := statestore.NewMemory(statestore.Config{Now: clock.Now})
	nc, err := nats.Connect(testenv.NATS(t).ClientURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	key, err := protocol.NewClusterKey()
	require.NoError(t, err)
	cfg := Default()
	cfg.NATS, cfg.Key, cfg.Store, cfg.Leases, cfg.Now = nc, key, mem, mem, clock.Now
	cfg.Partitions = 2
	c, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(c.releaseAll)
	ctx := context.Background()

	c.m.noteStoreDown(true) // as after failed lease operations
	canceled, cancel := context.WithCancel(ctx)
	cancel() // the Memory store answers a done context as unreachable
	require.Equal(t, cfg.AcquireEvery, c.acquireFree(canceled), "the store is away: probed only")
	require.True(t, c.m.down.Load())
	require.Empty(t, c.Owned())

	require.Equal(t, cfg.LeaseTTL, c.acquireFree(ctx), "back: nothing taken for a lease TTL")
	require.False(t, c.m.down.Load())
	require.Empty(t, c.Owned())
	clock.add(cfg.LeaseTTL / 2)
	require.Equal(t, cfg.LeaseTTL/2, c.acquireFree(ctx))
	require.Empty(t, c.Owned())
	clock.add(cfg.LeaseTTL / 2)
	c.acquireFree(ctx)
	require.Len(t, c.Owned(), 2, "then the free partitions are taken")
}
