package statestore

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// testCtx bounds every store call a test makes.
func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func testMember(i int) Member {
	return Member{
		Forwarder:     fmt.Sprintf("fwd-%d", i%3),
		Addr:          netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), uint16(40000+i)),
		SSRCs:         []uint32{uint32(1000 + i), uint32(2000 + i)},
		JoinedAt:      time.Unix(1_700_000_000, int64(i)*1_000_001).UTC(),
		Subscriptions: []protocol.ID{{byte(i)}},
	}
}

// TestConformance runs the one suite both backends must pass.
func TestConformance(t *testing.T) {
	backends := map[string]func(t *testing.T) Store{
		"memory": func(*testing.T) Store { return NewMemory(Config{}) },
		"redis": func(t *testing.T) Store {
			s, _ := newTestRedis(t, Config{})
			return s
		},
	}
	tests := map[string]func(t *testing.T, s Store){
		"CreateAndGet":       testCreateAndGet,
		"CallFull":           testCallFull,
		"UpdateMember":       testUpdateMember,
		"RemoveMember":       testRemoveMember,
		"Touch":              testTouch,
		"Checkpoints":        testCheckpoints,
		"InvalidArguments":   testInvalidArguments,
		"ConcurrentAdd":      testConcurrentAdd,
		"CanceledContext":    testCanceledContext,
		"ResultsAreIsolated": testResultsAreIsolated,
	}
	for bname, newStore := range backends {
		t.Run(bname, func(t *testing.T) {
			for name, test := range tests {
				t.Run(name, func(t *testing.T) { test(t, newStore(t)) })
			}
		})
	}
}

func testCreateAndGet(t *testing.T, s Store) {
	ctx, call, p1, p2 := testCtx(t), protocol.NewID(), protocol.NewID(), protocol.NewID()
	_, err := s.Get(ctx, call)
	require.ErrorIs(t, err, ErrNotFound)

	c, err := s.AddMember(ctx, call, protocol.ClassGroup, 5, p1, testMember(1))
	require.NoError(t, err)
	want := Call{ID: call, Class: protocol.ClassGroup, MaxSize: 5, Version: 1,
		Members: map[protocol.ID]Member{p1: testMember(1)}}
	require.Equal(t, want, c)
	got, err := s.Get(ctx, call)
	require.NoError(t, err)
	require.Equal(t, want, got)

	// An existing call keeps its class and max size.
	c, err = s.AddMember(ctx, call, protocol.ClassOneToOne, 2, p2, testMember(2))
	require.NoError(t, err)
	require.Equal(t, uint64(2), c.Version)
	require.Equal(t, protocol.ClassGroup, c.Class)
	require.Equal(t, 5, c.MaxSize)
	require.Len(t, c.Members, 2)

	// Adding a member again replaces it and still counts as a change.
	c, err = s.AddMember(ctx, call, protocol.ClassGroup, 5, p2, testMember(3))
	require.NoError(t, err)
	require.Equal(t, uint64(3), c.Version)
	require.Equal(t, testMember(3), c.Members[p2])
}

func testCallFull(t *testing.T, s Store) {
	ctx, call := testCtx(t), protocol.NewID()
	p1, p2 := protocol.NewID(), protocol.NewID()
	_, err := s.AddMember(ctx, call, protocol.ClassOneToOne, 2, p1, testMember(1))
	require.NoError(t, err)
	_, err = s.AddMember(ctx, call, protocol.ClassOneToOne, 2, p2, testMember(2))
	require.NoError(t, err)
	_, err = s.AddMember(ctx, call, protocol.ClassOneToOne, 2, protocol.NewID(), testMember(3))
	require.ErrorIs(t, err, ErrCallFull)
	// A member rejoining a full call is not refused.
	_, err = s.AddMember(ctx, call, protocol.ClassOneToOne, 2, p2, testMember(4))
	require.NoError(t, err)
	c, err := s.Get(ctx, call)
	require.NoError(t, err)
	require.Equal(t, uint64(3), c.Version)
	require.Len(t, c.Members, 2)
}

