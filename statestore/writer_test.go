package statestore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// startWriter runs a Writer on s until the test ends.
func startWriter(t *testing.T, s Store, cfg WriterConfig) *Writer {
	t.Helper()
	w := NewWriter(s, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return w
}

func nextResult(t *testing.T, w *Writer) Result {
	t.Helper()
	select {
	case r := <-w.Results():
		return r
	case <-time.After(20 * time.Second):
		t.Fatalf("no result after 20s; %d ops pending", w.Pending())
		return Result{}
	}
}

func placeOp(call, p protocol.ID, m Member, tag uint64) Op {
	return Op{Kind: OpPlace, Call: call, Class: protocol.ClassGroup, MaxSize: 6, Participant: p, Member: m, Tag: tag}
}

func removeOp(call, p protocol.ID, fwd string, tag uint64) Op {
	return Op{Kind: OpRemove, Call: call, Participant: p, Member: Member{Forwarder: fwd}, Tag: tag}
}

// fastRetries keeps outage tests short.
var fastRetries = WriterConfig{RetryMin: 10 * time.Millisecond, RetryMax: 100 * time.Millisecond, Timeout: time.Second}

func TestWriterAppliesInOrder(t *testing.T) {
	s, _ := newTestRedis(t, Config{})
	w := startWriter(t, s, fastRetries)
	call, full, p := protocol.NewID(), protocol.NewID(), make([]protocol.ID, 4)
	for i := range p {
		p[i] = protocol.NewID()
	}
	type step struct {
		op      Op
		err     error
		members []protocol.ID // of the call after the op, when err is nil
	}
	steps := []step{
		{op: placeOp(call, p[0], testMember(0), 1), members: p[:1]},
		{op: placeOp(call, p[1], testMember(1), 2), members: p[:2]},
		{op: placeOp(call, p[2], testMember(2), 3), members: p[:3]},
		{op: removeOp(call, p[1], testMember(2).Forwarder, 4), err: ErrNotMember},
		{op: removeOp(call, p[1], testMember(1).Forwarder, 5), members: []protocol.ID{p[0], p[2]}},
		{op: Op{Kind: OpRefresh, Call: call, Tag: 6}, members: []protocol.ID{p[0], p[2]}},
		{op: Op{Kind: OpRefresh, Call: protocol.NewID(), Tag: 7}, err: ErrNotFound},
		{op: Op{Kind: OpPlace, Call: full, Class: protocol.ClassOneToOne, MaxSize: 1, Participant: p[0], Member: testMember(0), Tag: 8}, members: p[:1]},
		{op: Op{Kind: OpPlace, Call: full, Class: protocol.ClassOneToOne, MaxSize: 1, Participant: p[3], Member: testMember(3), Tag: 9}, err: ErrCallFull},
		{op: removeOp(call, p[3], testMember(3).Forwarder, 10), err: ErrNotMember},
	}
	for _, st := range steps {
		require.NoError(t, w.Submit(st.op))
	}
	for i, st := range steps {
		r := nextResult(t, w)
		require.Equal(t, st.op.Tag, r.Op.Tag, "results come in submission order")
		require.Equal(t, st.op.Kind, r.Op.Kind)
		if st.err != nil {
			require.ErrorIs(t, r.Err, st.err, "step %d", i)
			require.Zero(t, r.Call, "step %d: no call with an error", i)
			continue
		}
		require.NoError(t, r.Err, "step %d", i)
		require.Len(t, r.Call.Members, len(st.members), "step %d", i)
		for _, id := range st.members {
			require.Contains(t, r.Call.Members, id, "step %d", i)
		}
		require.GreaterOrEqual(t, r.Queued, time.Duration(0))
	}
	require.Zero(t, w.Pending())
	st := w.Stats()
	require.Equal(t, uint64(6), st.Applied)
	require.Equal(t, uint64(4), st.Failed)
	require.Zero(t, st.Retries)
	require.False(t, st.Degraded)
}

// TestWriterOutage takes Redis away mid-run in three ways, queues ops while
// it is away, and checks they are all applied in order once it is back.
func TestWriterOutage(t *testing.T) {
	const limit = 8
	for name, tc := range map[string]struct {
		down, up func(t *testing.T, srv *testenv.RedisServer)
		empty    bool // Redis comes back without its data
	}{
		"hung": {
			down: func(t *testing.T, srv *testenv.RedisServer) { require.NoError(t, srv.Signal(syscall.SIGSTOP)) },
			up:   func(t *testing.T, srv *testenv.RedisServer) { require.NoError(t, srv.Signal(syscall.SIGCONT)) },
		},
		"stopped": {
			down:  func(_ *testing.T, srv *testenv.RedisServer) { srv.Stop() },
			up:    func(t *testing.T, srv *testenv.RedisServer) { require.NoError(t, srv.Restart()) },
			empty: true,
		},
		"read-only replica": {
			down: func(t *testing.T, srv *testenv.RedisServer) { replicaOf(t, srv, "127.0.0.1", "1") },
			up:   func(t *testing.T, srv *testenv.RedisServer) { replicaOf(t, srv, "NO", "ONE") },
		},
	} {
		t.Run(name, func(t *testing.T) {
			srv := testenv.Redis(t)
			s, _ := openTestRedis(t, srv, Config{})
			core, logs := observer.New(zapcore.InfoLevel)
			cfg := fastRetries
			cfg.QueueLimit, cfg.Logger = limit, zap.New(core)
			w := startWriter(t, s, cfg)
			call, p := protocol.NewID(), []protocol.ID{protocol.NewID(), protocol.NewID(), protocol.NewID(), protocol.NewID(), protocol.NewID()}

			require.NoError(t, w.Submit(placeOp(call, p[0], testMember(0), 100)))
			require.NoError(t, nextResult(t, w).Err)

			tc.down(t, srv)
			moved := testMember(4)
			ops := []Op{
				placeOp(call, p[1], testMember(1), 1),
				placeOp(call, p[2], testMember(2), 2),
				placeOp(call, p[3], testMember(3), 3),
				removeOp(call, p[0], testMember(0).Forwarder, 4),
				placeOp(call, p[1], moved, 5),
				removeOp(call, p[2], "fwd-other", 6),
				placeOp(call, p[4], testMember(5), 7),
				{Kind: OpRefresh, Call: call, Tag: 8},
			}
			require.NoError(t, w.Submit(ops[0]))
			testenv.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
				if !w.Degraded() {
					return errors.New("writer not degraded")
				}
				return nil
			})
			for _, op := range ops[1:] {
				require.NoError(t, w.Submit(op))
			}
			require.ErrorIs(t, w.Submit(removeOp(call, p[1], "x", 9)), ErrQueueFull)
			require.Equal(t, limit, w.Pending())
			st := w.Stats()
			require.True(t, st.Degraded)
			require.False(t, st.DegradedSince.IsZero())
			require.Equal(t, limit, st.Pending)
			testenv.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
				if w.Stats().Retries < 2 {
					return errors.New("head op not retried yet")
				}
				return nil
			})
			select {
			case r := <-w.Results():
				t.Fatalf("a result while Redis is away: %+v", r)
			default:
			}

			tc.up(t, srv)
			want := map[protocol.ID]Member{p[1]: moved, p[2]: testMember(2), p[3]: testMember(3), p[4]: testMember(5)}
			for _, op := range ops {
				r := nextResult(t, w)
				require.Equal(t, op.Tag, r.Op.Tag, "in submission order")
				switch {
				case op.Tag == 6:
					require.ErrorIs(t, r.Err, ErrNotMember, "another forwarder's placement stays")
				case op.Tag == 4 && tc.empty:
					require.ErrorIs(t, r.Err, ErrNotMember, "p0 was lost with Redis's memory")
				default:
					require.NoError(t, r.Err, "op %d", op.Tag)
				}
				require.NotErrorIs(t, r.Err, ErrUnavailable)
				if op.Kind == OpRefresh {
					require.Equal(t, want, r.Call.Members)
				}
			}
			require.False(t, w.Degraded())
			require.Zero(t, w.Pending())
			c, err := s.Get(testCtx(t), call)
			require.NoError(t, err)
			require.Equal(t, want, c.Members, "final record")
			st = w.Stats()
			require.False(t, st.Degraded)
			require.True(t, st.DegradedSince.IsZero())
			require.Greater(t, st.MaxQueued, time.Duration(0))
			require.Equal(t, uint64(limit+1), st.Applied+st.Failed)

			// One line when it went away, one when it was back and flushed.
			warns := logs.FilterLevelExact(zapcore.WarnLevel).All()
			require.Len(t, warns, 1)
			require.Contains(t, warns[0].Message, "unreachable")
			require.NotEmpty(t, warns[0].ContextMap()["error"])
			infos := logs.FilterLevelExact(zapcore.InfoLevel).All()
			require.Len(t, infos, 1)
			require.Contains(t, infos[0].Message, "reachable again")
			require.Equal(t, int64(limit), infos[0].ContextMap()["flushed"])
			require.Positive(t, infos[0].ContextMap()["unreachable_for"])
		})
	}
}

