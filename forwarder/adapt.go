package forwarder

import (
	"net/netip"
	"time"

	"github.com/pion/rtcp"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/protocol"
)

// The control goroutine's part of network adaptation: subscriptions,
// what senders are told (REMB with their uplink estimate, the conductor's
// TargetBitrate and SimulcastControl, PLI when a receiver waits for a key
// frame), retransmission budgets, NACK caches, and the video section of
// the metadata.

// adaptParams are the data path's adaptation settings, fixed at start.
type adaptParams struct {
	videoID, absID uint8
	resendGapNS    int64
	nackShareQ10   int64 // a receiver's share of retransmission per byte sent to it, in 1024ths
}

func adaptParamsOf(a AdaptConfig) adaptParams {
	return adaptParams{videoID: a.VideoFrameExtensionID, absID: a.AbsSendTimeExtensionID, resendGapNS: a.NackResendGap.Nanoseconds(),
		nackShareQ10: int64(a.NackShare * 1024)}
}

// sessionVideo is a session's subscriptions and what it was told as a
// sender. Control goroutine only.
type sessionVideo struct {
	subs       map[protocol.ID]*pair // senders it subscribed to; shared with routes
	defaults   map[protocol.ID]*pair // before its first Subscription: every sender, lowest layer
	subList    []protocol.VideoSubscription
	subSeq     uint16
	subApplied bool
	subChanged bool // not yet in the metadata

	target     *protocol.SenderTarget // the conductor's last plan for it as a sender
	toldAt     time.Time              // when TargetBitrate/SimulcastControl last went out
	rembAt     time.Time
	pliAt      [maxSSRCs]time.Time
	videoLast  [protocol.MaxSimulcastLayers]uint64 // the video meter at the last metadata with video
	videoAt    time.Time
	downSentAt time.Time
	sentLast   uint64
	resentLast uint64
	probe      probeState
}

// probeState is a receiver's downlink probing (probe.go).
type probeState struct {
	until, next time.Time // probing until; the next probe not before
	heldSince   time.Time // held below its subscriptions since (zero: not held)
	rate        uint64    // bit/s of padding while probing
	startEst    uint64    // the estimate when the probe began
	failures    int       // probes in a row that did not raise the estimate
	rises       int       // probes in a row that did
	seq         uint16
	owed        float64 // bytes due but not yet sent
	last        time.Time
}

// Intervals of what senders are told again without a change.
const (
	retellEvery  = time.Second
	rembEvery    = 250 * time.Millisecond
	pliMinGap    = 200 * time.Millisecond
	metaVideoGap = 500 * time.Millisecond
)

// onRTCP takes a device's RTCP that the reader handed over: a
// Subscription.
func (c *control) onRTCP(src netip.AddrPort, raw []byte) {
	s := c.byAddr[src]
	if s == nil {
		c.f.countDrop(DropUnknownSource)
		return
	}
	_, pkt, ok := relayControlSubType(raw)
	if !ok {
		return
	}
	msg, _, err := protocol.ParseRelayApp(pkt)
	sub, isSub := msg.(*protocol.Subscription)
	if err != nil || !isSub {
		c.f.subsRejected.Add(1)
		return
	}
	v := &s.video
	if v.subApplied && !sub.Newer(v.subSeq) {
		if sub.Sequence != v.subSeq {
			c.f.subsRejected.Add(1)
		}
		return
	}
	v.subSeq, v.subApplied, v.subChanged = sub.Sequence, true, true
	v.subList = append(v.subList[:0], sub.Videos...)
	old := v.subs
	if old == nil {
		old = v.defaults // keep the layer being forwarded
	}
	v.defaults = nil
	v.subs = make(map[protocol.ID]*pair, len(sub.Videos))
	for _, vs := range sub.Videos {
		id := protocol.ID(vs.Participant)
		if id == s.participant {
			continue
		}
		p := old[id]
		if p == nil {
			p = newPair()
			c.applyLayer(s.call, s.participant, id, p)
		}
		v.subs[id] = p
	}
	c.f.subsApplied.Add(1)
	c.dirtyCalls[s.call.id] = struct{}{}
}