func testUpdateMember(t *testing.T, s Store) {
	ctx, call, p1 := testCtx(t), protocol.NewID(), protocol.NewID()
	_, err := s.UpdateMember(ctx, call, p1, testMember(1))
	require.ErrorIs(t, err, ErrNotFound)
	_, err = s.AddMember(ctx, call, protocol.ClassGroup, 3, p1, testMember(1))
	require.NoError(t, err)
	_, err = s.UpdateMember(ctx, call, protocol.NewID(), testMember(1))
	require.ErrorIs(t, err, ErrNotMember)

	moved := testMember(1)
	moved.Forwarder = "fwd-failover"
	moved.Addr = netip.MustParseAddrPort("[2001:db8::7]:5004")
	c, err := s.UpdateMember(ctx, call, p1, moved)
	require.NoError(t, err)
	require.Equal(t, uint64(2), c.Version)
	got, err := s.Get(ctx, call)
	require.NoError(t, err)
	require.Equal(t, moved, got.Members[p1])
}

func testRemoveMember(t *testing.T, s Store) {
	ctx, call, p1, p2 := testCtx(t), protocol.NewID(), protocol.NewID(), protocol.NewID()
	_, err := s.RemoveMember(ctx, call, p1)
	require.ErrorIs(t, err, ErrNotFound)
	_, err = s.AddMember(ctx, call, protocol.ClassGroup, 3, p1, testMember(1))
	require.NoError(t, err)
	_, err = s.AddMember(ctx, call, protocol.ClassGroup, 3, p2, testMember(2))
	require.NoError(t, err)
	require.NoError(t, s.SaveCheckpoint(ctx, call, "bwe", []byte("x"), time.Minute))
	_, err = s.RemoveMember(ctx, call, protocol.NewID())
	require.ErrorIs(t, err, ErrNotMember)

	c, err := s.RemoveMember(ctx, call, p1)
	require.NoError(t, err)
	require.Equal(t, uint64(3), c.Version)
	require.Equal(t, map[protocol.ID]Member{p2: testMember(2)}, c.Members)

	c, err = s.RemoveMember(ctx, call, p2)
	require.NoError(t, err)
	require.Empty(t, c.Members)
	_, err = s.Get(ctx, call)
	require.ErrorIs(t, err, ErrNotFound)
	_, err = s.LoadCheckpoint(ctx, call, "bwe")
	require.ErrorIs(t, err, ErrNotFound, "checkpoints end with the call")
	require.ErrorIs(t, s.Touch(ctx, call), ErrNotFound)
}

func testTouch(t *testing.T, s Store) {
	ctx, call := testCtx(t), protocol.NewID()
	require.ErrorIs(t, s.Touch(ctx, call), ErrNotFound)
	_, err := s.AddMember(ctx, call, protocol.ClassGroup, 3, protocol.NewID(), testMember(1))
	require.NoError(t, err)
	require.NoError(t, s.Touch(ctx, call))
	c, err := s.Get(ctx, call)
	require.NoError(t, err)
	require.Equal(t, uint64(1), c.Version, "Touch is not a change")
}

func testCheckpoints(t *testing.T, s Store) {
	ctx, call := testCtx(t), protocol.NewID()
	_, err := s.LoadCheckpoint(ctx, call, "bwe")
	require.ErrorIs(t, err, ErrNotFound)
	// Checkpoints need no call record and never create one.
	require.NoError(t, s.SaveCheckpoint(ctx, call, "bwe", []byte{0, 1, 2, 0xff}, time.Minute))
	require.NoError(t, s.SaveCheckpoint(ctx, call, "layers", []byte("L1T3"), time.Minute))
	_, err = s.Get(ctx, call)
	require.ErrorIs(t, err, ErrNotFound)

	got, err := s.LoadCheckpoint(ctx, call, "bwe")
	require.NoError(t, err)
	require.Equal(t, []byte{0, 1, 2, 0xff}, got)
	require.NoError(t, s.SaveCheckpoint(ctx, call, "bwe", []byte("newer"), time.Minute))
	got, err = s.LoadCheckpoint(ctx, call, "bwe")
	require.NoError(t, err)
	require.Equal(t, []byte("newer"), got)
	got, err = s.LoadCheckpoint(ctx, call, "layers")
	require.NoError(t, err)
	require.Equal(t, []byte("L1T3"), got)
	require.NoError(t, s.SaveCheckpoint(ctx, call, "empty", nil, time.Minute))
	got, err = s.LoadCheckpoint(ctx, call, "empty")
	require.NoError(t, err)
	require.Empty(t, got)

	require.ErrorIs(t, s.SaveCheckpoint(ctx, call, "", nil, time.Minute), ErrInvalid)
	require.ErrorIs(t, s.SaveCheckpoint(ctx, call, "bwe", nil, 0), ErrInvalid)
	require.ErrorIs(t, s.SaveCheckpoint(ctx, call, "bwe", make([]byte, MaxCheckpointSize+1), time.Minute), ErrInvalid)
}