func replicaOf(t *testing.T, srv *testenv.RedisServer, host, port string) {
	t.Helper()
	_, raw := openTestRedis(t, srv, Config{})
	require.NoError(t, raw.Do(testCtx(t), "REPLICAOF", host, port).Err())
}

// TestWriterCorruptRecord: a record the store cannot decode fails its ops
// for good (they are not retried), and ops for other calls go on.
func TestWriterCorruptRecord(t *testing.T) {
	s, raw := newTestRedis(t, Config{})
	w := startWriter(t, s, fastRetries)
	bad, good := protocol.NewID(), protocol.NewID()
	require.NoError(t, raw.Set(testCtx(t), stateKey(bad), "\x02garbage, not a record", 0).Err())
	p1, p2 := protocol.NewID(), protocol.NewID()
	ops := []Op{
		placeOp(bad, p1, testMember(1), 1),
		placeOp(good, p1, testMember(1), 2),
		{Kind: OpRefresh, Call: bad, Tag: 3},
		removeOp(bad, p1, testMember(1).Forwarder, 4),
		placeOp(good, p2, testMember(2), 5),
	}
	for _, op := range ops {
		require.NoError(t, w.Submit(op))
	}
	for _, op := range ops {
		r := nextResult(t, w)
		require.Equal(t, op.Tag, r.Op.Tag)
		if op.Call == bad {
			require.ErrorIs(t, r.Err, ErrCorrupt, "op %d", op.Tag)
		} else {
			require.NoError(t, r.Err, "op %d", op.Tag)
		}
	}
	c, err := s.Get(testCtx(t), good)
	require.NoError(t, err)
	require.Equal(t, map[protocol.ID]Member{p1: testMember(1), p2: testMember(2)}, c.Members)
	st := w.Stats()
	require.Equal(t, uint64(2), st.Applied)
	require.Equal(t, uint64(3), st.Failed)
	require.Zero(t, st.Retries)
	require.False(t, w.Degraded())
}

