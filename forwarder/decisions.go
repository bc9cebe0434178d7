package forwarder

import (
	"fmt"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/callrelay/callrelay/protocol"
)

// The forwarder's side of the conductor (see conductor/doc.go):
//
//   - every MetadataEvery it publishes, per conductor partition, a batch of
//     what changed for its members since the last tick: the audio summary
//     of every member that sent audio, onsets, members that left;
//   - every call it serves is in a batch at least once a MetadataKeepalive
//     (a quiet member when nobody has anything to say), so its conductor,
//     or a new one after a takeover, keeps deciding for it;
//   - it applies the conductor's decisions for the calls it serves (they
//     arrive on the call's subject, with the notices), ignoring any that is
//     not newer than the last one applied: an older epoch is a conductor
//     that lost its lease;
//   - fail-static, bounded: a call keeps its last decision while its
//     conductor repeats it (the same epoch and sequence with a later at,
//     at least every second); when no fresh decision came for
//     Audio.DecisionTimeout, the call's audio goes back to the default
//     policy, every voice forwarded (video keeps its last layers), until a
//     fresh decision comes. Forwarders notice a silent conductor by its
//     missing decisions, whatever the cause (dead, cut off, or without its
//     lease), never by asking Redis;
//   - it tells its devices the dominant speaker (a CRLY DominantSpeaker).
//
// All of it runs on the control goroutine.

// callDecision is the conductor's side of a call: the last decision
// applied, and how fresh it is.
type callDecision struct {
	d       protocol.CallDecision
	applied bool
	// fresh is when (our clock) a decision last came that was newer than
	// the one applied, or a repeat of it with a later at. lapsed: none came
	// for Audio.DecisionTimeout, and the call's audio is on the default
	// policy until one does.
	fresh  time.Time
	lapsed bool
	// reported is when the call was last in a metadata batch.
	reported time.Time
}

// MetadataKeepalive is how often a call is reported to its conductor when
// none of its members has anything to say.
const MetadataKeepalive = time.Second

// metaState is the control goroutine's metadata publisher.
type metaState struct {
	batches map[uint16]*protocol.MetadataBatch
	seq     map[uint16]uint64
	left    []leftMember
	buf     []byte
	// lapseLogged is when calls whose decision lapsed were last logged.
	lapseLogged time.Time
	// rtts counts the RTT reports put in this tick's batches
	// (placement_move.go bounds them).
	rtts int
}

type leftMember struct {
	call, participant protocol.ID
}

func (c *control) metaEnabled() bool {
	cc := &c.f.cfg.Cluster
	return cc.NATS != nil && cc.ID != "" && !cc.Key.IsZero()
}

// metaTick publishes one tick of metadata.
func (c *control) metaTick(now time.Time) {
	if !c.metaEnabled() {
		return
	}
	cc := &c.f.cfg.Cluster
	ms := &c.meta
	if ms.batches == nil {
		ms.batches = make(map[uint16]*protocol.MetadataBatch)
		ms.seq = make(map[uint16]uint64)
	}
	for _, b := range ms.batches {
		b.Calls = b.Calls[:0]
	}
	tick := cc.MetadataEvery
	ms.rtts = 0
	c.lapseDecisions(now)
	for _, cl := range c.calls {
		var members []protocol.MemberMetadata
		for _, s := range cl.members {
			mm, ok, onsets := s.tickMetadata(tick)
			c.f.onsets.Add(onsets)
			if !ok {
				mm = protocol.MemberMetadata{Participant: s.participant, MeanLevel: 127, MaxLevel: 127}
			}
			video := c.videoMeta(s, &mm, now)
			if c.rttMeta(s, &mm) || video || ok {
				members = append(members, mm)
			}
		}
		members = c.appendLeft(cl.id, members)
		if len(members) == 0 && now.Sub(cl.decision.reported) >= MetadataKeepalive {
			members = append(members, quietMember(cl))
		}
		if len(members) > 0 {
			cl.decision.reported = now
			c.addCallMeta(cl.id, members)
		}
	}
	for _, l := range ms.left { // calls that ended here
		if c.calls[l.call] == nil {
			c.addCallMeta(l.call, []protocol.MemberMetadata{{Participant: l.participant, MeanLevel: 127, MaxLevel: 127, Flags: protocol.MetaLeft}})
		}
	}
	ms.left = ms.left[:0]
	for part, b := range ms.batches {
		if len(b.Calls) == 0 {
			continue
		}
		b.Forwarder, b.Partition, b.At = cc.ID, part, now
		b.TickMillis = uint16(max(1, min(10000, tick.Milliseconds())))
		c.publishMeta(part, b)
	}
}

