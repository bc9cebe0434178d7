package statestore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/callrelay/callrelay/protocol"
)

// OpKind says what an Op does.
type OpKind uint8

const (
	// OpPlace is AddMember(Call, Class, MaxSize, Participant, Member).
	OpPlace OpKind = iota + 1
	// OpRemove is RemoveMemberServedBy(Call, Participant, Member.Forwarder).
	OpRemove
	// OpRefresh is Touch(Call) then Get(Call); the Result carries the call
	// as read.
	OpRefresh
)

func (k OpKind) String() string {
	switch k {
	case OpPlace:
		return "place"
	case OpRemove:
		return "remove"
	case OpRefresh:
		return "refresh"
	}
	return fmt.Sprintf("OpKind(%d)", uint8(k))
}

// Op is one critical change for a Writer to apply.
type Op struct {
	Kind        OpKind
	Call        protocol.ID
	Class       protocol.CallClass // OpPlace
	MaxSize     int                // OpPlace
	Participant protocol.ID        // OpPlace, OpRemove
	Member      Member             // OpPlace; OpRemove uses Member.Forwarder
	Tag         uint64             // the caller's cookie, returned in the Result
}

// Result is what became of one Op.
type Result struct {
	Op Op
	// Call is the call after the change (OpRefresh: as read); zero if Err.
	Call Call
	// Err is nil or the store's definite answer (ErrCallFull, ErrNotMember,
	// ErrNotFound, ErrCorrupt, ErrInvalid, ...). It never wraps
	// ErrUnavailable or ErrConflict: those ops are retried, not failed.
	Err error
	// Queued is how long the op waited, from Submit until the attempt that
	// applied it began.
	Queued time.Duration
	// Took is how long that attempt took (the store's latency).
	Took time.Duration
}

// WriterConfig tunes a Writer. The zero value uses the defaults.
type WriterConfig struct {
	// QueueLimit is how many ops may wait (in flight included); Submit
	// beyond it fails with ErrQueueFull. Default DefaultQueueLimit.
	QueueLimit int
	// RetryMin and RetryMax bound the backoff while the store is
	// unreachable: it starts at RetryMin and doubles up to RetryMax.
	// Defaults 50 ms and 1 s.
	RetryMin, RetryMax time.Duration
	// Timeout bounds one attempt at one op. Default 2 s.
	Timeout time.Duration
	// Logger gets one line when the store becomes unreachable (with the
	// error) and one when it is back and the ops queued meanwhile have been
	// flushed (how long it was away, how many ops were flushed); never one
	// per op. Nil: no logs.
	Logger *zap.Logger
}

// Writer defaults.
const (
	DefaultQueueLimit   = 16384
	DefaultRetryMin     = 50 * time.Millisecond
	DefaultRetryMax     = time.Second
	DefaultWriteTimeout = 2 * time.Second
)

const (
	resultBuffer = 256  // Results() capacity
	ringMinCap   = 64   // the queue's first allocation
	ringKeepCap  = 1024 // an empty queue larger than this is released
)

// WriterStats is a snapshot of a Writer's counters.
type WriterStats struct {
	Applied       uint64        // ops applied without error
	Failed        uint64        // ops that failed for good (Result.Err set)
	Retries       uint64        // attempts that failed and were retried
	Degraded      bool          // see Writer.Degraded
	DegradedSince time.Time     // the first unavailability error; zero if not degraded
	Pending       int           // see Writer.Pending
	MaxQueued     time.Duration // the longest Result.Queued so far
}

// Writer applies critical changes in the background, one at a time and in
// submission order, so that a caller's control loop never waits on the
// store; while the store is unreachable it keeps them (bounded) and retries
// the oldest with backoff until the store answers again.
//
// An op retried after an attempt whose answer was lost may find its change
// already made: OpPlace then writes nothing and succeeds (see AddMember);
// OpRemove reports ErrNotMember or ErrNotFound.
type Writer struct {
	s       Store
	cfg     WriterConfig
	log     *zap.Logger
	results chan Result
	wake    chan struct{} // a Submit happened; capacity 1

	degraded atomic.Bool // written under mu, read anywhere

	mu    sync.Mutex
	ring  []queuedOp // circular; its length is its capacity
	head  int        // index of the oldest op
	n     int        // ops held, the head in flight included
	since time.Time  // when the store became unreachable
	stats WriterStats

	// Run's goroutine only: flushing the backlog after an outage.
	downFor   time.Duration
	backAt    time.Time
	flushLeft int
	flushed   int
}

type queuedOp struct {
	op Op
	at time.Time // submitted
}

// NewWriter returns a Writer for s; call Run to start it.
func NewWriter(s Store, cfg WriterConfig) *Writer {
	if cfg.QueueLimit <= 0 {
		cfg.QueueLimit = DefaultQueueLimit
	}
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = DefaultRetryMin
	}
	if cfg.RetryMax < cfg.RetryMin {
		cfg.RetryMax = max(DefaultRetryMax, cfg.RetryMin)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultWriteTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	return &Writer{
		s: s, cfg: cfg, log: log,
		results: make(chan Result, resultBuffer),
		wake:    make(chan struct{}, 1),
	}
}