func TestWriterSubmit(t *testing.T) {
	w := NewWriter(NewMemory(Config{}), WriterConfig{QueueLimit: 3})
	require.ErrorIs(t, w.Submit(Op{Call: protocol.NewID()}), ErrInvalid)
	require.ErrorIs(t, w.Submit(Op{Kind: OpRefresh + 1}), ErrInvalid)
	m := testMember(1)
	for i := range 3 {
		require.NoError(t, w.Submit(placeOp(protocol.NewID(), protocol.NewID(), m, uint64(i))))
	}
	require.ErrorIs(t, w.Submit(Op{Kind: OpRefresh, Call: protocol.NewID()}), ErrQueueFull)
	require.Equal(t, 3, w.Pending())
	m.SSRCs[0] = 99 // the writer holds its own copy
	w.mu.Lock()
	require.Equal(t, testMember(1), w.ring[w.head].op.Member)
	w.mu.Unlock()

	// Submit never blocks, from many goroutines at once.
	w = NewWriter(NewMemory(Config{}), WriterConfig{QueueLimit: 100})
	var ok, full, other atomic.Int64
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			for range 20 {
				switch err := w.Submit(Op{Kind: OpRefresh, Call: protocol.NewID()}); {
				case err == nil:
					ok.Add(1)
				case errors.Is(err, ErrQueueFull):
					full.Add(1)
				default:
					other.Add(1)
				}
			}
		})
	}
	wg.Wait()
	require.Zero(t, other.Load())
	require.Equal(t, int64(100), ok.Load())
	require.Equal(t, int64(100), full.Load())
	require.Equal(t, 100, w.Pending())
}

