package forwarder

import (
	"bytes"
	"net/netip"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/pion/stun/v3"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/protocol"
)

// ctrlMsg is a STUN datagram handed from a reader to the control goroutine.
// A fixed pool of them bounds the memory a flood can take.
type ctrlMsg struct {
	free chan *ctrlMsg // the pool it returns to
	src  netip.AddrPort
	n    int
	buf  [maxDatagram]byte
}

const ctrlQueue = 512

// session is one participant's place on this forwarder. Only the control
// goroutine touches sessions and calls, so they need no lock.
type session struct {
	call        *call
	participant protocol.ID
	addr        netip.AddrPort
	token       []byte    // verified once; identical bytes later skip the signature check
	ticketAt    time.Time // when the session was last given a resumption ticket (resume.go)
	key         []byte    // MESSAGE-INTEGRITY key of the token
	// lastTID is the transaction id of the latest request the session was
	// answered success to (join or keepalive), and lastKey the key of the
	// token it carried: a MigrateTo echoes the one and is signed with the
	// other (protocol/README.md 5.7).
	lastTID  [stun.TransactionIDSize]byte
	lastKey  []byte
	lastSeen time.Time
	// joinHeld: the answer to the admitting join (lastTID) waits for its
	// store write (state.go); the join's retransmissions are not answered
	// before it.
	joinHeld bool
	log      *zap.Logger
	media    *mediaInfo // what the data path learned; shared with its routes

	// confirmed: the device kept the session alive after joining, so it
	// won the device's multi-connect race here. refused: the store refused
	// the join after the fact (call full); nothing of it is written.
	confirmed, refused bool
	written            []uint32 // SSRCs as last written to the store
	migrateSent        time.Time
	audioLast          audioTotals  // the audio meter at the last metadata tick
	metaSpeaking       bool         // the last metadata reported speech
	video              sessionVideo // subscriptions and what the sender was told (adapt.go)
	policeLower        time.Time    // since when its cap should be lower (police.go); zero: it should not
	moves              bucket       // its address changes (AddrChangeBurst, AddrChangeEvery)
	dev                deviceState  // its device binding, with a version 2 token (device.go)
	raced              racedPath    // where a racing join moved it from (dualstack.go)

	// An operator's doing (admin.go): media held (holdAudio, holdVideo),
	// a move asked (to moveTo until moveUntil), and the bytes resent to it
	// at the last NACK-burst check (timeline.go).
	hold       uint8
	moveTo     netip.AddrPort
	moveUntil  time.Time
	resentSeen uint64

	rtts sessionRTTs // the device's latest candidate RTTs (placement_move.go)
}

type call struct {
	id      protocol.ID
	class   protocol.CallClass
	maxSize int
	members map[protocol.ID]*session

	remote      map[remoteKey]*remotePlacement // members on other forwarders
	sub         *nats.Subscription             // the call's notices
	nextRefresh time.Time
	stateErr    bool // a store error was logged for this call
	decision    callDecision
	remoteMedia map[protocol.ID]*mediaInfo // remote members' packets seen over the trunk
	tracks      map[protocol.ID]*moveTrack // each sender's audio by whichever path it comes (sender_moves.go)

	// Who serves the call, as notices say, and whether this forwarder
	// asked (notices.go).
	notices callNotices
	// placement: the conductor's last move taken (placement_move.go).
	placement placementState
}

type sessionKey struct{ call, participant protocol.ID }