// Submit queues op. It never blocks; it fails with ErrQueueFull when
// QueueLimit ops are pending, or ErrInvalid for an unknown Kind. The Writer
// keeps its own copy of op. Safe for concurrent use.
func (w *Writer) Submit(op Op) error {
	if op.Kind < OpPlace || op.Kind > OpRefresh {
		return fmt.Errorf("%w: %v", ErrInvalid, op.Kind)
	}
	op.Member = cloneMember(op.Member)
	now := time.Now()
	w.mu.Lock()
	if w.n >= w.cfg.QueueLimit {
		w.mu.Unlock()
		return ErrQueueFull
	}
	if w.n == len(w.ring) {
		w.growLocked()
	}
	w.ring[(w.head+w.n)%len(w.ring)] = queuedOp{op: op, at: now}
	w.n++
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
	return nil
}

// growLocked doubles the ring, up to QueueLimit, keeping the order.
func (w *Writer) growLocked() {
	size := min(max(ringMinCap, 2*len(w.ring)), w.cfg.QueueLimit)
	ring := make([]queuedOp, size)
	for i := range w.n {
		ring[i] = w.ring[(w.head+i)%len(w.ring)]
	}
	w.ring, w.head = ring, 0
}

// Results delivers one Result per op, in submission order. The Writer
// blocks on this channel, so the consumer must keep reading it.
func (w *Writer) Results() <-chan Result { return w.results }

// Degraded reports whether the store is unreachable: true from the first
// unavailability error until an op is applied (or definitely refused)
// again.
func (w *Writer) Degraded() bool { return w.degraded.Load() }

// Pending returns how many ops are waiting or in flight.
func (w *Writer) Pending() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n
}

// Stats returns a snapshot of the counters.
func (w *Writer) Stats() WriterStats {
	w.mu.Lock()
	defer w.mu.Unlock()
	st := w.stats
	st.Degraded, st.DegradedSince, st.Pending = w.degraded.Load(), w.since, w.n
	return st
}

// Run applies ops until ctx is done; ops still queued then stay queued (a
// result not yet delivered by then is dropped).
// Call it once, from one goroutine.
func (w *Writer) Run(ctx context.Context) {
	backoff := w.cfg.RetryMin
	for {
		q, ok := w.peek()
		if !ok {
			select {
			case <-ctx.Done():
				return
			case <-w.wake:
				continue
			}
		}
		start := time.Now()
		c, err := w.apply(ctx, q.op)
		if errors.Is(err, ErrUnavailable) || errors.Is(err, ErrConflict) {
			if ctx.Err() != nil {
				return
			}
			w.retrying(err, start)
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			backoff = min(2*backoff, w.cfg.RetryMax)
			continue
		}
		backoff = w.cfg.RetryMin
		res := Result{Op: q.op, Call: c, Err: err, Queued: start.Sub(q.at), Took: time.Since(start)}
		if err != nil {
			res.Call = Call{}
		}
		w.done(res)
		select {
		case w.results <- res:
		case <-ctx.Done():
			return
		}
	}
}

func (w *Writer) peek() (queuedOp, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.n == 0 {
		return queuedOp{}, false
	}
	return w.ring[w.head], true
}

// apply makes one attempt at op.
func (w *Writer) apply(ctx context.Context, op Op) (Call, error) {
	ctx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
	defer cancel()
	switch op.Kind {
	case OpPlace:
		return w.s.AddMember(ctx, op.Call, op.Class, op.MaxSize, op.Participant, op.Member)
	case OpRemove:
		return w.s.RemoveMemberServedBy(ctx, op.Call, op.Participant, op.Member.Forwarder)
	default: // OpRefresh; Submit let nothing else in
		if err := w.s.Touch(ctx, op.Call); err != nil {
			return Call{}, err
		}
		return w.s.Get(ctx, op.Call)
	}
}

// retrying notes a failed attempt that will be retried; an unavailable
// store makes the Writer degraded.
func (w *Writer) retrying(err error, now time.Time) {
	w.mu.Lock()
	w.stats.Retries++
	down := errors.Is(err, ErrUnavailable) && !w.degraded.Load()
	if down {
		w.since = now
		w.degraded.Store(true)
	}
	pending := w.n
	w.mu.Unlock()
	if !down {
		return
	}
	if w.flushLeft > 0 {
		w.logBack(now) // gone again before the last backlog was flushed
	}
	w.log.Warn("call state store unreachable: critical changes are queued and retried until it is back",
		zap.Error(err), zap.Int("pending", pending))
}

// done removes the head op, which the store has answered, and counts it.
func (w *Writer) done(res Result) {
	now := time.Now()
	w.mu.Lock()
	back := w.degraded.Load()
	if back {
		w.downFor, w.backAt = now.Sub(w.since), now
		w.flushLeft, w.flushed = w.n, 0
		w.since = time.Time{}
		w.degraded.Store(false)
	}
	w.ring[w.head] = queuedOp{} // drop references
	w.head = (w.head + 1) % len(w.ring)
	w.n--
	if w.n == 0 && len(w.ring) > ringKeepCap {
		w.ring, w.head = nil, 0
	}
	if res.Err == nil {
		w.stats.Applied++
	} else {
		w.stats.Failed++
	}
	w.stats.MaxQueued = max(w.stats.MaxQueued, res.Queued)
	w.mu.Unlock()
	if w.flushLeft > 0 {
		w.flushLeft--
		w.flushed++
		if w.flushLeft == 0 {
			w.logBack(now)
		}
	}
}

func (w *Writer) logBack(now time.Time) {
	w.log.Info("call state store reachable again; queued changes flushed",
		zap.Duration("unreachable_for", w.downFor), zap.Int("flushed", w.flushed),
		zap.Duration("flush_took", now.Sub(w.backAt)))
	w.flushLeft, w.flushed = 0, 0
}
