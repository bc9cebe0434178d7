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
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/callrelay/callrelay/internal/embedredis"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
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
		Trunk:         netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i % 3)}), 7000),
		Addr:          netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), uint16(40000+i)),
		SSRCs:         []uint32{uint32(1000 + i), uint32(2000 + i)},
		JoinedAt:      time.Unix(1_700_000_000, int64(i)*1_000_001).UTC(),
		Subscriptions: []protocol.ID{{byte(i)}},
	}
}

// TestConformance runs the one suite every backend must pass: Memory, Redis
// on a real redis-server, and Redis on the demo's in-process stand-in.
func TestConformance(t *testing.T) {
	// A backend returns a function opening another client of one fresh
	// store, as another process would.
	backends := map[string]func(t *testing.T) func() Store{
		"memory": func(*testing.T) func() Store {
			s := NewMemory(Config{})
			return func() Store { return s }
		},
		"redis": func(t *testing.T) func() Store {
			return redisOpener(t, testenv.Redis(t).URL())
		},
		"embedredis": func(t *testing.T) func() Store {
			srv, err := embedredis.Start(zaptest.NewLogger(t, zaptest.Level(zap.ErrorLevel)))
			require.NoError(t, err)
			t.Cleanup(srv.Close)
			return redisOpener(t, srv.URL())
		},
	}
	tests := map[string]func(t *testing.T, s Store){
		"CreateAndGet":         testCreateAndGet,
		"AddMemberUnchanged":   testAddMemberUnchanged,
		"CallFull":             testCallFull,
		"UpdateMember":         testUpdateMember,
		"RemoveMember":         testRemoveMember,
		"RemoveMemberServedBy": testRemoveMemberServedBy,
		"Touch":                testTouch,
		"Checkpoints":          testCheckpoints,
		"InvalidArguments":     testInvalidArguments,
		"ConcurrentAdd":        testConcurrentAdd,
		"CanceledContext":      testCanceledContext,
		"ResultsAreIsolated":   testResultsAreIsolated,
	}
	// These take an opener: each writer uses its own client.
	multi := map[string]func(t *testing.T, open func() Store){
		"ConcurrentAddClients":   testConcurrentAddClients,
		"TakeoverRemoveRace":     testTakeoverRemoveRace,
		"ConcurrentAddAndRemove": testConcurrentAddAndRemove,
	}
	for bname, newBackend := range backends {
		t.Run(bname, func(t *testing.T) {
			for name, test := range tests {
				t.Run(name, func(t *testing.T) { test(t, newBackend(t)()) })
			}
			for name, test := range multi {
				t.Run(name, func(t *testing.T) { test(t, newBackend(t)) })
			}
		})
	}
}

// redisOpener opens Redis clients on url, each closed when t ends.
func redisOpener(t *testing.T, url string) func() Store {
	return func() Store {
		s, err := OpenRedis(url, Config{})
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, s.Close()) })
		return s
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