// pairFor is the pair from sender tx to s: its subscription, or, until s
// sends its first Subscription, a default pair (every video, the lowest
// layer: the default policy). nil: s did not subscribe to tx.
func (s *session) pairFor(tx protocol.ID) *pair {
	v := &s.video
	if v.subApplied {
		return v.subs[tx]
	}
	p := v.defaults[tx]
	if p == nil {
		if v.defaults == nil {
			v.defaults = make(map[protocol.ID]*pair)
		}
		p = newPair()
		v.defaults[tx] = p
	}
	return p
}

// applyLayer sets a pair's target from the call's last decision.
func (c *control) applyLayer(cl *call, rx, tx protocol.ID, p *pair) {
	if !cl.decision.applied || !cl.decision.d.Video {
		return
	}
	for _, a := range cl.decision.d.Layers {
		if a.Receiver == rx && a.Sender == tx {
			if old := p.target.Swap(uint32(a.Rank)); old != uint32(a.Rank) {
				c.event(cl.id, c.f.cfg.Now(), "layer", rx, "from "+tx.String()+": "+layerName(old)+" -> "+layerName(uint32(a.Rank)))
			}
			return
		}
	}
}

// applyVideo applies the video part of a new decision: receivers' ranks,
// and senders' targets (told at once).
func (c *control) applyVideo(cl *call, now time.Time) {
	d := &cl.decision.d
	if !d.Video {
		return
	}
	for _, a := range d.Layers {
		if s := cl.members[a.Receiver]; s != nil {
			if p := s.video.subs[a.Sender]; p != nil {
				p.target.Store(uint32(a.Rank))
			}
		}
	}
	for i := range d.Senders {
		st := &d.Senders[i]
		s := cl.members[st.Participant]
		if s == nil {
			continue
		}
		if s.video.target == nil || *s.video.target != *st {
			t := *st
			s.video.target = &t
			c.tellTarget(s, now)
			c.policeTick(s, now) // a higher cap at once, a lower one later
		}
	}
}

// tellTarget sends a sender the conductor's plan: SimulcastControl and
// TargetBitrate in one compound packet.
func (c *control) tellTarget(s *session, now time.Time) {
	st := s.video.target
	if st == nil {
		return
	}
	sc := protocol.SimulcastControl{Enabled: st.Layers > 1, Layers: max(1, st.Layers)}
	tb := protocol.TargetBitrate{Total: st.TotalBps, LayerCount: st.Layers}
	copy(tb.Layers[:], st.LayerBps[:])
	a, err := protocol.MarshalRelayApp(0, &sc)
	if err != nil {
		c.f.log.Error("encoding simulcast control", zap.Error(err))
		return
	}
	b, err := protocol.MarshalRelayApp(0, &tb)
	if err != nil {
		c.f.log.Error("encoding target bitrate", zap.Error(err))
		return
	}
	c.tickSend(append(a, b...), s.addr)
	s.video.toldAt = now
	c.f.targetsSent.Add(1)
}

// feedbackTick runs every FeedbackEvery: caches for new senders, key frame
// requests, retransmission budgets, REMB, repeats of the targets, and
// members' ingress caps.
func (c *control) feedbackTick(now time.Time) {
	c.probing, c.probingNext = c.probingNext, 0 // probes still running, from the last tick
	c.startBatch()                              // what it sends goes in sendmmsg batches (ctrlbatch.go)
	defer func() { c.probing = 0; c.endBatch() }()
	for _, cl := range c.calls {
		for _, s := range cl.members {
			c.senderTick(cl, s, now)
			c.receiverTick(s, now)
			c.probeTick(s, now)
			c.policeTick(s, now)
			c.yieldUnits(1)
		}
		for id, m := range cl.remoteMedia {
			c.ensureCache(m)
			c.remoteKeyFrames(cl, id, m, now)
		}
	}
}

