package forwarder

import (
	"net/netip"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/protocol"
)

// A call's view of the other forwarders is a set of (participant, forwarder)
// placements, learned from the store and from notices. It is a set, not a
// map from participant to forwarder, on purpose: a device racing its join
// to several forwarders is briefly placed on all of them, and the losers'
// "left" notices must remove only their own placements, never the winner's.
// The data path sends one copy of each packet to every forwarder that has at
// least one placement.
type remoteKey struct {
	participant protocol.ID
	fwd         string
}

type remotePlacement struct {
	trunk   netip.AddrPort
	learned time.Time
}

// peer is another forwarder, as its heartbeats and trunk keepalives
// describe it (liveness.go).
type peer struct {
	last       protocol.ForwarderAnnounce // its last heartbeat; zero if heard only on the trunk so far
	heard      time.Time                  // when that heartbeat arrived
	trunkHeard time.Time                  // when its last trunk keepalive arrived
	started    time.Time                  // its newest process heard of, on either path
	trunkSeq   uint64                     // the last keepalive sequence of that process
	held       uint8                      // holdReasons counted during its current silence
	// referred are the devices this forwarder sent there that it has not
	// admitted yet (referrals.go).
	referred referrals
}

// clusterMsg is a NATS message handed to the control goroutine.
type clusterMsg struct {
	announce bool
	data     []byte
}

const clusterQueue = 4096

// subscribe starts listening to a call's notices.
func (c *control) subscribe(cl *call) {
	nc := c.f.cfg.Cluster.NATS
	if nc == nil {
		return
	}
	sub, err := nc.Subscribe(c.f.cfg.Cluster.callSubject(cl.id), func(m *nats.Msg) { c.f.enqueueCluster(false, m.Data) })
	if err != nil {
		c.f.natsErrors.Add(1)
		c.f.log.Warn("subscribing to call notices", zap.Stringer("call", cl.id), zap.Error(err))
		return
	}
	cl.sub = sub
}

func (c *control) unsubscribe(cl *call) {
	if cl.sub != nil {
		_ = cl.sub.Unsubscribe()
		cl.sub = nil
	}
}

// enqueueCluster runs on NATS goroutines: it never blocks them.
func (f *Forwarder) enqueueCluster(announce bool, data []byte) {
	select {
	case f.clusterIn <- clusterMsg{announce, data}:
	default:
		f.clusterDrops.Add(1)
	}
}

// notify tells the call's other forwarders that participant was placed here
// or left here (or, op ask, asks who else serves the call: notices.go).
func (c *control) notify(cl *call, participant protocol.ID, op protocol.MemberOp, now time.Time) {
	cc := &c.f.cfg.Cluster
	if cc.NATS == nil || !cc.enabled() {
		return
	}
	n := protocol.MemberNotice{Op: op, Call: cl.id, Participant: participant, Forwarder: cc.ID,
		Trunk: c.f.trunkAdvertise, At: c.noticeAt(now)}
	b, err := n.Marshal(c.scratch[:0], cc.Key)
	if err == nil {
		err = cc.NATS.Publish(cc.callSubject(cl.id), b)
	}
	if err != nil {
		c.f.natsErrors.Add(1)
	}
}

// onCluster applies a notice or a heartbeat. Anything that does not
// authenticate and parse is counted and dropped, and so is a type that
// does not belong on the subject it came on (freshness.go).
func (c *control) onCluster(m clusterMsg, now time.Time) {
	key := c.f.cfg.Cluster.Key
	t, err := protocol.PeekClusterMsgType(m.data)
	if err != nil {
		c.f.clusterBad.Add(1)
		return
	}
	if m.announce {
		switch t {
		case protocol.ClusterMsgLoadReport: // for dashboards, but never taken unchecked
			if err := c.loadScratch.Unmarshal(m.data, key); err != nil {
				c.f.clusterBad.Add(1)
			} else if c.f.live != nil {
				c.onPeerReport(&c.loadScratch) // its region and level (trunk_rtt.go)
			}
		case protocol.ClusterMsgForwarderAnnounce:
			var a protocol.ForwarderAnnounce
			if err := a.Unmarshal(m.data, key); err != nil {
				c.f.clusterBad.Add(1)
				return
			}
			c.onAnnounce(a, now)
		default:
			c.f.fresh.wrongType[subjectForwarders].Add(1)
		}
		return
	}
	switch t {
	case protocol.ClusterMsgDecision:
		c.onDecision(m.data, now)
	case protocol.ClusterMsgPlacementMove:
		c.onPlacementMove(m.data, now) // placement_move.go
	case protocol.ClusterMsgMemberNotice:
		var n protocol.MemberNotice
		if err := n.Unmarshal(m.data, key); err != nil {
			c.f.clusterBad.Add(1)
			return
		}
		c.onNotice(&n, now) // notices.go
	default:
		c.f.fresh.wrongType[subjectCall].Add(1)
	}
}

