package forwarder

import (
	"context"
	"errors"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// How a forwarder judges whether another one is alive (README 6.2):
//
//   - It hears each peer on two paths: its heartbeats on NATS and its
//     keepalives on the trunk (an authenticated frame, sent once a heartbeat
//     interval to every forwarder it knows, whether or not they share a
//     call). A peer heard on either within PeerTimeout is alive.
//   - A peer silent on both is taken for dead (no more trunk copies, its
//     placements forgotten) only when the fault cannot be ours: never while
//     our own NATS connection is down, or less than PeerTimeout back, or
//     deaf (our own heartbeat has not come back to us); and when every
//     peer falls silent at once, only if the store says the peer no longer
//     holds its liveness lease.
//   - Removing another forwarder's members from a call record is
//     destructive, so it needs more than silence: the store must say the
//     forwarder no longer holds its liveness lease (statestore.ForwarderLease),
//     which every forwarder renews each heartbeat. Unknown (the store
//     unreachable, no answer yet) means no.
//   - After our NATS connection comes back, this forwarder announces itself
//     and every placement it holds at once, and rereads its calls, so
//     whatever notices were lost meanwhile are made good.
//
// The lease is held and looked up by a goroutine of its own (the control
// goroutine never waits on the store); the trunk readers hand keepalives to
// the control goroutine through a bounded channel, copied by value.

// holdReason says why a silent peer was not taken for dead (or its members
// not removed).
type holdReason uint8

const (
	holdNATSDown  holdReason = iota // our NATS connection is down, just back, or deaf
	holdAllSilent                   // every peer fell silent at once: the fault is ours
	holdLeaseHeld                   // the store says it holds its liveness lease, or cannot say
	numHoldReasons
)

var holdReasonNames = [numHoldReasons]string{"nats_down", "all_silent", "lease_held"}

// PeerStats is how this forwarder hears and judges the other forwarders.
type PeerStats struct {
	ByNATS, ByTrunk int // peers heard within the peer timeout by heartbeat and by trunk keepalive (both: counted twice)
	// Held counts silences that did not make a peer dead (or its members
	// removed), by reason: nats_down, all_silent, lease_held; each once a
	// silence of a peer.
	Held                        [numHoldReasons]uint64
	KeepalivesIn, KeepalivesOut uint64 // trunk keepalives heard (valid and newer) and sent
	Resyncs                     uint64 // NATS reconnections after which placements were re-announced
	NATSUp                      bool   // the NATS connection is up (as of the last heartbeat tick)
	LeaseHeld                   bool   // this forwarder holds its liveness lease
	TrunkFamilySkipped          uint64 // trunk routes left out: a peer's trunk is IPv6, ours IPv4 only (dualstack.go)
}

// trunkBeat is a keepalive frame handed from a trunk reader to the control
// goroutine, by value: no allocation on the trunk path.
type trunkBeat struct {
	at  int64 // unix ns when it was read
	hdr protocol.TrunkHeader
	n   int
	b   [protocol.MaxTrunkControl]byte // a keepalive or an echo (trunk_rtt.go)
}

const beatQueue = 1024

type leaseState uint8

const (
	leaseUnknown leaseState = iota
	leaseFree
	leaseHeld
)

// leaseView is what the lease goroutine last learned about other
// forwarders' leases. Immutable once published.
type leaseView struct {
	at    time.Time
	state map[string]leaseState
}

// liveness is the forwarder's side of peer judgement that outlives a tick.
type liveness struct {
	beats chan trunkBeat

	// The lease goroutine's: the store, its lease, and what it answers.
	leases     statestore.Leases // nil: no lease held or read (the store has none)
	name       string
	owner      string
	ttl, every time.Duration
	ask        atomic.Pointer[[]string]  // forwarders whose lease to look up (set by control)
	view       atomic.Pointer[leaseView] // the answers
	holding    atomic.Bool
	storeDown  atomic.Bool // the last lease operation found the store unreachable

	// Counters (PeerStats).
	byNATS, byTrunk   atomic.Int64
	held              [numHoldReasons]atomic.Uint64
	beatsIn, beatsOut atomic.Uint64
	resyncs           atomic.Uint64
	natsUpNow         atomic.Bool

	// The control goroutine's own.
	natsUp      bool
	natsUpSince time.Time
	reconnects  uint64
	selfHeard   time.Time // our own heartbeat came back over NATS
	seq         uint64    // keepalive sequence
	frame       []byte    // keepalive scratch
	dests       map[netip.AddrPort]struct{}
	deadTrunks  map[string]netip.AddrPort // trunks of peers taken for dead, still sent keepalives
	wanted      map[string]time.Time      // forwarders whose lease control asked about lately
	heldMembers map[string]bool           // forwarders whose members' removal was held back (counted once)

	regions regionState // trunk RTTs, peers' regions, spill-over (trunk_rtt.go)
}

func newLiveness(cc *Cluster, started time.Time) *liveness {
	l := &liveness{
		beats: make(chan trunkBeat, beatQueue),
		name:  statestore.ForwarderLease(cc.ID), owner: cc.ID + "@" + strconv.FormatInt(started.UnixNano(), 36),
		every: cc.AnnounceEvery,
		// Long enough to ride out a few failed renewals, short enough
		// that a dead forwarder's lease lapses before its orphans are due.
		ttl:   max(cc.OrphanAfter/2, 2*cc.AnnounceEvery),
		frame: make([]byte, 0, protocol.TrunkOverhead+protocol.MaxTrunkKeepalive),
		dests: make(map[netip.AddrPort]struct{}), deadTrunks: make(map[string]netip.AddrPort),
		wanted: make(map[string]time.Time), heldMembers: make(map[string]bool),
	}
	if ls, ok := cc.Store.(statestore.Leases); ok {
		l.leases = ls
	}
	return l
}

// keepalive hands a keepalive frame to the control goroutine (trunk reader).
func (t *trunkReader) keepalive(payload []byte) {
	lv := t.f.live
	if len(payload) > protocol.MaxTrunkControl {
		t.drops[DropTrunkAuth]++
		return
	}
	b := trunkBeat{at: t.f.cfg.Now().UnixNano(), hdr: t.hdr, n: len(payload)}
	copy(b.b[:], payload)
	select {
	case lv.beats <- b:
	default:
		t.f.clusterDrops.Add(1)
	}
}

// runLease holds this forwarder's liveness lease and looks up the leases
// control asks about, once a heartbeat interval, until ctx is done; then
// it releases the lease.
func (l *liveness) runLease(ctx context.Context, now func() time.Time, log *zap.Logger) {
	t := time.NewTicker(l.every)
	defer t.Stop()
	var own *statestore.Lease
	lastErr := "not tried"
	for {
		var err error
		own, err = l.hold(ctx, own)
		l.holding.Store(own != nil)
		l.storeDown.Store(errors.Is(err, statestore.ErrUnavailable))
		if msg := errString(err); msg != lastErr {
			if err != nil {
				log.Warn("liveness lease: not held; other forwarders will not remove this one's members meanwhile", zap.Error(err))
			} else {
				log.Info("liveness lease held", zap.String("lease", l.name))
			}
			lastErr = msg
		}
		l.lookUp(ctx, now())
		select {
		case <-ctx.Done():
			if own != nil {
				rctx, cancel := context.WithTimeout(context.Background(), time.Second)
				_ = l.leases.ReleaseLease(rctx, *own)
				cancel()
			}
			return
		case <-t.C:
		}
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// hold acquires or renews the lease. A lease still held by this id's
// previous process is waited out.
func (l *liveness) hold(ctx context.Context, own *statestore.Lease) (*statestore.Lease, error) {
	if own != nil {
		err := l.leases.RenewLease(ctx, *own, l.ttl)
		if err == nil || !errors.Is(err, statestore.ErrLeaseLost) {
			return own, err // a failed renewal is retried; the lease may still stand
		}
	}
	got, err := l.leases.AcquireLease(ctx, l.name, l.owner, l.ttl)
	if err != nil {
		return nil, err
	}
	return &got, nil
}

// lookUp answers the lease questions control asked.
func (l *liveness) lookUp(ctx context.Context, at time.Time) {
	ids := l.ask.Load()
	if ids == nil {
		return
	}
	v := &leaseView{at: at, state: make(map[string]leaseState, len(*ids))}
	for _, id := range *ids {
		_, err := l.leases.LeaseHolder(ctx, statestore.ForwarderLease(id))
		switch {
		case err == nil:
			v.state[id] = leaseHeld
		case errors.Is(err, statestore.ErrNotFound):
			v.state[id] = leaseFree
		default:
			v.state[id] = leaseUnknown // asked, but the store could not say
		}
	}
	l.view.Store(v)
}

// leaseFree: a recent look-up found that fwd does not hold its lease.
func (l *liveness) leaseFree(fwd string, now time.Time) bool {
	v := l.view.Load()
	return v != nil && now.Sub(v.at) <= 3*l.every && v.state[fwd] == leaseFree
}

// asked: a recent look-up asked about fwd (and found it held, or could not
// tell).
func (l *liveness) asked(fwd string, now time.Time) bool {
	v := l.view.Load()
	if v == nil || now.Sub(v.at) > 3*l.every {
		return l.leases == nil // with no leases, nobody will ever answer
	}
	_, ok := v.state[fwd]
	return ok
}

// want asks the lease goroutine about fwd for a while.
func (l *liveness) want(fwd string, now time.Time) { l.wanted[fwd] = now }

// publishWants hands the lease goroutine the forwarders asked about lately.
func (l *liveness) publishWants(now time.Time) {
	if l.leases == nil {
		return
	}
	ids := make([]string, 0, len(l.wanted))
	for id, t := range l.wanted {
		if now.Sub(t) > 10*l.every {
			delete(l.wanted, id)
			continue
		}
		ids = append(ids, id)
	}
	l.ask.Store(&ids)
}

func (l *liveness) stats() PeerStats {
	s := PeerStats{ByNATS: int(l.byNATS.Load()), ByTrunk: int(l.byTrunk.Load()),
		KeepalivesIn: l.beatsIn.Load(), KeepalivesOut: l.beatsOut.Load(), Resyncs: l.resyncs.Load(),
		NATSUp: l.natsUpNow.Load(), LeaseHeld: l.holding.Load()}
	for i := range s.Held {
		s.Held[i] = l.held[i].Load()
	}
	return s
}

// lastHeard is when the peer was last heard on either path.
func (p *peer) lastHeard() time.Time {
	if p.trunkHeard.After(p.heard) {
		return p.trunkHeard
	}
	return p.heard
}

// expirePeers judges the peers once a heartbeat interval: it takes in the
// trunk keepalives, follows our NATS connection, sends our keepalives, and
// takes for dead the peers silent on both paths when the fault cannot be
// ours.
func (c *control) expirePeers(now time.Time) {
	lv := c.f.live
	if lv == nil {
		return
	}
	c.takeBeats()
	c.publishRTTs(now)
	c.watchNATS(now)
	c.sendKeepalives()
	cc := &c.f.cfg.Cluster
	// "At once" allows for silences that begin a tick apart: all peers
	// fell silent together if none was heard in the last half timeout
	// (live peers are heard every heartbeat interval, at most half of it).
	var lately, byNATS, byTrunk int
	for _, p := range c.peers {
		n, t := now.Sub(p.heard) <= cc.PeerTimeout, now.Sub(p.trunkHeard) <= cc.PeerTimeout
		if n {
			byNATS++
		}
		if t {
			byTrunk++
		}
		if n || t {
			p.held = 0
		}
		if now.Sub(p.lastHeard()) <= cc.PeerTimeout/2 {
			lately++
		}
	}
	lv.byNATS.Store(int64(byNATS))
	lv.byTrunk.Store(int64(byTrunk))
	steady := c.natsSteady(now)
	allSilent := len(c.peers) > 1 && lately == 0
	for id, p := range c.peers {
		if now.Sub(p.lastHeard()) <= cc.PeerTimeout {
			continue
		}
		lv.want(id, now)
		switch {
		case !steady:
			c.holdBack(id, p, holdNATSDown, now)
			continue
		case allSilent && !lv.leaseFree(id, now):
			c.holdBack(id, p, holdAllSilent, now)
			continue
		}
		c.f.log.Warn("peer forwarder silent on NATS and the trunk: taken for dead", zap.String("peer", id),
			zap.String("heartbeat", silentFor(now, p.heard)), zap.String("trunk", silentFor(now, p.trunkHeard)))
		delete(c.peers, id)
		c.deadPeers[id] = now
		c.buried(id, p)
		if p.last.Trunk.IsValid() {
			lv.deadTrunks[id] = p.last.Trunk
		}
		c.forgetPeer(id, now)
	}
	for id, t := range c.deadPeers {
		if now.Sub(t) > 10*cc.OrphanAfter {
			delete(c.deadPeers, id)
			delete(lv.deadTrunks, id)
			delete(c.goneBeats, id)
		} else {
			lv.want(id, now)
		}
	}
	lv.publishWants(now)
}

// silentFor says how long ago t was, for logs.
func silentFor(now, t time.Time) string {
	if t.IsZero() {
		return "never heard"
	}
	return now.Sub(t).Round(time.Millisecond).String()
}

// holdBack counts (once a silence) and logs why a silent peer stays.
func (c *control) holdBack(id string, p *peer, why holdReason, now time.Time) {
	if p.held&(1<<why) != 0 {
		return
	}
	p.held |= 1 << why
	c.f.live.held[why].Add(1)
	c.f.log.Warn("peer forwarder silent on NATS and the trunk, not taken for dead", zap.String("peer", id),
		zap.String("because", holdReasonNames[why]), zap.Duration("silent", now.Sub(p.lastHeard())))
}

// natsSteady: our NATS connection is up, has been for PeerTimeout (peers
// had time to be heard again), and our own heartbeat comes back to us.
func (c *control) natsSteady(now time.Time) bool {
	lv, timeout := c.f.live, c.f.cfg.Cluster.PeerTimeout
	return lv.natsUp && now.Sub(lv.natsUpSince) >= timeout && now.Sub(lv.selfHeard) <= timeout
}

// watchNATS follows our NATS connection; after every reconnection it
// re-announces what this forwarder holds.
func (c *control) watchNATS(now time.Time) {
	lv, nc := c.f.live, c.f.cfg.Cluster.NATS
	up := nc.IsConnected()
	reconnects := nc.Stats().Reconnects
	again := reconnects != lv.reconnects
	lv.reconnects = reconnects
	lv.natsUpNow.Store(up)
	switch {
	case up && (!lv.natsUp || again):
		lv.natsUp, lv.natsUpSince = true, now
		if again {
			c.resync(now)
		}
	case !up && lv.natsUp:
		lv.natsUp = false
		c.f.log.Warn("NATS connection down: peers are judged by their trunk keepalives, and none is taken for dead until it is back")
	}
}

// resync announces this forwarder and every placement it holds, and
// rereads every call from the store, after a NATS reconnection: notices
// sent or missed while it was away are made good at once.
func (c *control) resync(now time.Time) {
	c.announce(now)
	n := 0
	for _, cl := range c.calls {
		for _, s := range cl.members {
			if s.confirmed && !s.refused {
				c.notify(cl, s.participant, protocol.MemberPlaced, now)
				n++
			}
		}
		cl.nextRefresh = now
	}
	c.f.live.resyncs.Add(1)
	c.f.log.Info("NATS connection back: placements re-announced", zap.Int("placements", n), zap.Int("calls", len(c.calls)))
}

// sendKeepalives sends one keepalive to the trunk of every forwarder this
// one knows: peers, forwarders of its calls' members, and peers taken for
// dead lately (so a wrong judgement on either side heals).
func (c *control) sendKeepalives() {
	lv, f := c.f.live, c.f
	if c.trunkCodec == nil || len(f.trunkConns) == 0 {
		return
	}
	lv.seq++
	k := protocol.TrunkKeepalive{Forwarder: f.cfg.Cluster.ID, Started: c.started, Seq: lv.seq}
	frame, err := protocol.SealTrunkKeepalive(c.trunkCodec, lv.frame[:0], &k)
	if err != nil {
		return // the id and start time were valid when the forwarder started
	}
	c.noteKeepaliveSent(lv.seq, f.cfg.Now())
	clear(lv.dests)
	add := func(a netip.AddrPort) {
		if a.IsValid() && a != f.trunkAdvertise {
			lv.dests[a] = struct{}{}
		}
	}
	for _, p := range c.peers {
		add(p.last.Trunk)
	}
	for _, a := range lv.deadTrunks {
		add(a)
	}
	for _, cl := range c.calls {
		for _, p := range cl.remote {
			add(p.trunk)
		}
	}
	for a := range lv.dests {
		if _, err := f.trunkConns[0].WriteToUDPAddrPort(frame, a); err != nil {
			f.countDrop(DropSendFailed)
			continue
		}
		lv.beatsOut.Add(1)
	}
}

// takeBeats applies the keepalives the trunk readers handed over.
func (c *control) takeBeats() {
	for {
		select {
		case b := <-c.f.live.beats:
			c.onBeat(&b)
		default:
			return
		}
	}
}

// onBeat: a peer was heard on the trunk. A keepalive of an older process,
// or not newer than the last one of its process (reordered or replayed),
// is ignored.
func (c *control) onBeat(b *trunkBeat) {
	if protocol.TrunkControlKind(b.b[:b.n]) == protocol.TrunkKindEcho {
		c.onEcho(b) // trunk_rtt.go
		return
	}
	k, err := protocol.ParseTrunkKeepalive(&b.hdr, b.b[:b.n])
	if err != nil {
		c.f.countDrop(DropTrunkAuth)
		return
	}
	if k.Forwarder == c.f.cfg.Cluster.ID {
		return
	}
	p := c.peers[k.Forwarder]
	if p == nil {
		p = &peer{}
		c.peers[k.Forwarder] = p
		delete(c.deadPeers, k.Forwarder)
		c.f.log.Info("peer forwarder heard on the trunk", zap.String("peer", k.Forwarder))
	}
	switch {
	case p.started.IsZero() || k.Started.After(p.started):
		if !p.started.IsZero() {
			c.f.log.Info("peer forwarder restarted", zap.String("peer", k.Forwarder))
			c.forgetPeer(k.Forwarder, k.Started)
		}
		p.started, p.trunkSeq = k.Started, k.Seq
	case k.Started.Equal(p.started) && k.Seq > p.trunkSeq:
		p.trunkSeq = k.Seq
	default:
		return
	}
	if at := time.Unix(0, b.at); at.After(p.trunkHeard) {
		p.trunkHeard = at
	}
	c.f.live.beatsIn.Add(1)
	c.echoKeepalive(&k, b)
}

// orphanLeaseFree says whether the members the store places on fwd may be
// removed as far as its lease goes; otherwise it asks about the lease, and
// once the store has been asked, counts (once until it is free) that the
// removal was held back.
func (c *control) orphanLeaseFree(fwd string, now time.Time) bool {
	lv := c.f.live
	if lv.leaseFree(fwd, now) {
		delete(lv.heldMembers, fwd)
		return true
	}
	lv.want(fwd, now)
	if !lv.asked(fwd, now) {
		return false // no answer yet: the next reconcile will know
	}
	if !lv.heldMembers[fwd] {
		lv.heldMembers[fwd] = true
		lv.held[holdLeaseHeld].Add(1)
		c.f.log.Info("not removing members of a silent forwarder: the store does not say it is gone", zap.String("peer", fwd))
	}
	return false
}

var (
	mPeersHeard = prometheus.NewDesc("callrelay_forwarder_peers_heard",
		"Peer forwarders heard within the peer timeout, by path: nats (heartbeats) and trunk (keepalives); one heard on both counts in both.", []string{"via"}, nil)
	mPeersHeld = prometheus.NewDesc("callrelay_forwarder_peer_expiries_suppressed_total",
		"Silent peers not taken for dead, or whose members were not removed, by reason: nats_down (ours), all_silent (every peer at once), lease_held (the store says it is alive, or cannot say); once a silence.", []string{"reason"}, nil)
	mKeepalives = prometheus.NewDesc("callrelay_forwarder_trunk_keepalives_total",
		"Trunk keepalives by direction: in (valid and newer) and out.", []string{"direction"}, nil)
	mResyncs = prometheus.NewDesc("callrelay_forwarder_nats_resyncs_total",
		"NATS reconnections after which this forwarder re-announced its placements.", nil, nil)
	mLivenessLease = prometheus.NewDesc("callrelay_forwarder_liveness_lease_held",
		"1 while this forwarder holds its liveness lease in the store.", nil, nil)
	mNATSUp = prometheus.NewDesc("callrelay_forwarder_nats_connected", "1 while the NATS connection is up.", nil, nil)
)

func describePeering(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{mPeersHeard, mPeersHeld, mKeepalives, mResyncs, mLivenessLease, mNATSUp, mTrunkFamily} {
		ch <- d
	}
}

func collectPeering(ch chan<- prometheus.Metric, s PeerStats) {
	g := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	c := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	g(mPeersHeard, float64(s.ByNATS), "nats")
	g(mPeersHeard, float64(s.ByTrunk), "trunk")
	for i, n := range s.Held {
		c(mPeersHeld, n, holdReasonNames[i])
	}
	c(mKeepalives, s.KeepalivesIn, "in")
	c(mKeepalives, s.KeepalivesOut, "out")
	c(mResyncs, s.Resyncs)
	c(mTrunkFamily, s.TrunkFamilySkipped)
	b2f := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	g(mLivenessLease, b2f(s.LeaseHeld))
	g(mNATSUp, b2f(s.NATSUp))
}