// testAddMemberUnchanged: re-adding a member with the same placement writes
// nothing, whatever its JoinedAt; a takeover (another forwarder) writes.
func testAddMemberUnchanged(t *testing.T, s Store) {
	ctx, call, p1, p2 := testCtx(t), protocol.NewID(), protocol.NewID(), protocol.NewID()
	_, err := s.AddMember(ctx, call, protocol.ClassGroup, 5, p1, testMember(1))
	require.NoError(t, err)
	want, err := s.AddMember(ctx, call, protocol.ClassGroup, 5, p2, testMember(2))
	require.NoError(t, err)

	again := testMember(2)
	again.JoinedAt = again.JoinedAt.Add(time.Hour)
	again.SSRCs = append([]uint32(nil), again.SSRCs...)
	c, err := s.AddMember(ctx, call, protocol.ClassGroup, 5, p2, again)
	require.NoError(t, err)
	require.Equal(t, want, c, "the current call, unchanged")
	got, err := s.Get(ctx, call)
	require.NoError(t, err)
	require.Equal(t, want, got)
	require.Equal(t, uint64(2), got.Version)

	// Even a full call takes an unchanged re-add.
	_, err = s.AddMember(ctx, call, protocol.ClassGroup, 5, p1, testMember(1))
	require.NoError(t, err)

	for name, edit := range map[string]func(m *Member){
		"forwarder": func(m *Member) { m.Forwarder = "fwd-taker" },
		"trunk":     func(m *Member) { m.Trunk = netip.MustParseAddrPort("192.0.2.99:7001") },
		"addr":      func(m *Member) { m.Addr = netip.MustParseAddrPort("10.9.9.9:1") },
		"ssrcs":     func(m *Member) { m.SSRCs = append(m.SSRCs, 7) },
		"no ssrcs":  func(m *Member) { m.SSRCs = nil },
		"subs":      func(m *Member) { m.Subscriptions = append(m.Subscriptions, protocol.ID{9}) },
	} {
		cur, err := s.Get(ctx, call)
		require.NoError(t, err)
		m := cur.Members[p2]
		edit(&m)
		c, err := s.AddMember(ctx, call, protocol.ClassGroup, 5, p2, m)
		require.NoError(t, err, name)
		require.Equal(t, cur.Version+1, c.Version, name)
		require.Equal(t, m, c.Members[p2], name)
	}
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

func testRemoveMemberServedBy(t *testing.T, s Store) {
	ctx, call, p1, p2 := testCtx(t), protocol.NewID(), protocol.NewID(), protocol.NewID()
	m1, m2 := testMember(1), testMember(2) // on fwd-1 and fwd-2
	_, err := s.RemoveMemberServedBy(ctx, call, p1, m1.Forwarder)
	require.ErrorIs(t, err, ErrNotFound)
	_, err = s.AddMember(ctx, call, protocol.ClassGroup, 3, p1, m1)
	require.NoError(t, err)
	want, err := s.AddMember(ctx, call, protocol.ClassGroup, 3, p2, m2)
	require.NoError(t, err)
	require.NoError(t, s.SaveCheckpoint(ctx, call, "bwe", []byte("x"), time.Minute))

	// Another forwarder's placement is not ours to remove.
	c, err := s.RemoveMemberServedBy(ctx, call, p1, m2.Forwarder)
	require.ErrorIs(t, err, ErrNotMember)
	require.Equal(t, want, c, "the current call comes with the refusal")
	c, err = s.RemoveMemberServedBy(ctx, call, protocol.NewID(), m1.Forwarder)
	require.ErrorIs(t, err, ErrNotMember)
	require.Equal(t, want, c)
	got, err := s.Get(ctx, call)
	require.NoError(t, err)
	require.Equal(t, want, got, "a refused removal changes nothing")

	c, err = s.RemoveMemberServedBy(ctx, call, p1, m1.Forwarder)
	require.NoError(t, err)
	require.Equal(t, want.Version+1, c.Version)
	require.Equal(t, map[protocol.ID]Member{p2: m2}, c.Members)

	c, err = s.RemoveMemberServedBy(ctx, call, p2, m2.Forwarder)
	require.NoError(t, err)
	require.Empty(t, c.Members)
	_, err = s.Get(ctx, call)
	require.ErrorIs(t, err, ErrNotFound)
	_, err = s.LoadCheckpoint(ctx, call, "bwe")
	require.ErrorIs(t, err, ErrNotFound, "checkpoints end with the call")
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

// testConcurrentAddClients has n forwarders, each with its own client, join
// one participant each to one call at once: none may be lost.
func testConcurrentAddClients(t *testing.T, open func() Store) {
	const n = 16
	ctx, call := testCtx(t), protocol.NewID()
	stores := make([]Store, n)
	ids := make([]protocol.ID, n)
	for i := range n {
		stores[i], ids[i] = open(), protocol.NewID()
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			_, errs[i] = stores[i].AddMember(ctx, call, protocol.ClassGroup, n, ids[i], testMember(i))
		})
	}
	close(start)
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
	c, err := stores[0].Get(ctx, call)
	require.NoError(t, err)
	require.Equal(t, uint64(n), c.Version)
	require.Len(t, c.Members, n)
	for i, id := range ids {
		require.Equal(t, testMember(i), c.Members[id])
	}
}