// publishMeta seals and publishes b, split in halves until each part fits
// one message (README 7.3): every part has its own sequence and the tick's
// `at`, so the conductor takes them all, in order, and a replay of any of
// them is stale. A single call too large for a message is logged and left
// out.
func (c *control) publishMeta(part uint16, b *protocol.MetadataBatch) {
	if n := len(b.Calls); n > 1 && !b.Fits() {
		all := b.Calls
		b.Calls = all[:n/2]
		c.publishMeta(part, b)
		b.Calls = all[n/2:]
		c.publishMeta(part, b)
		b.Calls = all
		return
	}
	cc, ms := &c.f.cfg.Cluster, &c.meta
	ms.seq[part]++
	b.Seq = ms.seq[part]
	var err error
	if ms.buf, err = b.Marshal(ms.buf[:0], cc.Key); err != nil {
		c.f.log.Error("encoding metadata", zap.Error(err))
		return
	}
	if err := cc.NATS.Publish(cc.metaSubject(part), ms.buf); err != nil {
		c.f.natsErrors.Add(1)
		return
	}
	c.f.metaSent.Add(1)
	c.f.metaBytes.Add(uint64(len(ms.buf)))
}

// quietMember is one of cl's members reported quiet: it keeps the call
// known to its conductor.
func quietMember(cl *call) protocol.MemberMetadata {
	for _, s := range cl.members {
		return protocol.MemberMetadata{Participant: s.participant, MeanLevel: 127, MaxLevel: 127}
	}
	return protocol.MemberMetadata{}
}

// appendLeft adds the members of call id that left since the last tick.
func (c *control) appendLeft(id protocol.ID, members []protocol.MemberMetadata) []protocol.MemberMetadata {
	for _, l := range c.meta.left {
		if l.call == id && len(members) < 255 {
			members = append(members, protocol.MemberMetadata{Participant: l.participant, MeanLevel: 127, MaxLevel: 127, Flags: protocol.MetaLeft})
		}
	}
	return members
}

func (c *control) addCallMeta(id protocol.ID, members []protocol.MemberMetadata) {
	part := uint16(protocol.PartitionOf(id, c.f.cfg.Cluster.Partitions))
	b := c.meta.batches[part]
	if b == nil {
		b = new(protocol.MetadataBatch)
		c.meta.batches[part] = b
	}
	if len(members) > 255 {
		members = members[:255]
	}
	b.Calls = append(b.Calls, protocol.CallMetadata{Call: id, Members: members})
}

// tickMetadata is s's audio since the last tick, and whether there is
// anything to say (it sent audio, or had an onset).
func (s *session) tickMetadata(tick time.Duration) (mm protocol.MemberMetadata, ok bool, onsets uint64) {
	m := &s.media.audio
	now := m.totals()
	d := now.since(s.audioLast)
	s.audioLast = now
	loudest := m.loudest.Swap(0)
	// Only what changed: a member who neither spoke nor had an onset in
	// this tick, and was already reported quiet, is left out (the conductor
	// takes a missing member for silent). A speaker's first quiet tick is
	// reported, so the end of speech is not only inferred.
	speaking := d.voice > 0 || d.onsets > 0
	if !speaking && !s.metaSpeaking {
		return mm, false, 0
	}
	s.metaSpeaking = speaking
	mm = protocol.MemberMetadata{
		Participant:  s.participant,
		Packets:      uint16(d.packets),
		VoicePackets: uint16(min(d.voice, d.packets)),
		PayloadBytes: uint32(d.payload),
		MeanLevel:    127,
		MaxLevel:     uint8(127 - min(loudest, 127)),
	}
	if d.packets > 0 {
		mm.MeanLevel = uint8(127 - min(d.loudSum/d.packets, 127))
	}
	if d.onsets > 0 {
		mm.Flags |= protocol.MetaOnset
	}
	if secs := tick.Seconds(); secs > 0 {
		mm.UplinkBps = uint32(min(float64(d.all)*8/secs, 1<<32-1))
	}
	if d.expected > d.packets {
		mm.LossPermille = uint16(min(1000, (d.expected-d.packets)*1000/d.expected))
	}
	return mm, true, d.onsets
}

