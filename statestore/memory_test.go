package statestore

import (
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// fakeClock is a clock tests advance by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func TestMemoryTTL(t *testing.T) {
	clk := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	s := NewMemory(Config{TTL: time.Minute, Now: clk.Now})
	ctx, call := testCtx(t), protocol.NewID()
	_, err := s.AddMember(ctx, call, protocol.ClassGroup, 3, protocol.NewID(), testMember(1))
	require.NoError(t, err)
	require.NoError(t, s.SaveCheckpoint(ctx, call, "short", []byte("x"), 10*time.Second))
	require.NoError(t, s.SaveCheckpoint(ctx, call, "long", []byte("y"), time.Hour))

	clk.Advance(50 * time.Second)
	require.NoError(t, s.Touch(ctx, call))
	_, err = s.LoadCheckpoint(ctx, call, "short")
	require.ErrorIs(t, err, ErrNotFound)

	clk.Advance(50 * time.Second) // 100 s after creation, 50 s after Touch
	_, err = s.Get(ctx, call)
	require.NoError(t, err)

	clk.Advance(10 * time.Second)
	_, err = s.Get(ctx, call)
	require.ErrorIs(t, err, ErrNotFound)
	require.ErrorIs(t, s.Touch(ctx, call), ErrNotFound)
	got, err := s.LoadCheckpoint(ctx, call, "long")
	require.NoError(t, err)
	require.Equal(t, []byte("y"), got)

	// An expired call starts afresh.
	c, err := s.AddMember(ctx, call, protocol.ClassGroup, 3, protocol.NewID(), testMember(2))
	require.NoError(t, err)
	require.Equal(t, uint64(1), c.Version)

	clk.Advance(2 * time.Hour)
	_, err = s.LoadCheckpoint(ctx, call, "long")
	require.ErrorIs(t, err, ErrNotFound)
	s.mu.Lock()
	defer s.mu.Unlock()
	require.Nil(t, s.entryLocked(call))
	require.Empty(t, s.calls, "expired entries are dropped")
}