// ensureCache gives a sender whose packets a reader stores (cacheFor) a
// cache written by that reader: a small one while the sender has sent no
// video (nackAudioBytes: most senders at the knee are voices, and a full
// cache per voice costs cold lines, page faults and zeroing), the full one
// (Adapt.NackCacheBytes) from the tick after its first video packet. The
// small one it replaces still answers NACKs for what it holds (cachePrev):
// the first video packets, a key frame's, were stored there.
func (c *control) ensureCache(m *mediaInfo) {
	w := m.cacheFor.Load()
	if w == nil {
		return
	}
	video := m.video.lastNS.Load() != 0
	old := m.cache.Load()
	switch {
	case old != nil && old.writer == w && (old.full || !video):
		return
	case video:
		m.cache.Store(newNackCache(c.f.cfg.Adapt.NackCacheBytes, w))
	default:
		m.cache.Store(newAudioNackCache(c.f.cfg.Adapt.NackCacheBytes, w))
	}
	if old != nil && old.writer != w {
		old = nil // a flow moved to another reader: its old packets are not answered
	}
	m.cachePrev.Store(old)
}

func (c *control) senderTick(cl *call, s *session, now time.Time) {
	m := s.media
	c.ensureCache(m)
	m.up.handOver() // leg.go
	if !m.rtpSeen.Load() {
		return
	}
	v := &s.video
	if bits := m.keyWanted.Swap(0); bits != 0 {
		for slot := 0; slot < maxSSRCs; slot++ {
			if bits&(1<<slot) == 0 || now.Sub(v.pliAt[slot]) < pliMinGap {
				continue
			}
			ssrc, ok := m.ssrcs[slot].get()
			if !ok {
				continue
			}
			v.pliAt[slot] = now
			c.sendRTCP(s.addr, &rtcp.PictureLossIndication{MediaSSRC: ssrc})
			c.f.keyFramesAsked.Add(1)
		}
	}
	if est := m.up.bps.Load(); est > 0 && now.Sub(v.rembAt) >= rembEvery {
		v.rembAt = now
		c.sendREMB(s.addr, m, est)
	}
	if v.target != nil && now.Sub(v.toldAt) >= retellEvery {
		c.tellTarget(s, now)
	}
}

// receiverTick sets what retransmissions the receiver's leg may carry: its
// estimate less the media it got lately (sent, less the loss its receiver
// reports say), and at least what it lost, up to a tenth of the media. A
// leg that loses at random without being full (radio) gets its losses
// back even when its estimate sits at what it receives; a congested one
// gets at most a tenth more, until the conductor cuts its media.
func (c *control) receiverTick(s *session, now time.Time) {
	d := &s.media.down
	v := &s.video
	sent, resent := d.sent.Load(), d.resent.Load()
	if !v.downSentAt.IsZero() {
		if secs := now.Sub(v.downSentAt).Seconds(); secs > 0 {
			media := float64((sent-v.sentLast)-(resent-v.resentLast)) * 8 / secs
			est := float64(d.estimate())
			if est == 0 {
				est = float64(c.f.cfg.Adapt.UnknownDownlinkBps)
			}
			loss := float64(d.lossQ8.Load()) / 256
			d.rtxAllow.Store(uint64(max(est-media*(1-loss), media*min(loss, 0.1), 0)))
		}
	}
	v.downSentAt, v.sentLast, v.resentLast = now, sent, resent
}

// remoteKeyFrames asks a remote sender for the key frames local receivers
// wait for: a PLI over the trunk to the forwarders of the call, which hand
// it to their members (the sender acts on it, others ignore it).
func (c *control) remoteKeyFrames(cl *call, id protocol.ID, m *mediaInfo, now time.Time) {
	bits := m.keyWanted.Swap(0)
	if bits == 0 || c.trunkCodec == nil || len(c.f.trunkConns) == 0 {
		return
	}
	var from protocol.ID
	for p := range cl.members {
		if p != id { // the sender itself, while it is also here, would not get the frame (no echo)
			from = p // a local member, so the frame reaches every member there
			break
		}
	}
	if from.IsZero() {
		return // no one here but the sender, on its way to another forwarder
	}
	for slot := 0; slot < maxSSRCs; slot++ {
		if bits&(1<<slot) == 0 {
			continue
		}
		ssrc, ok := m.ssrcs[slot].get()
		if !ok {
			continue
		}
		pkt, err := (&rtcp.PictureLossIndication{MediaSSRC: ssrc}).Marshal()
		if err != nil {
			continue
		}
		h := protocol.TrunkHeader{Call: cl.id, Sender: from, Origin: c.f.tag}
		frame := c.trunkCodec.Seal(nil, &h, pkt)
		for k, p := range cl.remote {
			if k.participant == id {
				if _, err := c.f.trunkConns[0].WriteToUDPAddrPort(frame, p.trunk); err != nil {
					c.f.countDrop(DropSendFailed)
				}
			}
		}
		c.f.keyFramesAsked.Add(1)
	}
}