// onAnnounce takes a heartbeat that is fresh (freshness.go): made within
// announceMaxAge of our clock, and strictly newer than the last taken
// from its forwarder, by (started, sequence).
func (c *control) onAnnounce(a protocol.ForwarderAnnounce, now time.Time) {
	if !c.announceFresh(a.At, now) {
		return
	}
	if a.ID == c.f.cfg.Cluster.ID {
		if a.Started.UnixMilli() == c.started.UnixMilli() && a.Seq > c.selfSeq && c.f.live != nil {
			c.selfSeq = a.Seq
			c.f.live.selfHeard = now // NATS delivers to us: our own heartbeat came back
		}
		return
	}
	p := c.peers[a.ID]
	if p == nil {
		if !c.revived(&a) {
			return // a dead forwarder's old heartbeat
		}
		p = &peer{}
		c.peers[a.ID] = p
		delete(c.deadPeers, a.ID)
		c.f.log.Info("peer forwarder up", zap.String("peer", a.ID), zap.Stringer("media", a.Media), zap.Stringer("trunk", a.Trunk))
	}
	switch {
	case p.started.IsZero():
		p.started = a.Started
	case a.Started.After(p.started):
		// Restarted: what it served before is gone; placements it made
		// since it started (its notices may beat its heartbeat) stay.
		c.f.log.Info("peer forwarder restarted", zap.String("peer", a.ID))
		c.forgetPeer(a.ID, a.Started)
		p.started = a.Started
	case a.Started.Before(p.started):
		c.f.fresh.beatsStale.Add(1)
		return // from a process older than one already heard
	}
	if a.Seq <= p.last.Seq && a.Started.Equal(p.last.Started) {
		c.f.fresh.beatsStale.Add(1)
		return // replayed or reordered: only a newer one says it is alive
	}
	p.last, p.heard = a, now
}

// forgetPeer drops the placements on fwd learned before since.
func (c *control) forgetPeer(fwd string, since time.Time) {
	for _, cl := range c.calls {
		for k, p := range cl.remote {
			if k.fwd == fwd && p.learned.Before(since) {
				delete(cl.remote, k)
				c.dirtyCalls[cl.id] = struct{}{}
			}
		}
	}
}

// announce publishes this forwarder's heartbeat.
func (c *control) announce(now time.Time) {
	f := c.f
	cc := &f.cfg.Cluster
	if cc.NATS == nil || !cc.enabled() {
		return
	}
	c.seq++
	a := protocol.ForwarderAnnounce{
		ID: cc.ID, Media: f.mediaAdvertise, Media6: f.mediaAdv6, Trunk: f.trunkAdvertise, Streams: f.streamListeners(),
		Sessions: uint32(len(c.sessions)), Calls: uint32(len(c.calls)),
		Draining: f.draining.Load(), Seq: c.seq, Started: c.started, At: now, Load: f.loadPermille(),
	}
	b, err := a.Marshal(c.scratch[:0], cc.Key)
	if err == nil {
		err = cc.NATS.Publish(cc.announceSubject(), b)
	}
	if err != nil {
		f.natsErrors.Add(1)
	}
	c.reportLoad(now)
}

