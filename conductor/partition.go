package conductor

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// partition decides for the calls of one partition while its lease is
// held. One goroutine runs it; NATS callbacks only queue raw messages for
// it, and store reads and writes go through the conductor's ioQueue.
type partition struct {
	c      *Conductor
	part   int
	epoch  atomic.Uint32 // the lease's; raised in place when the lease is taken again (Conductor.retake)
	in     chan []byte
	loaded chan loadResult
	sub    *nats.Subscription

	validUntil atomic.Int64 // unix ns: the lease as renewed, less a margin

	calls    map[protocol.ID]*callState
	tick     uint64                    // decision ticks so far
	stride   int                       // group calls are decided every stride ticks
	unknown  map[protocol.ID]time.Time // calls the store does not know, until when to ignore them
	batch    protocol.MetadataBatch
	dec      protocol.CallDecision
	buf      []byte
	fwd      []protocol.ID
	lastWarn time.Time

	marks       map[string]batchMark // the last batch taken from each forwarder (metafresh.go)
	marksPruned time.Time
}

// callState is one call as the conductor sees it.
type callState struct {
	id       protocol.ID
	subject  string // where its decisions go
	det      *SpeakerDetector
	ready    bool      // the store knows the call and its checkpoint is restored
	restored bool      // from a checkpoint
	since    time.Time // when its first metadata came
	seq      uint32
	forward  []protocol.ID
	dominant protocol.ID
	decided  bool
	lastSent time.Time
	lastSeen time.Time
	lastCkpt time.Time
	dirty    bool
	spurts   map[protocol.ID]spurt
	members  map[protocol.ID]struct{} // everyone the metadata named
	video    *callVideo               // nil until a member reports video (video.go)
	place    *callPlacement           // nil until a member is placed (placement_call.go)
	// pendingSince: when the first metadata not yet decided on arrived
	// (zero: none), for the decision latency (report.go).
	pendingSince time.Time
}

// spurt is a member's current run of speech, for switch latency.
type spurt struct{ start, last time.Time }

// loadResult is what the store said about a call new to this partition.
type loadResult struct {
	call     protocol.ID
	notFound bool
	err      error  // the store did not answer, or a record did not decode
	corrupt  string // the record that did not decode ("call", "checkpoint"), if that was err
	ckpt     []byte
	// joined: the call record's members' join times (nil: not read), for
	// the first placement (placement_call.go).
	joined map[protocol.ID]time.Time
}

func newPartition(c *Conductor, part int, epoch uint32) *partition {
	p := &partition{
		c: c, part: part,
		in:      make(chan []byte, c.cfg.Queue),
		loaded:  make(chan loadResult, c.cfg.Queue),
		calls:   make(map[protocol.ID]*callState),
		stride:  1,
		unknown: make(map[protocol.ID]time.Time),
	}
	p.epoch.Store(epoch)
	p.setValidUntil(c.cfg.Now().Add(c.validFor()))
	return p
}

func (p *partition) setValidUntil(t time.Time) { p.validUntil.Store(t.UnixNano()) }
func (p *partition) setEpoch(e uint32)         { p.epoch.Store(e) }

func (p *partition) subscribe() error {
	sub, err := p.c.cfg.NATS.Subscribe(protocol.MetadataSubject(p.c.cfg.Subject, p.part), func(m *nats.Msg) {
		select {
		case p.in <- m.Data:
		default:
			p.c.m.rejected.WithLabelValues("queue_full").Inc()
		}
	})
	p.sub = sub
	return err
}

func (p *partition) run(ctx context.Context, o *ownedPartition) {
	tick := time.NewTicker(p.c.cfg.DecideEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			_ = p.sub.Unsubscribe()
			p.c.rep.setCalls(p.part, 0)
			p.checkpointAll(p.c.cfg.Now(), true)
			return
		case data := <-p.in:
			p.onMetadata(data, p.c.cfg.Now())
		case r := <-p.loaded:
			p.onLoaded(r, p.c.cfg.Now())
		case <-tick.C:
			p.decideAll(p.c.cfg.Now())
		}
	}
}