func (c *control) sendRTCP(to netip.AddrPort, p rtcp.Packet) {
	b, err := p.Marshal()
	if err != nil {
		c.f.log.Error("encoding RTCP", zap.Error(err))
		return
	}
	c.tickSend(b, to)
	c.f.targetsSent.Add(1)
}

// syncRemoteMedia keeps one mediaInfo per remote member of the call, and
// forgets the default video pairs of senders no longer in it.
func syncRemoteMedia(cl *call) {
	syncRemoteSenders(cl)
	for _, s := range cl.members {
		for id := range s.video.defaults {
			if cl.members[id] == nil && cl.remoteMedia[id] == nil {
				delete(s.video.defaults, id)
			}
		}
	}
}

// syncRemoteSenders makes cl.remoteMedia hold exactly the members placed
// on other forwarders, keeping the ones it had. That includes a member
// also served here for a moment: a device moved make-before-break (5.7)
// sends to its new forwarder before its leave reaches this one (its old
// path is the slow one), and a device racing its join is placed on several
// forwarders at once. Its packets that come over the trunk then go to the
// members here through their pairs, as the trunk reader sends no video of
// a sender it has no trunkSender for.
func syncRemoteSenders(cl *call) {
	old := cl.remoteMedia
	cl.remoteMedia = nil
	for k := range cl.remote {
		if cl.remoteMedia[k.participant] != nil {
			continue
		}
		if cl.remoteMedia == nil {
			cl.remoteMedia = make(map[protocol.ID]*mediaInfo)
		}
		m := old[k.participant]
		if m == nil {
			m = new(mediaInfo)
		}
		cl.remoteMedia[k.participant] = m
	}
}

// videoMeta fills the video section of a member's metadata, at most every
// metaVideoGap unless its subscriptions changed. It reports whether it did.
func (c *control) videoMeta(s *session, mm *protocol.MemberMetadata, now time.Time) bool {
	v := &s.video
	m := s.media
	if !v.subChanged && now.Sub(v.videoAt) < metaVideoGap {
		return false
	}
	// Only members the allocation is about: who watches video (it needs
	// their downlink) or sends it (their uplink and layers). Audio-only
	// calls add nothing to the metadata.
	sends := now.UnixNano()-m.video.lastNS.Load() < int64(2*time.Second)
	if !v.subChanged && len(v.subList) == 0 && !sends {
		return false
	}
	secs := now.Sub(v.videoAt).Seconds()
	vid := &mm.Video
	*vid = protocol.MemberVideo{
		UplinkEstBps:   uint32(min(m.up.bps.Load(), 1<<32-1)),
		DownlinkEstBps: uint32(min(m.down.estimate(), 1<<32-1)),
	}
	if sends {
		vid.Layers = uint8(m.video.layers.Load())
	}
	for r := range protocol.MaxSimulcastLayers {
		b := m.video.bytes[r].Load()
		if vid.Layers > 0 && r >= protocol.MaxSimulcastLayers-int(vid.Layers) && !v.videoAt.IsZero() && secs > 0 {
			vid.LayerBps[r-(protocol.MaxSimulcastLayers-int(vid.Layers))] = uint32(min(float64(b-v.videoLast[r])*8/secs, 1<<32-1))
		}
		v.videoLast[r] = b
	}
	for _, vs := range v.subList {
		if int(vid.NumSubs) == len(vid.Subs) {
			break
		}
		if protocol.ID(vs.Participant) == s.participant {
			continue
		}
		vid.Subs[vid.NumSubs] = protocol.VideoSub{Participant: vs.Participant, MaxHeight: vs.MaxHeight}
		vid.NumSubs++
	}
	mm.Flags |= protocol.MetaVideo
	v.videoAt, v.subChanged = now, false
	return true
}
