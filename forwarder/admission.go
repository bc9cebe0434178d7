package forwarder

import (
	"context"
	"errors"
	"net/netip"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// Admission under overload (DESIGN.md, "Throttling").
//
// Every LoadEvery the control goroutine samples the load signals (load.go)
// and moves the throttle level, fast up and slow down. Each admission also
// re-reads the sessions signal at once, so a burst of joins within one
// sample cannot all land here. While the level is above none, each join is
// classified before it is admitted:
//
//	new group call < new one-to-one call < new member of an ongoing group
//	call < second party of a one-to-one call < rejoin of one's own call
//
// (first refused first; ThrottleLevel.Admits). A join of a call served here
// by a participant placed on another forwarder is a rejoin at once; anything
// else is looked up in the state store, off the control goroutine, and the
// join is answered when the answer is back (the device's retransmissions
// meanwhile are dropped). Without a store, or when it cannot be read, a call
// not served here counts as new. A refused join is told to try the least
// loaded peer whose load is below ours (300 Try Alternate, the devices we
// sent there that it has not admitted yet included: referrals.go) or to
// come back later (508 with a retry-after; the client adds jitter).
//
// Past admission, group calls shed their video (every RTP stream without
// the audio level) from ShedVideoAt on; audio is never touched.

// refusalReason says why a join was refused for capacity.
type refusalReason uint8

const (
	refusedThrottled refusalReason = iota
	refusedDraining
	refusedAtCapacity
	refusedStore
	numRefusalReasons
)

var refusalNames = [numRefusalReasons]string{"throttled", "draining", "at_capacity", "store_unavailable"}

// joinClassUnclassified is the class of joins refused before being
// classified (draining, hard capacity), and of admissions while not
// throttled.
const joinClassUnclassified JoinClass = 0

const numJoinClasses = int(JoinRejoin) + 1

func joinClassName(c JoinClass) string {
	if c == joinClassUnclassified {
		return "unclassified"
	}
	return c.String()
}

// throttleStats are the throttle's counters, read by Stats and the
// collector.
type throttleStats struct {
	level        atomic.Uint32
	signals      [5]atomic.Uint32 // permille, as LoadSignals.values()
	changes      [5]atomic.Uint64 // level changes, by the level entered
	refusals     [numJoinClasses][numRefusalReasons]atomic.Uint64
	admissions   [numJoinClasses]atomic.Uint64
	shedVideo    atomic.Bool
	lookupFailed atomic.Uint64
	samples      atomic.Uint64 // load samples taken
}

// lookup asks the store about a call for a join waiting to be classified.
type lookup struct {
	src    netip.AddrPort
	req    protocol.JoinRequest // Token, Cookie and Ticket copied: the request buffer is reused
	reqLen int
	tok    protocol.Token
	grant  joinGrant // what a resumption ticket vouched for (resume.go)
	rec    statestore.Call
	found  bool
	err    error
}

const (
	lookupQueue   = 256
	lookupTimeout = 300 * time.Millisecond
	// classifiedFor is how long a lookup's answer is kept for the join it
	// was made for.
	classifiedFor = 2 * time.Second
)

// admissionState is the control goroutine's part.
type admissionState struct {
	thr        *throttle
	pending    map[netip.AddrPort]struct{}
	classified map[netip.AddrPort]classifiedJoin
}

type classifiedJoin struct {
	call, participant protocol.ID
	class             JoinClass
	until             time.Time
	refused           [12]byte       // the transaction last refused: its retransmissions are answered, not counted again
	alt               netip.AddrPort // the alternate it was named (none: it was told to wait)
}

// admissible decides whether a verified join may be admitted under the
// current throttle level. When it returns false it has answered the join
// (a refusal) or will answer it after a store lookup.
func (c *control) admissible(src netip.AddrPort, req protocol.JoinRequest, tok protocol.Token, cl *call, g joinGrant, now time.Time) (JoinClass, bool) {
	a := &c.adm
	lvl := a.thr.level()
	if lvl == ThrottleNone {
		return joinClassUnclassified, true
	}
	if g.ticket {
		return JoinRejoin, true // its ticket proves it was admitted to this call
	}
	class, known := c.classifyLocal(cl, tok)
	cj, cached := a.classified[src]
	cached = cached && now.Before(cj.until) && cj.call == tok.CallID && cj.participant == tok.ParticipantID
	if !known && cached {
		class, known = cj.class, true
	}
	if !known {
		if c.f.cfg.Cluster.Store == nil {
			class = newCallClass(tok.Class)
		} else {
			c.startLookup(src, req, tok, g)
			return 0, false
		}
	}
	if lvl.Admits(class) {
		delete(a.classified, src)
		return class, true
	}
	reason := "overloaded: " + class.String() + " joins refused for now"
	if cached && cj.refused == req.TransactionID {
		// A retransmission of the join just refused (its answer crossed
		// it): the same answer, the same alternate, counted once. A new
		// pick could name another peer and count the device on both.
		c.answerBusy(src, req, reason, cj.alt)
		return class, false
	}
	alt := c.refuseBusyClass(src, req, class, refusedThrottled, reason)
	if cached {
		cj.refused, cj.alt = req.TransactionID, alt
		a.classified[src] = cj
	}
	return class, false
}

// classifyLocal classifies a join from what this forwarder knows: a
// participant placed on another forwarder is rejoining; otherwise the
// store has to be asked (known false), unless there is none.
func (c *control) classifyLocal(cl *call, tok protocol.Token) (JoinClass, bool) {
	if cl == nil {
		return 0, false
	}
	for k := range cl.remote {
		if k.participant == tok.ParticipantID {
			return JoinRejoin, true
		}
	}
	if c.f.cfg.Cluster.Store != nil {
		return 0, false // it may have been placed here before: ask the store
	}
	if cl.class == protocol.ClassGroup {
		return JoinGroupMember, true
	}
	return JoinSecondParty, true
}

func newCallClass(k protocol.CallClass) JoinClass {
	if k == protocol.ClassOneToOne {
		return JoinNewOneToOne
	}
	return JoinNewGroup
}

// classifyStored classifies a join from the call's record.
func classifyStored(l *lookup) JoinClass {
	switch {
	case errors.Is(l.err, statestore.ErrNotFound) || l.err == nil && !l.found:
		return newCallClass(l.tok.Class)
	case l.err != nil:
		return newCallClass(l.tok.Class) // unknown: counts as new (refused first)
	}
	if _, ok := l.rec.Members[l.tok.ParticipantID]; ok {
		return JoinRejoin
	}
	if l.rec.Class == protocol.ClassOneToOne {
		return JoinSecondParty
	}
	return JoinGroupMember
}

// startLookup queues a store read for a join; a join already waiting for
// one is dropped (the device retransmits).
func (c *control) startLookup(src netip.AddrPort, req protocol.JoinRequest, tok protocol.Token, g joinGrant) {
	a := &c.adm
	if _, ok := a.pending[src]; ok {
		return
	}
	req.Token = append([]byte(nil), req.Token...)
	req.Cookie = append([]byte(nil), req.Cookie...)
	req.Ticket = append([]byte(nil), req.Ticket...)
	select {
	case c.f.lookupIn <- &lookup{src: src, req: req, reqLen: c.reqLen, tok: tok, grant: g}:
		a.pending[src] = struct{}{}
	default:
		// Too many lookups at once: refuse as a new call would be.
		c.f.thr.lookupFailed.Add(1)
		c.refuseBusyClass(src, req, newCallClass(tok.Class), refusedThrottled, "overloaded: try again later")
	}
}

// runLookups reads the store for waiting joins until ctx ends.
func (f *Forwarder) runLookups(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case l := <-f.lookupIn:
			lctx, cancel := context.WithTimeout(ctx, lookupTimeout)
			l.rec, l.err = f.cfg.Cluster.Store.Get(lctx, l.tok.CallID)
			cancel()
			l.found = l.err == nil
			select {
			case f.lookupOut <- l:
			case <-ctx.Done():
				return
			}
		}
	}
}