// reject counts a rejected message and logs at most one line every 10 s
// per partition.
func (p *partition) reject(reason string, now time.Time, fields ...zap.Field) {
	p.c.m.rejected.WithLabelValues(reason).Inc()
	if now.Sub(p.lastWarn) >= 10*time.Second {
		p.lastWarn = now
		p.c.log.Warn("metadata rejected", append(fields, zap.String("reason", reason), zap.Int("partition", p.part))...)
	}
}

// onMetadata feeds one batch to the calls' detectors.
func (p *partition) onMetadata(data []byte, now time.Time) {
	b := &p.batch
	if err := b.Unmarshal(data, p.c.cfg.Key); err != nil {
		p.reject("malformed", now, zap.Error(err))
		return
	}
	if int(b.Partition) != p.part {
		p.reject("wrong_partition", now, zap.String("forwarder", b.Forwarder), zap.Uint16("batch_partition", b.Partition))
		return
	}
	if !p.takeBatch(b, now) {
		return
	}
	p.c.m.metadata.Inc()
	tick := time.Duration(b.TickMillis) * time.Millisecond
	for i := range b.Calls {
		cm := &b.Calls[i]
		if protocol.PartitionOf(cm.Call, p.c.cfg.Partitions) != p.part {
			p.reject("wrong_partition", now, zap.Stringer("call", cm.Call), zap.String("forwarder", b.Forwarder))
			continue
		}
		cs := p.call(cm.Call, now)
		if cs == nil {
			continue
		}
		cs.lastSeen = now
		if cs.pendingSince.IsZero() {
			cs.pendingSince = now
		}
		for j := range cm.Members {
			p.observePlacement(cs, b.Forwarder, &cm.Members[j], now)
			p.observe(cs, &cm.Members[j], tick, now)
		}
	}
}

// call returns the call's state, creating it (and asking the store about
// it) on first sight; nil for a call the store recently did not know.
func (p *partition) call(id protocol.ID, now time.Time) *callState {
	if cs := p.calls[id]; cs != nil {
		return cs
	}
	if until, ok := p.unknown[id]; ok {
		if now.Before(until) {
			p.c.m.rejected.WithLabelValues("unknown_call").Inc()
			return nil
		}
		delete(p.unknown, id)
	}
	cs := &callState{id: id, subject: protocol.CallSubject(p.c.cfg.Subject, id), det: NewSpeakerDetector(p.c.cfg.Speaker), lastSeen: now, since: now,
		spurts: make(map[protocol.ID]spurt), members: make(map[protocol.ID]struct{})}
	p.calls[id] = cs
	switch {
	case p.c.m.down.Load():
		cs.ready = true // the store does not answer: decide without the checkpoint
		p.c.m.storeErrors.Inc()
	case !p.c.io.load(id, p.loaded):
		cs.ready = true // the queue is full: decide without the checkpoint
	}
	return cs
}

func (p *partition) observe(cs *callState, mm *protocol.MemberMetadata, tick time.Duration, now time.Time) {
	if mm.Flags&protocol.MetaLeft != 0 {
		cs.det.Remove(mm.Participant)
		delete(cs.spurts, mm.Participant)
		delete(cs.members, mm.Participant)
		cs.forgetVideo(mm.Participant)
		cs.dirty = true
		return
	}
	cs.observeVideo(mm, now, p.c.cfg.Video)
	if len(cs.members) < 256 {
		cs.members[mm.Participant] = struct{}{}
	}
	if mm.VoicePackets > 0 {
		// Who spoke when moves on: saved every CheckpointEvery, so a
		// successor's first decision forwards the current speakers.
		cs.dirty = true
	}
	cs.det.Observe(now, Observation{
		Participant: mm.Participant, Tick: tick,
		Packets: int(mm.Packets), VoicePackets: int(mm.VoicePackets), PayloadBytes: int(mm.PayloadBytes),
		MeanLevel: mm.MeanLevel, MaxLevel: mm.MaxLevel, Onset: mm.Flags&protocol.MetaOnset != 0,
	})
	// Speech runs, for the switch latency histogram: a tick with mostly
	// voice-flagged packets continues a run, a gap of 400 ms ends it.
	if mm.Packets >= 2 && 2*int(mm.VoicePackets) >= int(mm.Packets) {
		s := cs.spurts[mm.Participant]
		if now.Sub(s.last) > 400*time.Millisecond {
			s.start = now.Add(-tick)
		}
		s.last = now
		cs.spurts[mm.Participant] = s
	}
}