// control owns the session table. One goroutine runs it; readers reach it
// only through the ctrl queues, and it publishes routes for them.
type control struct {
	f        *Forwarder
	out      *ctrlBatch // the feedback tick's sends (ctrlbatch.go)
	work     int        // units of work since the last yield (yield.go)
	calls    map[protocol.ID]*call
	sessions map[sessionKey]*session
	byAddr   map[netip.AddrPort]*session
	cookies  *cookieJar
	tickets  *protocol.TicketKey // seals and opens resumption tickets (resume.go)
	msg      stun.Message
	reqLen   int // size of the request being answered

	// Changes and answers are batched: routes are republished once per
	// batch of requests (only the changed calls' routes are rebuilt), and
	// the answers go out after the routes that make them true.
	dirtyCalls  map[protocol.ID]struct{}
	staleAddrs  []netip.AddrPort
	pending     []pendingReply
	lastPublish time.Time

	// Cluster and state store (cluster.go, state.go, peers.go).
	held      map[uint64]heldReply // join answers waiting for their write
	tag       uint64
	degraded  bool
	peers     map[string]*peer
	deadPeers map[string]time.Time // when each was taken for dead
	started   time.Time
	seq       uint64
	scratch   []byte

	// The conductor (decisions.go) and admission under overload (admission.go).
	adm             admissionState
	meta            metaState
	decisionScratch protocol.CallDecision
	trunkCodec      *protocol.TrunkCodec // key-frame requests to remote senders; nil on a lone forwarder
	probeBuf        []byte
	probing         int // receivers being probed (probe.go), counted per feedback tick
	probingNext     int

	// Freshness (freshness.go): other forwarders' load reports are checked
	// into loadScratch and dropped; selfSeq is the sequence of our own
	// heartbeat last heard back; goneBeats the last heartbeats of peers
	// taken for dead.
	loadScratch protocol.LoadReport
	selfSeq     uint64
	goneBeats   map[string]beatMark
	// lastNotice is the at of the last member notice sent (notices.go).
	lastNotice time.Time
	// storeBackAt is when the store last came back after an outage: a
	// Redis that restarted empty is refilled by every forwarder in the
	// reconcile that follows, so its records are incomplete for a while.
	storeBackAt time.Time

	// The edge's limits: address checks answered (cookie.go), address
	// changes refused since the last log line about them.
	challenges   bucket
	movesRefused int
	movesLogged  time.Time

	// The operator's commands, bans, pin, capture and timelines (admin.go).
	admin adminState
}

type pendingReply struct {
	b  []byte
	to netip.AddrPort
}

func newControl(f *Forwarder) *control {
	var tc *protocol.TrunkCodec
	if f.cfg.Cluster.enabled() {
		tc = protocol.NewTrunkCodec(f.cfg.Cluster.Key)
		tc.Number(controlTrunkStream, f.trunkSeq0)
	}
	return &control{
		tickets:    ticketKeyOf(&f.cfg),
		trunkCodec: tc,
		f:          f,
		calls:      make(map[protocol.ID]*call),
		sessions:   make(map[sessionKey]*session),
		byAddr:     make(map[netip.AddrPort]*session),
		cookies:    newCookieJar(),

		dirtyCalls: make(map[protocol.ID]struct{}),
		held:       make(map[uint64]heldReply),
		peers:      make(map[string]*peer),
		deadPeers:  make(map[string]time.Time),
		started:    f.cfg.Now(),
		scratch:    make([]byte, 0, 512),
		adm: admissionState{thr: newThrottle(f.cfg.Load), pending: make(map[netip.AddrPort]struct{}),
			classified: make(map[netip.AddrPort]classifiedJoin)},
	}
}

// handle answers one join, keepalive, address change or leave.
func (c *control) handle(src netip.AddrPort, raw []byte) {
	f := c.f
	if len(raw) > 0 && raw[0] >= 128 {
		c.onRTCP(src, raw) // a Subscription, handed over by a reader
		return
	}
	c.msg.Reset()
	c.msg.Raw = append(c.msg.Raw[:0], raw...)
	c.reqLen = len(raw)
	if err := c.msg.Decode(); err != nil || c.msg.Type != stun.BindingRequest {
		f.countDrop(DropMalformed) // not a request of ours: no answer
		return
	}
	now := f.cfg.Now()
	req, err := protocol.ParseJoinRequest(&c.msg)
	if err != nil {
		c.refuseFor(src, req, err)
		return
	}
	if c.deviceRequest(src, req, now) { // a version 2 token, or a version 1 token not allowed (device.go)
		return
	}
	s := c.sessions[sessionKey{req.CallID, req.ParticipantID}]
	// Joining, moving and leaving need proof that src receives what we
	// send; the cheap HMAC check comes before any signature check.
	if (s == nil || s.addr != src || req.Leave) && !c.cookies.valid(req.Cookie, src, now) {
		c.challenge(src, req, now)
		return
	}
	newToken := false
	if s == nil || !bytes.Equal(s.token, req.Token) {
		// A new session, or a known one with a new token: verify it fully.
		// An expired token is resumed by its ticket (resume.go).
		tok, grant, ok := c.verifyJoin(src, req, now)
		if !ok {
			return
		}
		if s == nil && !req.Leave {
			c.admit(src, req, tok, grant, now)
			return
		}
		newToken = s != nil
	}
	switch {
	case s == nil: // a leave for a session we do not have: already gone
		c.accept(src, req, protocol.IntegrityKey(req.Token))
	case req.Leave:
		// Only the session's own address may end it: a multi-connect device
		// sends leaves from the sockets that lost the race, and those must not
		// end the session that won. Answered either way, so the device stops
		// retrying.
		if s.addr == src && !c.moveBack(s) {
			s.log.Info("participant left")
			c.remove(s)
		}
		c.accept(src, req, protocol.IntegrityKey(req.Token)) // the key the device checks with
	default:
		if s.addr != src && !c.moveAllowed(s, now) {
			return // over its limit: not answered, the device's next keepalive tries again
		}
		if s.addr != src && !c.move(s, src) {
			c.refuse(src, req, protocol.CodeForbidden, "address in use by another participant")
			return
		}
		if newToken { // a refreshed token, verified above
			s.token = append([]byte(nil), req.Token...)
			s.key = protocol.IntegrityKey(s.token)
		}
		s.lastSeen = now
		if c.acceptSession(src, req, s, newToken, now) {
			c.confirmSession(s, now) // the device's first keepalive: it chose this forwarder (device.go)
		}
	}
}