// onLookup resumes a join with its class.
func (c *control) onLookup(l *lookup, now time.Time) {
	a := &c.adm
	delete(a.pending, l.src)
	if l.err != nil && !errors.Is(l.err, statestore.ErrNotFound) {
		c.f.thr.lookupFailed.Add(1)
	}
	a.classified[l.src] = classifiedJoin{call: l.tok.CallID, participant: l.tok.ParticipantID, class: classifyStored(l), until: now.Add(classifiedFor)}
	c.reqLen = l.reqLen
	if c.sessions[sessionKey{l.tok.CallID, l.tok.ParticipantID}] != nil {
		return // admitted meanwhile by another path; the device's next request is answered as usual
	}
	c.admit(l.src, l.req, l.tok, lookedUp(l), now)
}

// admittedNow counts an admission and lets the sessions signal raise the
// level at once.
func (c *control) admittedNow(class JoinClass, now time.Time) {
	c.f.thr.admissions[class].Add(1)
	lvl, changed := c.adm.thr.admitted(len(c.sessions))
	c.publishSignals(c.adm.thr.sig)
	if changed && !c.adm.thr.pinned {
		c.levelChanged(lvl, now)
	}
}

// loadSample reads the process's counters and the readers': packets in
// and out, and the datagrams the kernel dropped from this forwarder's own
// sockets (media and trunk) because their receive buffers were full. Other
// programs' drops never count. Sessions are left for the caller.
func (f *Forwarder) loadSample(now time.Time) LoadSample {
	s := readProcessSample(now)
	for _, r := range f.rdrs {
		s.Packets += r.c.packetsIn.Load() + r.c.packetsOut.Load()
		s.QueueDrops += r.c.drops[DropReceiveBuffer].Load()
	}
	return s
}