// onLoaded completes a new call with what the store said.
func (p *partition) onLoaded(r loadResult, now time.Time) {
	cs := p.calls[r.call]
	if cs == nil {
		return
	}
	switch {
	case r.notFound:
		delete(p.calls, r.call)
		p.unknown[r.call] = now.Add(unknownHold)
		p.reject("unknown_call", now, zap.Stringer("call", r.call))
		return
	case r.corrupt != "":
		// The metadata is authenticated by the cluster key, so decide
		// without the record; the operator finds it by the count and log.
		p.malformed(r.corrupt, r.call, r.err)
	case r.err != nil:
		// The store is down: decide without the checkpoint.
		p.c.m.storeErrors.Inc()
	case r.ckpt != nil:
		var ck statestore.ConductorCheckpoint
		if err := ck.UnmarshalBinary(r.ckpt); err != nil {
			p.malformed("checkpoint", r.call, err)
			break
		}
		cs.det.Restore(ck.Speaker)
		cs.seq = ck.Seq
		cs.restored = true
		p.c.m.restored.Inc()
	}
	if r.joined != nil {
		cs.takeRecord(r.joined)
	}
	cs.ready = true
	// A restored call is decided at once, not at the next tick: after a
	// takeover this is its first decision from the new holder, and the
	// checkpoint (saved every CheckpointEvery while members speak) says who
	// spoke lately. But only if that forwards someone: a checkpoint older
	// than RecentWindow, with only a quiet forwarder's metadata come yet,
	// would forward nobody, and the forwarders would shut the speaker off
	// until a later decision (for a whole takeover if this holder dies
	// first: TestConductorSIGKILLTakeover caught it, 2 s of silence). Such
	// a call waits a tick like a call decided afresh (fresh), so every
	// forwarder's metadata of it has come; the forwarders keep the last
	// decision meanwhile.
	if cs.restored && now.UnixNano() <= p.validUntil.Load() &&
		len(cs.det.Recent(now, p.c.cfg.RecentWindow, p.c.cfg.MaxForwarded, p.fwd[:0])) > 0 {
		p.decideOne(cs, now)
	}
}

// fresh: a call not decided yet (afresh, or restored from a checkpoint
// that forwards nobody) whose first metadata came less than a decision
// tick ago; some of its forwarders may not have reported yet.
func (p *partition) fresh(cs *callState, now time.Time) bool {
	return !cs.decided && now.Sub(cs.since) < p.c.cfg.DecideEvery
}

// malformed counts and logs a record of the call that did not decode.
func (p *partition) malformed(record string, call protocol.ID, err error) {
	p.c.m.malformed.WithLabelValues(record).Inc()
	p.c.log.Warn("malformed "+record+" record in the state store: deciding the call afresh",
		zap.Stringer("call", call), zap.Error(err))
}

// decideAll runs one decision tick over every call.
func (p *partition) decideAll(now time.Time) {
	if now.UnixNano() > p.validUntil.Load() {
		return // the lease may have passed to another conductor: stay quiet
	}
	began := time.Now()
	p.tick++
	for id, cs := range p.calls {
		if now.Sub(cs.lastSeen) > p.c.cfg.IdleCall {
			delete(p.calls, id)
			continue
		}
		if !cs.ready || p.fresh(cs, now) {
			continue
		}
		if cs.group() && p.tick%uint64(p.stride) != 0 {
			p.c.m.deferred.Inc() // behind: group calls wait, one-to-one calls never do
			continue
		}
		p.decideOne(cs, now)
		p.place(cs, now)
	}
	for id, until := range p.unknown {
		if now.After(until) {
			delete(p.unknown, id)
		}
	}
	if s := nextStride(p.stride, time.Since(began), p.c.cfg.DecideEvery, len(p.in), cap(p.in)); s != p.stride {
		p.c.log.Info("decision rate for group calls changed", zap.Int("partition", p.part),
			zap.Int("every_n_ticks", s), zap.Duration("tick_took", time.Since(began)), zap.Int("queued", len(p.in)))
		p.stride = s
	}
	p.c.m.behind.Set(float64(p.stride))
	p.c.rep.setCalls(p.part, len(p.calls))
}