// admit creates a session for a verified join, or refuses it; g says
// whether a resumption ticket vouched for it (resume.go).
func (c *control) admit(src netip.AddrPort, req protocol.JoinRequest, tok protocol.Token, g joinGrant, now time.Time) {
	f := c.f
	if other := c.byAddr[src]; other != nil {
		c.refuse(src, req, protocol.CodeForbidden, "address in use by another participant")
		return
	}
	if c.banned(tok.CallID, tok.ParticipantID, now) {
		c.event(tok.CallID, now, "refused", tok.ParticipantID, "removed by an operator")
		c.refuse(src, req, protocol.CodeForbidden, "removed from the call by an operator")
		return
	}
	if f.draining.Load() {
		c.refuseBusyClass(src, req, joinClassUnclassified, refusedDraining, "draining")
		return
	}
	if f.cfg.MaxSessions > 0 && len(c.sessions) >= f.cfg.MaxSessions {
		c.refuseBusyClass(src, req, joinClassUnclassified, refusedAtCapacity, "at capacity")
		return
	}
	cl := c.calls[tok.CallID]
	if cl != nil && len(cl.members) >= min(cl.maxSize, int(tok.MaxSize)) {
		c.refuse(src, req, protocol.CodeForbidden, "call is full")
		return
	}
	if g.resume && !c.callLives(src, req, tok, cl, g) {
		return
	}
	class, ok := c.admissible(src, req, tok, cl, g, now)
	if !ok {
		return
	}
	if cl == nil {
		cl = &call{id: tok.CallID, class: tok.Class, maxSize: int(tok.MaxSize),
			members: make(map[protocol.ID]*session), remote: make(map[remoteKey]*remotePlacement)}
		c.calls[tok.CallID] = cl
		c.subscribe(cl)
		// Notices sent before the subscription was live are missed, and
		// the join's own write may race another forwarder's change: read
		// the call again soon.
		cl.nextRefresh = now.Add(min(f.cfg.Cluster.ReconcileEvery, newCallRecheck))
	}
	s := &session{
		call: cl, participant: tok.ParticipantID, addr: src,
		token: append([]byte(nil), req.Token...), lastSeen: now, media: new(mediaInfo),
		log: f.log.With(zap.Stringer("call", tok.CallID), zap.Stringer("participant", tok.ParticipantID)),
	}
	s.key = protocol.IntegrityKey(s.token)
	// A version 2 token: the session key of its proof (device.go).
	c.bindDevice(s, req)
	s.media.police.capRate.Store(c.policeRate(s)) // policed from its first packet
	c.applyGate(cl, s)
	cl.members[s.participant] = s
	c.sessions[sessionKey{cl.id, s.participant}] = s
	c.byAddr[src] = s
	c.dirtyCalls[cl.id] = struct{}{}
	answer, err := c.successFor(src, req, s, c.ticketFor(s, now, true))
	s.lastTID, s.lastKey = req.TransactionID, s.key
	s.raced.admitted = now // a racing join may follow (dualstack.go)
	if err != nil {
		s.refused = true
		c.remove(s)
		return
	}
	if !c.place(s, answer, &req) {
		// The store has been away so long that its queue is full: a join
		// that cannot be recorded is refused; sessions already here go on.
		s.refused = true
		c.remove(s)
		c.refuseBusyClass(src, req, class, refusedStore, "call state store unavailable")
		return
	}
	f.joins.Add(1)
	c.admittedBy(g, s)
	c.admittedNow(class, now)
	c.notifyJoined(cl, s, now) // notices.go: asks who serves the call if it is new here and the store is away
	c.event(cl.id, now, "join", s.participant, src.String())
	s.log.Info("participant joined", zap.Stringer("addr", src), zap.Stringer("class", cl.class), zap.Int("members", len(cl.members)))
}