// flakyStore is a Memory that answers ErrUnavailable while down.
type flakyStore struct {
	*Memory
	down atomic.Bool
}

func (f *flakyStore) AddMember(ctx context.Context, callID protocol.ID, class protocol.CallClass, maxSize int, participant protocol.ID, m Member) (Call, error) {
	if f.down.Load() {
		return Call{}, fmt.Errorf("%w: test outage", ErrUnavailable)
	}
	return f.Memory.AddMember(ctx, callID, class, maxSize, participant, m)
}

// TestWriterManyOps pushes a burst through the ring, across an outage, and
// checks order, counts and that the ring is released once drained.
func TestWriterManyOps(t *testing.T) {
	const n = 3000
	s := &flakyStore{Memory: NewMemory(Config{})}
	core, logs := observer.New(zapcore.InfoLevel)
	cfg := fastRetries
	cfg.QueueLimit, cfg.Logger = n, zap.New(core)
	s.down.Store(true)
	w := startWriter(t, s, cfg)
	calls := make([]protocol.ID, 10)
	for i := range calls {
		calls[i] = protocol.NewID()
	}
	for i := range n {
		require.NoError(t, w.Submit(placeOp(calls[i%len(calls)], protocol.NewID(), testMember(i), uint64(i))))
	}
	testenv.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if !w.Degraded() {
			return errors.New("writer not degraded")
		}
		return nil
	})
	s.down.Store(false)
	for i := range n {
		r := nextResult(t, w)
		require.Equal(t, uint64(i), r.Op.Tag)
		if i < 6*len(calls) { // calls hold 6 members; later joins are refused
			require.NoError(t, r.Err)
		} else {
			require.ErrorIs(t, r.Err, ErrCallFull)
		}
	}
	require.Zero(t, w.Pending())
	w.mu.Lock()
	require.Nil(t, w.ring, "a drained large ring is released")
	w.mu.Unlock()
	require.Len(t, logs.FilterMessageSnippet("unreachable").All(), 1)
	back := logs.FilterMessageSnippet("reachable again").All()
	require.Len(t, back, 1)
	require.Equal(t, int64(n), back[0].ContextMap()["flushed"])
}

func TestWriterRunStops(t *testing.T) {
	s := &flakyStore{Memory: NewMemory(Config{})}
	s.down.Store(true)
	w := NewWriter(s, WriterConfig{RetryMin: time.Hour, RetryMax: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Run(ctx)
	}()
	require.NoError(t, w.Submit(placeOp(protocol.NewID(), protocol.NewID(), testMember(1), 1)))
	testenv.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if !w.Degraded() {
			return errors.New("writer not degraded")
		}
		return nil
	})
	cancel() // in the middle of an hour's backoff
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	require.Equal(t, 1, w.Pending(), "an op not applied stays queued")
}