// testTakeoverRemoveRace races a participant's old forwarder removing it
// against its new forwarder placing it: in either order the new placement
// survives. Rounds alternate between a call with a bystander (the record
// stays) and without (the remove may delete the call; the place recreates
// it).
func testTakeoverRemoveRace(t *testing.T, open func() Store) {
	const rounds = 30
	ctx := testCtx(t)
	oldFwd, newFwd := open(), open()
	before, after := testMember(1), testMember(2)
	for round := range rounds {
		call, p := protocol.NewID(), protocol.NewID()
		_, err := oldFwd.AddMember(ctx, call, protocol.ClassGroup, 3, p, before)
		require.NoError(t, err)
		bystander := round%2 == 0
		if bystander {
			_, err = oldFwd.AddMember(ctx, call, protocol.ClassGroup, 3, protocol.NewID(), testMember(3))
			require.NoError(t, err)
		}
		var wg sync.WaitGroup
		var removeErr, placeErr error
		start := make(chan struct{})
		wg.Go(func() {
			<-start
			_, removeErr = oldFwd.RemoveMemberServedBy(ctx, call, p, before.Forwarder)
		})
		wg.Go(func() {
			<-start
			_, placeErr = newFwd.AddMember(ctx, call, protocol.ClassGroup, 3, p, after)
		})
		close(start)
		wg.Wait()
		require.NoError(t, placeErr)
		if removeErr != nil {
			require.ErrorIs(t, removeErr, ErrNotMember, "round %d", round)
		}
		c, err := newFwd.Get(ctx, call)
		require.NoError(t, err)
		require.Equal(t, after, c.Members[p], "round %d: the newer placement survives", round)
		if bystander {
			require.Len(t, c.Members, 2)
		} else {
			require.Len(t, c.Members, 1)
		}
	}
}

// testConcurrentAddAndRemove has forwarders join and leave one call at once,
// every participant ending up either in or out as its own last change says.
func testConcurrentAddAndRemove(t *testing.T, open func() Store) {
	const n = 12
	ctx, call := testCtx(t), protocol.NewID()
	stay := protocol.NewID()
	_, err := open().AddMember(ctx, call, protocol.ClassGroup, 2*n, stay, testMember(0))
	require.NoError(t, err)
	leavers := make([]protocol.ID, n)
	for i := range leavers {
		leavers[i] = protocol.NewID()
		_, err := open().AddMember(ctx, call, protocol.ClassGroup, 2*n, leavers[i], testMember(i))
		require.NoError(t, err)
	}
	joiners := make([]protocol.ID, n)
	errs := make([]error, 2*n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		joiners[i] = protocol.NewID()
		join, leave := open(), open()
		wg.Go(func() {
			<-start
			// Join, leave and join again: the last change stands.
			_, err1 := join.AddMember(ctx, call, protocol.ClassGroup, 2*n, joiners[i], testMember(i+1))
			_, err2 := join.RemoveMemberServedBy(ctx, call, joiners[i], testMember(i+1).Forwarder)
			_, err3 := join.AddMember(ctx, call, protocol.ClassGroup, 2*n, joiners[i], testMember(i+2))
			errs[i] = errors.Join(err1, err2, err3)
		})
		wg.Go(func() {
			<-start
			_, errs[n+i] = leave.RemoveMemberServedBy(ctx, call, leavers[i], testMember(i).Forwarder)
		})
	}
	close(start)
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
	c, err := open().Get(ctx, call)
	require.NoError(t, err)
	want := map[protocol.ID]Member{stay: testMember(0)}
	for i, id := range joiners {
		want[id] = testMember(i + 2)
	}
	require.Equal(t, want, c.Members)
	require.Equal(t, uint64(1+n+4*n), c.Version, "every change counted once")
}