func testInvalidArguments(t *testing.T, s Store) {
	ctx, call, p := testCtx(t), protocol.NewID(), protocol.NewID()
	zoned := testMember(1)
	zoned.Addr = netip.MustParseAddrPort("[fe80::1%eth0]:5004")
	long := testMember(1)
	long.SSRCs = make([]uint32, 256)
	for name, add := range map[string]func() error{
		"zero call": func() error {
			_, err := s.AddMember(ctx, protocol.ID{}, protocol.ClassGroup, 3, p, testMember(1))
			return err
		},
		"zero member": func() error {
			_, err := s.AddMember(ctx, call, protocol.ClassGroup, 3, protocol.ID{}, testMember(1))
			return err
		},
		"bad class":  func() error { _, err := s.AddMember(ctx, call, 7, 3, p, testMember(1)); return err },
		"max size 0": func() error { _, err := s.AddMember(ctx, call, protocol.ClassGroup, 0, p, testMember(1)); return err },
		"zoned addr": func() error { _, err := s.AddMember(ctx, call, protocol.ClassGroup, 3, p, zoned); return err },
		"many SSRCs": func() error { _, err := s.AddMember(ctx, call, protocol.ClassGroup, 3, p, long); return err },
	} {
		require.ErrorIs(t, add(), ErrInvalid, name)
	}
	_, err := s.Get(ctx, call)
	require.ErrorIs(t, err, ErrNotFound, "a refused change stores nothing")
}

// testConcurrentAdd has 20 writers join one call at once: the compare-and-set
// must lose none of them.
func testConcurrentAdd(t *testing.T, s Store) {
	const n = 20
	ctx, call := testCtx(t), protocol.NewID()
	ids := make([]protocol.ID, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		ids[i] = protocol.NewID()
		wg.Go(func() {
			<-start
			_, errs[i] = s.AddMember(ctx, call, protocol.ClassGroup, n, ids[i], testMember(i))
		})
	}
	close(start)
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
	c, err := s.Get(ctx, call)
	require.NoError(t, err)
	require.Equal(t, uint64(n), c.Version)
	require.Len(t, c.Members, n)
	for i, id := range ids {
		require.Equal(t, testMember(i), c.Members[id])
	}
}

func testCanceledContext(t *testing.T, s Store) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	call := protocol.NewID()
	_, err := s.AddMember(ctx, call, protocol.ClassGroup, 3, protocol.NewID(), testMember(1))
	require.ErrorIs(t, err, ErrUnavailable)
	require.ErrorIs(t, err, context.Canceled)
	_, err = s.Get(ctx, call)
	require.ErrorIs(t, err, context.Canceled)
	require.ErrorIs(t, s.Touch(ctx, call), context.Canceled)
	_, err = s.LoadCheckpoint(ctx, call, "bwe")
	require.ErrorIs(t, err, context.Canceled)
}

func testResultsAreIsolated(t *testing.T, s Store) {
	ctx, call, p := testCtx(t), protocol.NewID(), protocol.NewID()
	m := testMember(1)
	c, err := s.AddMember(ctx, call, protocol.ClassGroup, 3, p, m)
	require.NoError(t, err)
	m.SSRCs[0] = 99
	c.Members[p].SSRCs[1] = 98
	got, err := s.Get(ctx, call)
	require.NoError(t, err)
	require.Equal(t, testMember(1), got.Members[p])
}
