package forwarder

import (
	"fmt"
	"sort"
	"time"

	"github.com/callrelay/callrelay/protocol"
)

// A call's timeline: the last timelineLen events this forwarder saw of it
// (joins, leaves, address changes, moves asked, speaker and layer
// switches, NACK bursts, refused joins, operators' holds and removals),
// kept by the control goroutine while the call has members here and ten
// minutes after, and shown by the admin API's call view. The conductor's
// decisions reach it as the speaker and layer switches they make here.
type timeline struct {
	ev   [timelineLen]protocol.AdminEvent
	n    int // events written in all
	last time.Time
}

const (
	timelineLen = 64
	// nackBurstBytes: retransmissions to one receiver within one cluster
	// tick that make a NACK burst on its timeline.
	nackBurstBytes = 16 << 10
)

// event notes one event of a call present here (others are not kept, so a
// flood of joins for made-up calls costs nothing).
func (c *control) event(call protocol.ID, now time.Time, kind string, p protocol.ID, detail string) {
	t := c.admin.events[call]
	if t == nil {
		if c.calls[call] == nil {
			return
		}
		if c.admin.events == nil {
			c.admin.events = make(map[protocol.ID]*timeline)
		}
		t = new(timeline)
		c.admin.events[call] = t
	}
	e := protocol.AdminEvent{AtUnixMs: now.UnixMilli(), Forwarder: c.f.cfg.Cluster.ID, Kind: kind, Detail: detail}
	if !p.IsZero() {
		e.Participant = p.String()
	}
	t.ev[t.n%timelineLen] = e
	t.n++
	t.last = now
}

// events lists a call's timeline, oldest first.
func (t *timeline) events() []protocol.AdminEvent {
	out := make([]protocol.AdminEvent, 0, min(t.n, timelineLen))
	for i := max(0, t.n-timelineLen); i < t.n; i++ {
		out = append(out, t.ev[i%timelineLen])
	}
	return out
}

// nackBursts notes, per receiver, a cluster tick in which it was resent
// more than nackBurstBytes.
func (c *control) nackBursts(now time.Time) {
	for _, s := range c.sessions {
		r := s.media.down.resent.Load()
		if d := r - s.resentSeen; s.resentSeen != 0 && d >= nackBurstBytes {
			c.event(s.call.id, now, "nack_burst", s.participant, fmt.Sprintf("%d bytes resent since the last tick", d))
		}
		s.resentSeen = max(r, 1)
	}
}

// adminCallView is this forwarder's view of cl for the admin API.
func (c *control) adminCallView(cl *call, now time.Time) protocol.AdminCall {
	v := protocol.AdminCall{Call: cl.id.String(), Forwarder: c.f.cfg.Cluster.ID, Class: className(cl.class),
		Members: []protocol.AdminMember{}, Remote: []string{}, Events: []protocol.AdminEvent{}}
	d := &cl.decision
	if d.applied {
		v.Epoch = uint64(d.d.Epoch)
		if !d.d.Dominant.IsZero() {
			v.Speaker = d.d.Dominant.String()
		}
	}
	for _, s := range cl.members {
		m := protocol.AdminMember{Participant: s.participant.String(), Addr: s.addr.String(), SSRCs: s.media.ssrcList(),
			HeldAudio: s.hold&holdAudio != 0, HeldVideo: s.hold&holdVideo != 0, Forwarded: s.media.audio.gate.Load() != gateOff,
			UplinkBps: s.media.up.bps.Load(), DownlinkBps: s.media.down.estimate(), IdleMillis: now.Sub(s.lastSeen).Milliseconds(),
			Layers: map[string]string{}}
		if s.moveTo.IsValid() {
			m.MovingTo = s.moveTo.String()
		}
		pairs := s.video.subs
		if !s.video.subApplied {
			pairs = s.video.defaults
		}
		for tx, p := range pairs {
			m.Layers[tx.String()] = layerName(p.target.Load())
		}
		v.Members = append(v.Members, m)
	}
	sort.Slice(v.Members, func(i, j int) bool { return v.Members[i].Participant < v.Members[j].Participant })
	for k := range cl.remote {
		v.Remote = append(v.Remote, k.participant.String()+"@"+k.fwd)
	}
	sort.Strings(v.Remote)
	if t := c.admin.events[cl.id]; t != nil {
		v.Events = t.events()
	}
	return v
}

// layerName names a pair's target.
func layerName(t uint32) string {
	switch t {
	case rankDefault:
		return "lowest (no decision)"
	case rankNone:
		return "none"
	}
	return fmt.Sprintf("rank %d", t)
}