// moveAllowed spends one of s's address changes (AddrChangeBurst at once,
// then one per AddrChangeEvery), or counts the refusal. Refusals are logged
// at most once a minute for the whole forwarder, with how many there were.
func (c *control) moveAllowed(s *session, now time.Time) bool {
	cfg := &c.f.cfg
	if s.moves.take(1/float64(cfg.AddrChangeEvery.Nanoseconds()), float64(cfg.AddrChangeBurst), now.UnixNano()) {
		return true
	}
	c.f.countDrop(DropAddrChangeLimited)
	c.movesRefused++
	if now.Sub(c.movesLogged) >= time.Minute {
		s.log.Warn("address changes over the limit, not answered", zap.Int("burst", cfg.AddrChangeBurst),
			zap.Duration("then_one_per", cfg.AddrChangeEvery), zap.Int("refused_since_last_log", c.movesRefused))
		c.movesLogged, c.movesRefused = now, 0
	}
	return false
}

// move gives s a new address after an authenticated Binding from it.
func (c *control) move(s *session, src netip.AddrPort) bool {
	if c.byAddr[src] != nil {
		return false
	}
	c.noteRace(s)
	s.log.Info("address changed", zap.Stringer("from", s.addr), zap.Stringer("to", src))
	c.event(s.call.id, c.f.cfg.Now(), "move", s.participant, s.addr.String()+" -> "+src.String())
	delete(c.byAddr, s.addr)
	c.staleAddrs = append(c.staleAddrs, s.addr)
	s.addr = src
	c.byAddr[src] = s
	c.dirtyCalls[s.call.id] = struct{}{}
	c.f.addrChanges.Add(1)
	if s.confirmed {
		c.place(s, nil, nil)
	}
	return true
}

// remove ends s here, and says so to the store and the call's other
// forwarders.
func (c *control) remove(s *session) {
	cl := s.call
	c.event(cl.id, c.f.cfg.Now(), "leave", s.participant, "")
	delete(cl.members, s.participant)
	if !s.refused {
		c.noteLeft(cl, s)
		c.unplace(s)
		c.notify(cl, s.participant, protocol.MemberLeft, c.f.cfg.Now())
	}
	if len(cl.members) == 0 {
		delete(c.calls, cl.id)
		c.unsubscribe(cl)
	}
	delete(c.sessions, sessionKey{s.call.id, s.participant})
	delete(c.byAddr, s.addr)
	c.staleAddrs = append(c.staleAddrs, s.addr)
	c.dirtyCalls[s.call.id] = struct{}{}
}

// sweep forgets sessions that sent no authenticated keepalive in time.
func (c *control) sweep(now time.Time) {
	for _, s := range c.sessions {
		if now.Sub(s.lastSeen) > c.f.cfg.IdleTimeout {
			s.log.Info("session timed out", zap.Duration("idle", now.Sub(s.lastSeen)))
			c.remove(s)
		}
	}
}

