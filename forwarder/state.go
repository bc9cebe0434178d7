package forwarder

import (
	"errors"
	"slices"
	"sync/atomic"
	"time"

	"github.com/pion/stun/v3"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// Critical call state goes to the store through a statestore.Writer, so the
// control goroutine never waits on Redis. A join is answered when its write
// has landed (the store is the truth another forwarder restores from); while
// the store is unreachable, joins are answered at once and their writes wait
// in the writer's bounded queue, to be flushed in order when it returns.

// heldReply is a join answer held until its write lands.
type heldReply struct {
	s      *session
	answer []byte
	tid    [stun.TransactionIDSize]byte
	reqLen int
}

// place records s on this forwarder in the store: on join, on the device's
// first keepalive (it confirms which forwarder won its multi-connect race),
// on address or stream changes, and when a reconcile finds it missing.
// answer, if not nil, is the join success to send once the write lands.
func (c *control) place(s *session, answer []byte, req *protocol.JoinRequest) bool {
	w := c.f.writer
	if w == nil {
		if answer != nil {
			c.reply(answer, s.addr)
		}
		return true
	}
	c.tag++
	op := statestore.Op{
		Kind: statestore.OpPlace, Call: s.call.id, Class: s.call.class, MaxSize: s.call.maxSize,
		Participant: s.participant, Tag: c.tag,
		Member: statestore.Member{
			Forwarder: c.f.cfg.Cluster.ID, Trunk: c.f.trunkAdvertise, Addr: s.addr,
			SSRCs: s.media.ssrcList(), JoinedAt: c.f.cfg.Now().UTC(),
		},
	}
	if err := w.Submit(op); err != nil {
		c.f.stateDropped.Add(1)
		return false
	}
	s.written = op.Member.SSRCs
	if answer == nil {
		return true
	}
	if c.storeAway() {
		// The store is down: the change waits in the queue, the device
		// does not.
		c.reply(answer, s.addr)
		return true
	}
	h := heldReply{s: s, answer: answer, reqLen: len(answer)}
	if req != nil {
		h.tid, h.reqLen = req.TransactionID, c.reqLen
	}
	c.held[c.tag] = h
	s.joinHeld = true
	return true
}

// unplace removes s's placement, unless another forwarder holds it by now.
func (c *control) unplace(s *session) {
	if c.f.writer == nil || s.refused {
		return
	}
	c.tag++
	err := c.f.writer.Submit(statestore.Op{Kind: statestore.OpRemove, Call: s.call.id,
		Participant: s.participant, Member: statestore.Member{Forwarder: c.f.cfg.Cluster.ID}, Tag: c.tag})
	if err != nil {
		c.f.stateDropped.Add(1) // the next reconcile removes it
	}
}

// refresh asks for the call's record (and refreshes its TTL).
func (c *control) refresh(cl *call, now time.Time) {
	cl.nextRefresh = now.Add(jitter(c.f.cfg.Cluster.ReconcileEvery))
	if c.f.writer == nil {
		return
	}
	c.tag++
	if c.f.writer.Submit(statestore.Op{Kind: statestore.OpRefresh, Call: cl.id, Tag: c.tag}) != nil {
		c.f.stateDropped.Add(1)
	}
}

// jitter spreads refreshes: d plus up to a quarter of d, from the clock's
// low bits (cheap; quality does not matter).
func jitter(d time.Duration) time.Duration {
	return d + time.Duration(time.Now().UnixNano()%int64(d/4+1))
}

// onResult acts on a landed (or failed) write.
func (c *control) onResult(r statestore.Result, now time.Time) {
	f := c.f
	f.storeLatency.observe(r.Took)
	if r.Err != nil && !errors.Is(r.Err, statestore.ErrNotMember) && !errors.Is(r.Err, statestore.ErrNotFound) &&
		!errors.Is(r.Err, statestore.ErrCallFull) {
		f.stateErrors.Add(1)
	}
	h, held := c.held[r.Op.Tag]
	delete(c.held, r.Op.Tag)
	cl := c.calls[r.Op.Call]
	switch r.Op.Kind {
	case statestore.OpPlace:
		if errors.Is(r.Err, statestore.ErrCallFull) {
			c.refuseFull(h, held)
			return
		}
		if r.Err != nil {
			c.stateTrouble(r.Op.Call, r.Err)
		}
		if held {
			h.s.joinHeld = false
		}
		if held && c.sessions[sessionKey{h.s.call.id, h.s.participant}] == h.s {
			// Answered even when the write failed for good (a corrupt
			// record): the call goes on here and over notices.
			c.reply(h.answer, h.s.addr)
		}
		if r.Err == nil && cl != nil {
			c.learnRecord(cl, r.Call, now, false)
		}
	case statestore.OpRefresh:
		if cl == nil {
			return
		}
		switch {
		case errors.Is(r.Err, statestore.ErrNotFound):
			// Expired while the store was away, or the store lost it:
			// write back everyone we serve.
			for _, s := range cl.members {
				if !s.refused {
					c.place(s, nil, nil)
				}
			}
		case r.Err != nil:
			c.stateTrouble(cl.id, r.Err)
		default:
			c.learnRecord(cl, r.Call, now, true)
		}
	}
}

// refuseFull undoes a join the store found over the call's size (members on
// other forwarders count too).
func (c *control) refuseFull(h heldReply, held bool) {
	if !held || c.sessions[sessionKey{h.s.call.id, h.s.participant}] != h.s {
		return
	}
	s := h.s
	s.refused = true
	s.log.Info("join refused: call is full across forwarders")
	c.remove(s)
	c.f.joinErrors.Add(1)
	raw, err := protocol.BuildJoinError(h.tid, protocol.JoinError{Code: protocol.CodeForbidden, Reason: "call is full"}, s.key)
	if err == nil && len(raw) <= h.reqLen {
		c.reply(raw, s.addr)
	}
}

// stateTrouble logs a store error once per call (a corrupt or foreign
// record, say): the call goes on from what this forwarder knows.
func (c *control) stateTrouble(id protocol.ID, err error) {
	cl := c.calls[id]
	if cl == nil || cl.stateErr {
		return
	}
	cl.stateErr = true
	c.f.log.Error("call state unusable; the call goes on without it", zap.Stringer("call", id), zap.Error(err))
}

// learnRecord brings the call's view of other forwarders' members in line
// with the store. On a full reconcile it also repairs the record: members
// we serve that it lacks are written back, members it places here that we
// no longer serve are removed, and members of long-dead forwarders are
// cleared out.
func (c *control) learnRecord(cl *call, rec statestore.Call, now time.Time, reconcile bool) {
	f := c.f
	self := f.cfg.Cluster.ID
	cl.stateErr = false
	cl.notices.read = true
	grace := f.cfg.Cluster.PeerTimeout
	// Placements learned from notices lately stay: the record may predate
	// them. So do those it lacks while the store is away or being refilled
	// after an outage (the writer's first results come before stateTick sees
	// the store back; a Redis that came back empty lacks what the others
	// have not written back yet).
	settling := c.degraded || now.Sub(c.storeBackAt) < 2*f.cfg.Cluster.ReconcileEvery
	for k, p := range cl.remote {
		if m, ok := rec.Members[k.participant]; (!ok && !settling || ok && m.Forwarder != k.fwd) && now.Sub(p.learned) > grace {
			delete(cl.remote, k)
			c.dirtyCalls[cl.id] = struct{}{}
		}
	}
	for pid, m := range rec.Members {
		if m.Forwarder == self {
			if reconcile && cl.members[pid] == nil {
				c.unplaceID(cl.id, pid)
			}
			continue
		}
		if reconcile && c.orphaned(m, now) {
			f.log.Info("removing a member of a dead forwarder", zap.Stringer("call", cl.id),
				zap.Stringer("participant", pid), zap.String("forwarder", m.Forwarder))
			c.unplaceFrom(cl.id, pid, m.Forwarder)
			continue
		}
		k := remoteKey{pid, m.Forwarder}
		if !cl.notices.stored(k, m.JoinedAt, now) {
			continue // a notice since said it left there: the record predates the removal
		}
		if p, ok := cl.remote[k]; !ok || p.trunk != m.Trunk {
			cl.remote[k] = &remotePlacement{trunk: m.Trunk, learned: m.JoinedAt}
			c.dirtyCalls[cl.id] = struct{}{}
		}
	}
	if !reconcile {
		return
	}
	for pid, s := range cl.members {
		if s.refused || !s.confirmed {
			continue
		}
		m, ok := rec.Members[pid]
		// Ours if the record lacks it, or if the device was heard here
		// after the record's placement elsewhere was written.
		if !ok || (m.Forwarder == self && (m.Addr != s.addr || !slices.Equal(m.SSRCs, s.media.ssrcList()))) ||
			(m.Forwarder != self && s.lastSeen.After(m.JoinedAt)) {
			c.place(s, nil, nil)
		}
	}
}

// orphaned: the store places m on a forwarder that has been dead (or
// unheard of) for OrphanAfter, we have been up long enough to know, our
// NATS connection is steady (we would hear it), and the store says that
// forwarder no longer holds its liveness lease (liveness.go). Silence alone
// is a guess; a live forwarder's members are never removed on a guess.
func (c *control) orphaned(m statestore.Member, now time.Time) bool {
	cc := &c.f.cfg.Cluster
	if !cc.enabled() || now.Sub(c.started) < cc.OrphanAfter || now.Sub(m.JoinedAt) < cc.OrphanAfter {
		return false
	}
	if p := c.peers[m.Forwarder]; p != nil {
		return false
	}
	if gone, ok := c.deadPeers[m.Forwarder]; ok && now.Sub(gone) < cc.OrphanAfter-cc.PeerTimeout {
		return false
	}
	return c.natsSteady(now) && c.orphanLeaseFree(m.Forwarder, now)
}

func (c *control) unplaceID(call, participant protocol.ID) {
	c.unplaceFrom(call, participant, c.f.cfg.Cluster.ID)
}

func (c *control) unplaceFrom(call, participant protocol.ID, fwd string) {
	c.tag++
	if c.f.writer.Submit(statestore.Op{Kind: statestore.OpRemove, Call: call, Participant: participant,
		Member: statestore.Member{Forwarder: fwd}, Tag: c.tag}) != nil {
		c.f.stateDropped.Add(1)
	}
}

// stateTick refreshes due calls, notices the store coming back, and writes
// stream changes the data path has seen.
func (c *control) stateTick(now time.Time) {
	w := c.f.writer
	if w == nil {
		return
	}
	degraded := w.Degraded()
	back := c.degraded && !degraded
	if back {
		c.storeBackAt = now
	}
	if degraded != c.degraded {
		c.degraded = degraded
		if degraded {
			c.f.log.Warn("call state store unreachable: calls go on, changes are queued", zap.Int("queued", w.Pending()))
		}
	}
	for _, cl := range c.calls {
		if back || !now.Before(cl.nextRefresh) {
			c.refresh(cl, now)
		}
		c.askIfUnread(cl, now) // notices.go
		for _, s := range cl.members {
			if s.confirmed && !s.refused && !slices.Equal(s.written, s.media.ssrcList()) {
				c.place(s, nil, nil)
			}
		}
	}
	// Answers held for writes that now wait behind an outage go out.
	if degraded || c.storeAway() {
		for tag, h := range c.held {
			h.s.joinHeld = false
			if c.sessions[sessionKey{h.s.call.id, h.s.participant}] == h.s {
				c.reply(h.answer, h.s.addr)
			}
			delete(c.held, tag)
		}
	}
}

// mediaInfo is what the data path learns about a session's media: the SSRCs
// it sends. Only the reader that serves the session's flow writes it
// (SO_REUSEPORT keeps a flow on one socket), with atomics; the control
// goroutine reads it.
type mediaInfo struct {
	ssrcs [maxSSRCs]atomicSSRC
	audio audioMeter // the session's audio and its forwarding gate (audio.go)

	// As a sender: its recent packets for NACKs (nil until the control
	// goroutine makes the cache, after the first RTP), its video, the
	// key frames receivers wait for (a bit per SSRC slot), and the uplink
	// estimate (leg.go).
	cache     atomic.Pointer[nackCache]
	cachePrev atomic.Pointer[nackCache] // the audio cache that cache replaced at its first video (adapt.go ensureCache)
	rtpSeen   atomic.Bool
	cacheFor  atomic.Pointer[cacheWriter] // the reader that stores its packets, once one did (nack.go)
	video     videoMeter
	keyWanted atomic.Uint32
	slotVideo [maxSSRCs]atomic.Uint32 // per SSRC slot: 1 | layers<<4 | rank<<8 of its last video packet, 0 for audio
	up        uplink

	// As a receiver: what its feedback says about its downlink, and what
	// was sent to it (leg.go).
	down downlink

	// As a member: what it may send into the call (police.go).
	police ingress
	// held counts its RTP packets an operator held (admin.go).
	held atomic.Uint64
	// move follows its forwarded audio across the paths it comes by
	// (sender_moves.go); set before the first routes that name it.
	move *moveTrack
}

const maxSSRCs = 8

// ssrcList returns the SSRCs seen so far, in the order first seen.
func (m *mediaInfo) ssrcList() []uint32 {
	var out []uint32
	for i := range m.ssrcs {
		v, ok := m.ssrcs[i].get()
		if !ok {
			break
		}
		out = append(out, v)
	}
	return out
}

// note records ssrc if it is new and a slot is free, and returns its slot
// (-1: no slot left). Allocation-free; the common case (known SSRC) is a
// few loads.
func (m *mediaInfo) note(ssrc uint32) int {
	for i := range m.ssrcs {
		v, ok := m.ssrcs[i].get()
		if !ok {
			m.ssrcs[i].set(ssrc)
			return i
		}
		if v == ssrc {
			return i
		}
	}
	return -1
}

// atomicSSRC is one slot: 0 is empty, else 1<<32 | ssrc.
type atomicSSRC struct{ v atomic.Uint64 }

func (a *atomicSSRC) get() (uint32, bool) { v := a.v.Load(); return uint32(v), v != 0 }
func (a *atomicSSRC) set(ssrc uint32)     { a.v.Store(1<<32 | uint64(ssrc)) }