// decideOne decides one call and saves its checkpoint when due: a new
// dominant speaker at once (a successor must not start from silence), the
// rest of the state every CheckpointEvery.
func (p *partition) decideOne(cs *callState, now time.Time) {
	if switched := p.decide(cs, now); switched || cs.dirty && now.Sub(cs.lastCkpt) >= p.c.cfg.CheckpointEvery {
		p.checkpoint(cs, now)
	}
}

// The conductor protects itself: when a decision tick takes more than half
// its period, or metadata piles up in the queue, group calls are decided
// every second tick, then every fourth; one-to-one calls are decided every
// tick whatever happens. When a tick is cheap again (under a quarter of the
// period, queue under a quarter full) the stride halves back. Forwarders
// never wait for any of it: they keep the last decision.
const maxStride = 4

func nextStride(stride int, took, period time.Duration, queued, queueCap int) int {
	switch {
	case took > period/2 || queued > queueCap/2:
		return min(stride*2, maxStride)
	case took < period/4 && queued < queueCap/4:
		return max(stride/2, 1)
	}
	return stride
}

// group reports whether the call has more than two members, as far as
// the metadata showed.
func (cs *callState) group() bool { return len(cs.members) > 2 }

// decide runs one call's decision and publishes it when it changed (or is
// due for a repeat); it reports whether the dominant speaker changed.
func (p *partition) decide(cs *callState, now time.Time) bool {
	defer p.noteDecided(cs) // the decision latency (report.go)
	start := time.Now()
	dom, changed := cs.det.Decide(now)
	p.fwd = cs.det.Recent(now, p.c.cfg.RecentWindow, p.c.cfg.MaxForwarded, p.fwd[:0])
	setChanged := !sameSet(p.fwd, cs.forward)
	if changed && !dom.IsZero() {
		p.c.m.switches.Inc()
		if s, ok := cs.spurts[dom]; ok && now.Sub(s.last) < time.Second {
			p.c.m.switchLatency.Observe(now.Sub(s.start).Seconds())
		}
	}
	videoChanged := cs.allocateVideo(now, dom, p.fwd, p.c.m.videoChanges)
	if changed {
		p.noteSpeaker(cs, dom, now)
	}
	if videoChanged {
		p.noteLayers(cs, now)
	}
	if !changed && !setChanged && !videoChanged && cs.decided && now.Sub(cs.lastSent) < p.c.cfg.Republish {
		return false
	}
	if changed || setChanged || videoChanged || !cs.decided {
		cs.seq++
		cs.dirty = true
		cs.dominant = dom
		cs.forward = append(cs.forward[:0], p.fwd...)
	}
	cs.decided = true
	p.publish(cs, now)
	p.c.m.decideSeconds.Observe(time.Since(start).Seconds())
	return changed
}

func (p *partition) publish(cs *callState, now time.Time) {
	d := &p.dec
	d.Call, d.Partition, d.Epoch, d.Seq, d.At = cs.id, uint16(p.part), p.epoch.Load(), cs.seq, now
	d.Dominant, d.Forward, d.Conductor = cs.dominant, cs.forward, p.c.cfg.ID
	d.Video, d.Senders, d.Layers = false, nil, nil
	if cs.video != nil {
		d.Video, d.Senders, d.Layers = true, cs.video.senders, cs.video.layers
	}
	var err error
	if p.buf, err = d.Marshal(p.buf[:0], p.c.cfg.Key); err != nil {
		p.c.log.Error("encoding decision", zap.Stringer("call", cs.id), zap.Error(err))
		return
	}
	if err := p.c.cfg.NATS.Publish(cs.subject, p.buf); err != nil {
		p.c.m.natsErrors.Inc()
		return
	}
	cs.lastSent = now
	p.c.m.decisions.Inc()
	p.noteSent(cs)
}

// checkpoint saves a call's ephemeral state through the io queue.
func (p *partition) checkpoint(cs *callState, now time.Time) {
	if p.c.m.down.Load() {
		return // the store does not answer: it stays dirty, saved once it does
	}
	ck := statestore.ConductorCheckpoint{Epoch: p.epoch.Load(), Seq: cs.seq, Speaker: cs.det.State()}
	data, err := ck.MarshalBinary()
	if err != nil {
		p.c.log.Error("encoding checkpoint", zap.Stringer("call", cs.id), zap.Error(err))
		return
	}
	if p.c.io.save(cs.id, data, p.c.cfg.CheckpointTTL) {
		cs.lastCkpt, cs.dirty = now, false
	}
}