// onDecision applies a conductor's decision for a call served here.
func (c *control) onDecision(data []byte, now time.Time) {
	d := &c.decisionScratch
	if err := d.Unmarshal(data, c.f.cfg.Cluster.Key); err != nil {
		c.f.clusterBad.Add(1)
		c.f.log.Debug("bad decision", zap.Error(err))
		return
	}
	cl := c.calls[d.Call]
	if cl == nil {
		c.f.decisionsUnknown.Add(1)
		return
	}
	if cl.decision.applied && !d.Newer(&cl.decision.d) {
		switch {
		case d.Epoch < cl.decision.d.Epoch:
			c.f.decisionsStale.Add(1) // a fenced-off conductor
		case d.Epoch == cl.decision.d.Epoch && d.Seq == cl.decision.d.Seq && d.At.After(cl.decision.d.At):
			// A repeat: the conductor is there and still decides so. (A
			// replayed one is not later than the last one seen.)
			cl.decision.d.At = d.At
			c.freshDecision(cl, now)
		}
		return
	}
	prevDominant, had := cl.decision.d.Dominant, cl.decision.applied
	cl.decision.d.Call, cl.decision.d.Partition = d.Call, d.Partition
	cl.decision.d.Epoch, cl.decision.d.Seq, cl.decision.d.At = d.Epoch, d.Seq, d.At
	cl.decision.d.Dominant, cl.decision.d.Conductor = d.Dominant, d.Conductor
	cl.decision.d.Forward = append(cl.decision.d.Forward[:0], d.Forward...)
	cl.decision.d.Video = d.Video
	cl.decision.d.Senders = append(cl.decision.d.Senders[:0], d.Senders...)
	cl.decision.d.Layers = append(cl.decision.d.Layers[:0], d.Layers...)
	cl.decision.applied = true
	c.applyVideo(cl, now)
	c.f.decisions.Add(1)
	c.freshDecision(cl, now)
	for _, s := range cl.members {
		c.applyGate(cl, s)
	}
	if !had || prevDominant != d.Dominant {
		c.event(cl.id, now, "speaker", d.Dominant, fmt.Sprintf("conductor %s, epoch %d", d.Conductor, d.Epoch))
		if had {
			cl.log(c.f.log).Debug("dominant speaker", zap.Stringer("participant", d.Dominant), zap.Uint32("epoch", d.Epoch))
		}
		c.tellSpeaker(cl, nil)
	}
}

// freshDecision notes that cl's decision is current, and takes the call
// back from the default policy if it had lapsed.
func (c *control) freshDecision(cl *call, now time.Time) {
	cl.decision.fresh = now
	if !cl.decision.lapsed {
		return
	}
	cl.decision.lapsed = false
	for _, s := range cl.members {
		c.applyGate(cl, s)
	}
	cl.log(c.f.log).Info("a fresh conductor decision: audio forwarded by decision again")
}

// lapseDecisions puts the calls whose decision is older than
// Audio.DecisionTimeout on the default policy: every voice forwarded.
func (c *control) lapseDecisions(now time.Time) {
	timeout := c.f.cfg.Audio.DecisionTimeout
	n, lapsed := 0, 0
	for _, cl := range c.calls {
		d := &cl.decision
		if d.applied && !d.lapsed && now.Sub(d.fresh) >= timeout {
			d.lapsed = true
			n++
			for _, s := range cl.members {
				c.applyGate(cl, s)
			}
		}
		if d.lapsed {
			lapsed++
		}
	}
	c.f.nLapsed.Store(int64(lapsed))
	if n == 0 {
		return
	}
	c.f.decisionLapses.Add(uint64(n))
	if now.Sub(c.meta.lapseLogged) >= 10*time.Second {
		c.meta.lapseLogged = now
		c.f.log.Warn("no fresh conductor decision: forwarding every voice of these calls until one comes",
			zap.Int("calls", n), zap.Duration("after", timeout), zap.Int("calls_without_decision", lapsed))
	}
}

// applyGate opens or closes s's audio by the call's last decision; with no
// decision, or a lapsed one, every voice is forwarded.
func (c *control) applyGate(cl *call, s *session) {
	g := gateAll
	if cl.decision.applied && !cl.decision.lapsed {
		g = gateOff
		if slices.Contains(cl.decision.d.Forward, s.participant) {
			g = gateOn
		}
	}
	s.media.audio.gate.Store(g)
}

// tellSpeaker sends the call's dominant speaker to one member (only) or to
// every member here.
func (c *control) tellSpeaker(cl *call, only *session) {
	d := &cl.decision.d
	if !cl.decision.applied || d.Dominant.IsZero() {
		return
	}
	msg := protocol.DominantSpeaker{Participant: d.Dominant, Epoch: d.Epoch, Sequence: d.Seq}
	b, err := protocol.MarshalRelayApp(0, &msg)
	if err != nil {
		c.f.log.Error("encoding dominant speaker", zap.Error(err))
		return
	}
	for _, s := range cl.members {
		if only == nil || s == only {
			c.reply(b, s.addr)
			c.f.speakerUpdates.Add(1)
		}
	}
}

// noteLeft remembers a member that left, for the next metadata tick.
func (c *control) noteLeft(cl *call, s *session) {
	if c.metaEnabled() && len(c.meta.left) < maxLeftPerTick {
		c.meta.left = append(c.meta.left, leftMember{cl.id, s.participant})
	}
}

// maxLeftPerTick bounds the leave notes kept between two ticks; beyond it
// the conductor learns from silence.
const maxLeftPerTick = 4096

func (cl *call) log(l *zap.Logger) *zap.Logger { return l.With(zap.Stringer("call", cl.id)) }

// metaSubject is where the metadata of one partition goes.
func (c *Cluster) metaSubject(part uint16) string {
	return protocol.MetadataSubject(c.Subject, int(part))
}