// loadTick samples the load and moves the level.
func (c *control) loadTick(now time.Time) {
	s := c.f.loadSample(now)
	s.Sessions = len(c.sessions)
	lvl, sig, changed := c.adm.thr.update(s)
	c.publishSignals(sig)
	if changed && !c.adm.thr.pinned { // a pinned level stays (admin.go)
		c.levelChanged(lvl, now)
	}
	c.f.thr.samples.Add(1) // after the level and signals it moved are published
	for src, cj := range c.adm.classified {
		if now.After(cj.until) {
			delete(c.adm.classified, src)
		}
	}
}

// publishSignals makes the signals visible to Stats, metrics and the
// heartbeat's load.
func (c *control) publishSignals(sig LoadSignals) {
	for i, v := range sig.values() {
		c.f.thr.signals[i].Store(uint32(min(max(v, 0)*1000, 1e9)))
	}
}

// levelChanged publishes a new level; logged once per change, never per
// join or packet.
func (c *control) levelChanged(lvl ThrottleLevel, now time.Time) {
	f := c.f
	old := ThrottleLevel(f.thr.level.Swap(uint32(lvl)))
	f.thr.changes[min(int(lvl), 4)].Add(1)
	f.thr.shedVideo.Store(lvl >= f.cfg.ShedVideoAt)
	sig := c.adm.thr.sig
	f.log.Info("throttle level changed", zap.Stringer("from", old), zap.Stringer("to", lvl),
		zap.Float64("load", sig.Max()), zap.String("worst", sig.Worst()), zap.Int("sessions", len(c.sessions)),
		zap.Bool("shedding_group_video", f.thr.shedVideo.Load()))
}

// loadPermille is the load as announced to peers.
func (f *Forwarder) loadPermille() uint16 {
	var worst uint32
	for i := range f.thr.signals {
		worst = max(worst, f.thr.signals[i].Load())
	}
	return uint16(min(worst, 65535))
}