// publish swaps in a new routes snapshot if anything changed: a copy of the
// current one without the addresses that left, with the changed calls'
// routes rebuilt. Then it sends the answers held back until now.
func (c *control) publish(now time.Time) {
	f := c.f
	if len(c.dirtyCalls) > 0 || len(c.staleAddrs) > 0 {
		// Fresh maps, not maps.Clone: a clone keeps the capacity of the
		// largest table ever published, and every later copy pays for it.
		old := f.routes.Load()
		r := &routes{
			bySrc:  make(map[netip.AddrPort]*route, len(old.bySrc)+len(c.dirtyCalls)),
			byCall: make(map[protocol.ID]*callRoute, len(old.byCall)+len(c.dirtyCalls)),
		}
		k := 0 // a unit of work every 16 copies (yield.go)
		for a, rt := range old.bySrc {
			r.bySrc[a] = rt
			if k++; k&15 == 0 {
				c.yieldUnits(1)
			}
		}
		for id, cr := range old.byCall {
			r.byCall[id] = cr
			if k++; k&15 == 0 {
				c.yieldUnits(1)
			}
		}
		for _, a := range c.staleAddrs {
			delete(r.bySrc, a)
		}
		for id := range c.dirtyCalls {
			delete(r.byCall, id)
			if cl := c.calls[id]; cl != nil {
				syncRemoteMedia(cl)
				syncMoveTracks(cl)
				addCallRoutes(r, cl, c.trunksOf(cl), f.v6, f.trunkV6)
			}
			delete(c.dirtyCalls, id)
		}
		c.staleAddrs = c.staleAddrs[:0]
		f.routes.Store(r)
		f.nSessions.Store(int64(len(c.sessions)))
		f.nCalls.Store(int64(len(c.calls)))
	}
	for i, p := range c.pending {
		f.reply(p.b, p.to)
		c.pending[i] = pendingReply{}
	}
	c.pending = c.pending[:0]
	c.lastPublish = now
}

// publishDue: publish when the queues are idle, or at least every
// publishEvery under a steady stream of requests.
func (c *control) publishDue(idle bool, now time.Time) bool {
	if len(c.pending) == 0 && len(c.dirtyCalls) == 0 && len(c.staleAddrs) == 0 {
		return false
	}
	return idle || now.Sub(c.lastPublish) >= publishEvery || len(c.pending) >= maxPending
}

// newCallRecheck: a call new to this forwarder is read from the store again
// this soon (at the next cluster tick after it).
const newCallRecheck = 300 * time.Millisecond

const (
	publishEvery = 10 * time.Millisecond
	maxPending   = 256
)

// reply queues an answer until the next publish.
func (c *control) reply(b []byte, to netip.AddrPort) {
	if j := c.admin.capture; j != nil && len(b) > 0 && b[0] < 4 {
		if s := c.byAddr[to]; s != nil {
			c.captureSTUN(s.call.id, true, to, b)
		}
	}
	c.pending = append(c.pending, pendingReply{b, to})
}

func (c *control) accept(src netip.AddrPort, req protocol.JoinRequest, key []byte) {
	if raw, err := c.success(src, req, key, nil); err == nil {
		c.reply(raw, src)
	}
}

// success is a success answer, with a resumption ticket if one is given.
func (c *control) success(src netip.AddrPort, req protocol.JoinRequest, key, ticket []byte) ([]byte, error) {
	p := protocol.SessionParams{KeepaliveInterval: c.f.cfg.KeepaliveInterval, IdleTimeout: c.f.cfg.IdleTimeout}
	raw, err := protocol.BuildJoinAccept(req, protocol.JoinSuccess{Mapped: src, Params: p, Ticket: ticket}, key)
	if err != nil {
		c.f.log.Error("building join success", zap.Error(err))
	}
	return raw, err
}

// refuseFor answers a request that failed to parse or verify. The reason is
// fixed per code: nothing of the request is echoed back.
func (c *control) refuseFor(src netip.AddrPort, req protocol.JoinRequest, err error) {
	code := protocol.ErrorCodeFor(err)
	reason := "malformed request"
	switch code {
	case protocol.CodeUnauthorized:
		reason = "token or integrity invalid, or token expired"
	case protocol.CodeForbidden:
		reason = "token is for another call or participant"
	}
	c.refuse(src, req, code, reason)
}

func (c *control) refuse(src netip.AddrPort, req protocol.JoinRequest, code stun.ErrorCode, reason string) {
	c.f.joinErrors.Add(1)
	c.sendError(src, req, protocol.JoinError{Code: code, Reason: reason})
}

func (c *control) sendError(src netip.AddrPort, req protocol.JoinRequest, e protocol.JoinError) {
	var key []byte
	if len(req.Token) > 0 {
		key = protocol.IntegrityKey(req.Token)
	}
	raw, err := protocol.BuildJoinError(req.TransactionID, e, key)
	if err != nil {
		c.f.log.Error("building join error", zap.Error(err))
		return
	}
	if len(raw) > c.reqLen {
		// Never answer an unauthenticated request with more bytes than it
		// carried: the forwarder must not amplify a spoofed flood.
		c.f.countDrop(DropMalformed)
		return
	}
	c.f.log.Debug("join refused", zap.Stringer("addr", src), zap.Int("code", int(e.Code)), zap.String("reason", e.Reason))
	c.reply(raw, src)
}