// checkpointAll saves every changed call (on stop, so a successor resumes
// from the latest state).
func (p *partition) checkpointAll(now time.Time, onlyDirty bool) {
	for _, cs := range p.calls {
		if cs.ready && (cs.dirty || !onlyDirty) {
			p.checkpoint(cs, now)
		}
	}
}

func sameSet(a, b []protocol.ID) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return true
}

// ioQueue runs store reads and checkpoint writes off the decision loops,
// on a bounded queue: when it is full, work is dropped and counted.
type ioQueue struct {
	store statestore.Store
	m     *metrics
	log   interface{ Warn(string, ...zap.Field) }
	jobs  chan func(context.Context)
}

const (
	ioQueueLen  = 4096
	ioWorkers   = 4
	ioOpTimeout = 500 * time.Millisecond
)

func newIOQueue(s statestore.Store, m *metrics, log *zap.Logger) *ioQueue {
	return &ioQueue{store: s, m: m, log: log, jobs: make(chan func(context.Context), ioQueueLen)}
}

func (q *ioQueue) run(ctx context.Context) {
	done := make(chan struct{})
	for range ioWorkers {
		go func() {
			defer func() { done <- struct{}{} }()
			for {
				select {
				case <-ctx.Done():
					q.drain()
					return
				case job := <-q.jobs:
					job(context.Background())
				}
			}
		}()
	}
	for range ioWorkers {
		<-done
	}
}

// drain runs what is queued at stop (final checkpoints), each bounded.
func (q *ioQueue) drain() {
	for {
		select {
		case job := <-q.jobs:
			job(context.Background())
		default:
			return
		}
	}
}

func (q *ioQueue) submit(job func(context.Context)) bool {
	select {
	case q.jobs <- job:
		return true
	default:
		q.m.ioDropped.Inc()
		return false
	}
}

// load asks the store about a call; the result goes to out.
func (q *ioQueue) load(id protocol.ID, out chan<- loadResult) bool {
	return q.submit(func(ctx context.Context) {
		ctx, cancel := context.WithTimeout(ctx, ioOpTimeout)
		defer cancel()
		r := loadResult{call: id}
		call, err := q.store.Get(ctx, id)
		if err == nil {
			r.joined = joinTimes(&call)
		}
		if err != nil {
			if errors.Is(err, statestore.ErrNotFound) {
				r.notFound = true
			} else {
				r.err = err
				r.corrupt = corruptRecord(err, "call")
			}
		} else if ck, err := q.store.LoadCheckpoint(ctx, id, statestore.ConductorCheckpointKind); err == nil {
			r.ckpt = ck
		} else if !errors.Is(err, statestore.ErrNotFound) {
			r.err = err
			r.corrupt = corruptRecord(err, "checkpoint")
		}
		select {
		case out <- r:
		default: // the partition is gone or flooded; it decides without
		}
	})
}

// joinTimes are the join times of a call record's members.
func joinTimes(call *statestore.Call) map[protocol.ID]time.Time {
	out := make(map[protocol.ID]time.Time, len(call.Members))
	for id, m := range call.Members {
		out[id] = m.JoinedAt
	}
	return out
}

// corruptRecord is record if err says a stored record did not decode.
func corruptRecord(err error, record string) string {
	if errors.Is(err, statestore.ErrCorrupt) {
		return record
	}
	return ""
}

func (q *ioQueue) save(id protocol.ID, data []byte, ttl time.Duration) bool {
	return q.submit(func(ctx context.Context) {
		ctx, cancel := context.WithTimeout(ctx, ioOpTimeout)
		defer cancel()
		if err := q.store.SaveCheckpoint(ctx, id, statestore.ConductorCheckpointKind, data, ttl); err != nil {
			q.m.storeErrors.Inc()
		} else {
			q.m.checkpoints.Inc()
		}
	})
}

// unknownHold is how long metadata for a call the store did not know is
// ignored before the store is asked again (a Redis that came back empty is
// refilled by the forwarders' reconcile within seconds).
const unknownHold = 3 * time.Second