// refuseBusyClass refuses a join for capacity, naming a less loaded peer
// when there is one; it returns the peer named.
func (c *control) refuseBusyClass(src netip.AddrPort, req protocol.JoinRequest, class JoinClass, why refusalReason, reason string) netip.AddrPort {
	c.f.thr.refusals[class][why].Add(1)
	c.event(req.CallID, c.f.cfg.Now(), "refused", req.ParticipantID, reason)
	var alt netip.AddrPort
	if why == refusedThrottled {
		alt = c.pickLessLoaded(src, class)
	} else {
		alt = c.pickAlternate(src)
	}
	c.f.joinErrors.Add(1)
	c.answerBusy(src, req, reason, alt)
	return alt
}

// answerBusy sends a refusal for capacity: 300 Try Alternate naming alt
// when it is valid, otherwise 508 with a retry-after.
func (c *control) answerBusy(src netip.AddrPort, req protocol.JoinRequest, reason string, alt netip.AddrPort) {
	e := protocol.JoinError{Code: protocol.CodeInsufficientCapacity, Reason: reason, RetryAfter: time.Second}
	if alt.IsValid() {
		e.Code = protocol.CodeTryAlternate
		e.Alternate = alt
	}
	c.sendError(src, req, e)
}

// pickLessLoaded names the live, not draining peer with the lowest load,
// counting the devices this forwarder sent there that it has not admitted
// yet (referrals.go), if that is below our own load; otherwise
// nothing (the device waits and retries).
// A forwarder with a region looks in its region first and spills over to
// the nearest other region only when its region throttles
// (region_spill.go).
func (c *control) pickLessLoaded(dev netip.AddrPort, class JoinClass) netip.AddrPort {
	own := int(c.f.loadPermille())
	if c.f.cfg.Cluster.Region != "" && c.f.live != nil {
		return c.pickRegional(dev, class, own)
	}
	var best *peer
	bestLoad, idle, now := own, c.sessionShare(own), c.f.cfg.Now()
	for _, p := range c.peers {
		if p.last.Draining || !p.last.Media.IsValid() {
			continue
		}
		if l := p.effectiveLoad(dev, idle, now); l < bestLoad || best != nil && l == bestLoad && p.last.ID < best.last.ID {
			best, bestLoad = p, l
		}
	}
	if best == nil {
		return netip.AddrPort{}
	}
	best.referred.add(dev, now)
	if ce := c.f.log.Check(zap.DebugLevel, "referring a join"); ce != nil {
		loads := make(map[string]int, len(c.peers))
		for id, p := range c.peers {
			loads[id] = p.effectiveLoad(dev, idle, now)
		}
		ce.Write(zap.String("peer", best.last.ID), zap.Int("own_load", own), zap.Any("peer_loads", loads))
	}
	return mediaFor(&best.last, dev)
}

// effectiveLoad is the peer's reported load plus the share of the devices
// sent there that it has not admitted yet, dev's own referral left out:
// each counted as one session's share of its load or, while it reports
// none, as idle (sessionShare).
func (p *peer) effectiveLoad(dev netip.AddrPort, idle int, now time.Time) int {
	share := idle
	if p.last.Sessions > 0 && p.last.Load > 0 {
		share = max(1, int(p.last.Load)/int(p.last.Sessions))
	}
	return int(p.last.Load) + p.referred.count(dev, now)*share
}

// sessionShare is one session's share of our own load (own, permille):
// the cost counted for a device referred to a peer that reports no
// sessions, as the forwarders of a cluster run on like machines. A fixed
// 1 % instead made an empty peer look cheaper than one that had just
// reported its first arrivals (five times, at 20 sessions to a full
// forwarder), and it took the rest of a burst. Capped at 5 %, as if a
// full forwarder served at least 20 sessions: a forwarder loaded by
// something else than its few sessions would otherwise charge each
// referral most of a peer. 1 % when we serve none.
func (c *control) sessionShare(own int) int {
	if n := len(c.sessions); n > 0 && own > 0 {
		return min(max(1, own/n), 50)
	}
	return 10
}