// reportLoad publishes the throttling picture for dashboards, with the
// heartbeat.
func (c *control) reportLoad(now time.Time) {
	f := c.f
	cc := &f.cfg.Cluster
	s := f.Stats()
	r := protocol.LoadReport{
		Forwarder: cc.ID, Started: c.started, At: now, Seq: c.seq, Level: uint8(min(s.ThrottleLevel, 4)),
		Sessions: uint32(s.Sessions), StateDegraded: s.StateDegraded, Draining: s.Draining,
		StateQueued: uint32(s.StateQueued), AudioMuted: s.AudioMuted, ShedVideo: s.Drops[DropShedVideo],
		HasAdapt: true,
		Adapt: protocol.LoadAdapt{
			Nacked: s.Nacked, Resent: s.NackOutcomes[nackSent], NotCached: s.NackOutcomes[nackMiss],
			OverBudget: s.NackOutcomes[nackBudget], ResentBytes: s.ResentBytes, Probes: s.Probes,
			KeyFramesAsked: s.KeyFramesAsked, Subscriptions: s.Subscriptions,
		},
	}
	r.HasOps, r.Ops.Region = true, cc.Region
	r.Ops.StoreWrites, r.Ops.StoreWriteUs = f.storeLatency.totals()
	r.Ops.NATSRTTs, r.Ops.NATSRTTUs = f.natsRTT.totals()
	if v := f.live.regions.view.Load(); v != nil {
		r.RTTs = *v // per peer region (trunk_rtt.go)
	}
	r.Spill = f.live.regions.spillSection() // region_spill.go
	for i := range r.Signals {
		r.Signals[i] = uint16(min(f.thr.signals[i].Load(), 65535))
	}
	for class := range s.Admissions {
		r.Admitted[class] = uint32(s.Admissions[class])
		var refused uint64
		for _, n := range s.Refusals[class] {
			refused += n
		}
		r.Refused[class] = uint32(refused)
	}
	for _, cl := range c.calls {
		if cl.class == protocol.ClassOneToOne {
			r.CallsOneToOne++
		} else {
			r.CallsGroup++
		}
	}
	b, err := r.Marshal(c.scratch[:0], cc.Key)
	if err == nil {
		err = cc.NATS.Publish(cc.announceSubject(), b)
	}
	if err != nil {
		f.natsErrors.Add(1)
	}
}

// pickAlternate names the least loaded live peer that is not draining, or
// the configured alternate. A peer silent on both paths is not live, even
// while it is not taken for dead.
func (c *control) pickAlternate(dev netip.AddrPort) netip.AddrPort {
	var best *peer
	now := c.f.cfg.Now()
	for _, p := range c.peers {
		if p.last.Draining || !p.last.Media.IsValid() || now.Sub(p.lastHeard()) > c.f.cfg.Cluster.PeerTimeout {
			continue // draining, never announced, or silent (not yet taken for dead)
		}
		// Our region first, then the nearest (region_spill.go); then the fewest sessions.
		cost, bestCost := c.regionCost(p.last.ID), time.Duration(0)
		if best != nil {
			bestCost = c.regionCost(best.last.ID)
		}
		if best == nil || cost < bestCost || cost == bestCost && (int(p.last.Sessions)+p.referred.count(dev, now) < int(best.last.Sessions)+best.referred.count(dev, now) ||
			(int(p.last.Sessions)+p.referred.count(dev, now) == int(best.last.Sessions)+best.referred.count(dev, now) && p.last.ID < best.last.ID)) {
			best = p
		}
	}
	if best == nil {
		return c.f.cfg.Alternate
	}
	best.referred.add(dev, now)
	return mediaFor(&best.last, dev)
}

// trunksOf lists the trunk addresses of the other forwarders with members
// of cl, once each.
func (c *control) trunksOf(cl *call) []netip.AddrPort {
	var out []netip.AddrPort
	for k, p := range cl.remote {
		if k.fwd == c.f.cfg.Cluster.ID || !p.trunk.IsValid() || p.trunk == c.f.trunkAdvertise {
			continue
		}
		if !reachableFrom(p.trunk, c.f.trunkV6) {
			c.f.trunkFamilySkipped.Add(1) // an IPv6 trunk from our IPv4 trunk socket (dualstack.go)
			continue
		}
		dup := false
		for _, t := range out {
			if t == p.trunk {
				dup = true
				break
			}
		}
		if !dup {
			out = append(out, p.trunk)
		}
	}
	return out
}
