package forwarder

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/protocol"
)

// Member notices between forwarders (README 7.1).
//
//   - Order: for each (participant, forwarder) pair of a call, the notice
//     last applied leaves a mark, its at (the placing forwarder's clock) and
//     whether it said left; a placement read from the store leaves its join
//     time. A notice is applied only if its at is later than the mark, or
//     equal for a left after a placed. So a duplicate, a notice overtaken on
//     the way, or a replay changes nothing: a replayed old left cannot take
//     away a placement made again since, a replayed placed cannot bring
//     back one that left. Marks outlive their placement by markKeep.
//   - Ask: a forwarder that begins serving a call whose record it cannot
//     read (the store is away, or the join's write has not landed by the
//     next cluster tick) sends its member's notice as an ask. Forwarders
//     serving the call apply it as a placement and, when it is fresh,
//     answer with a placed notice for every member they serve, so trunking
//     starts both ways at once, without the store. A fresh ask is one that
//     was applied (an ask is then answered at most once) and whose at is
//     within askMaxAge of our clock.
//
// All of it runs on the control goroutine.

// noticeMark is the last notice applied for a (participant, forwarder)
// pair, or the join time of a placement read from the store.
type noticeMark struct {
	at   int64 // Unix ms, the placing forwarder's clock
	left bool
	set  time.Time // when the mark was set, our clock (for pruning)
}

// callNotices is a call's side of the notices.
type callNotices struct {
	marks map[remoteKey]noticeMark
	since time.Time // when this forwarder began serving the call
	read  bool      // the call's record has been read from the store since
	asked bool      // this forwarder asked who serves the call
}

// noticeCounters are the notices' counters (Stats.Notices).
type noticeCounters struct {
	ignored, asked, answered, answers atomic.Uint64
}

// NoticeStats counts member notices.
type NoticeStats struct {
	Ignored  uint64 // notices not newer than the last one applied for their participant and forwarder: duplicates, overtaken or replayed
	Asked    uint64 // asks sent: calls begun here whose record could not be read
	Answered uint64 // asks of other forwarders answered
	Answers  uint64 // placed notices sent in those answers
}

func (n *noticeCounters) stats() NoticeStats {
	return NoticeStats{Ignored: n.ignored.Load(), Asked: n.asked.Load(), Answered: n.answered.Load(), Answers: n.answers.Load()}
}

const (
	// askMaxAge: an ask whose at is further than this from our clock is
	// applied but not answered (a replay, or clocks far apart).
	askMaxAge = 10 * time.Second
	// markKeep: a mark outlives its placement this long.
	markKeep = time.Minute
)

// newer reports whether a notice made at (Unix ms), saying left or not,
// is to be applied after the mark k of cl; if so it becomes the mark.
func (cn *callNotices) newer(k remoteKey, at int64, left bool, now time.Time) bool {
	if m, ok := cn.marks[k]; ok && (at < m.at || at == m.at && (!left || m.left)) {
		return false
	}
	if cn.marks == nil {
		cn.marks = make(map[remoteKey]noticeMark)
	}
	cn.marks[k] = noticeMark{at: at, left: left, set: now}
	return true
}

// stored notes a placement read from the store, which joined at (the
// placing forwarder's clock); it reports false when a later notice said
// the participant left that forwarder (the record predates the removal).
func (cn *callNotices) stored(k remoteKey, joined, now time.Time) bool {
	at := joined.UnixMilli()
	if m, ok := cn.marks[k]; ok && m.at >= at {
		return !m.left
	}
	if cn.marks == nil {
		cn.marks = make(map[remoteKey]noticeMark)
	}
	cn.marks[k] = noticeMark{at: at, set: now}
	return true
}

// prune drops the marks of pairs with no placement, set over markKeep ago.
func (cn *callNotices) prune(remote map[remoteKey]*remotePlacement, now time.Time) {
	for k, m := range cn.marks {
		if _, placed := remote[k]; !placed && now.Sub(m.set) > markKeep {
			delete(cn.marks, k)
		}
	}
}

// onNotice applies another forwarder's notice about one of our calls.
func (c *control) onNotice(n *protocol.MemberNotice, now time.Time) {
	if n.Forwarder == c.f.cfg.Cluster.ID {
		return // our own
	}
	cl := c.calls[n.Call]
	if cl == nil {
		return // a call we no longer serve
	}
	k := remoteKey{n.Participant, n.Forwarder}
	if !cl.notices.newer(k, n.At.UnixMilli(), n.Op == protocol.MemberLeft, now) {
		c.f.notices.ignored.Add(1)
		return
	}
	switch n.Op {
	case protocol.MemberPlaced, protocol.MemberAsk:
		if p, ok := cl.remote[k]; ok && p.trunk == n.Trunk {
			p.learned = now
		} else {
			cl.remote[k] = &remotePlacement{trunk: n.Trunk, learned: now}
			c.dirtyCalls[cl.id] = struct{}{}
		}
		if n.Op == protocol.MemberAsk {
			c.answer(cl, n, now)
		}
	case protocol.MemberLeft:
		if s := cl.members[n.Participant]; s != nil && s.confirmed && !s.refused {
			// A forwarder that lost this device's multi-connect race let
			// it go. Its join was written after ours and its removal may
			// take our placement with it: write ours again (the removal
			// is conditional, so whichever lands last, ours stands).
			c.place(s, nil, nil)
			c.notify(cl, s.participant, protocol.MemberPlaced, now)
		}
		if _, ok := cl.remote[k]; ok {
			delete(cl.remote, k)
			c.dirtyCalls[cl.id] = struct{}{}
		}
	}
}

// answer tells an asking forwarder, and everyone else on the call's
// subject, every member served here, if the ask is fresh by our clock.
func (c *control) answer(cl *call, n *protocol.MemberNotice, now time.Time) {
	if d := now.Sub(n.At); d > askMaxAge || d < -askMaxAge {
		return
	}
	sent := 0
	for _, s := range cl.members {
		if !s.refused {
			c.notify(cl, s.participant, protocol.MemberPlaced, now)
			sent++
		}
	}
	c.f.notices.answered.Add(1)
	c.f.notices.answers.Add(uint64(sent))
	cl.log(c.f.log).Debug("answered who serves the call", zap.String("asker", n.Forwarder), zap.Int("placements", sent))
}

// notifyJoined tells the call's other forwarders about a member just
// admitted; when it is the call's first member here and the store cannot
// be read, it asks who else serves the call.
func (c *control) notifyJoined(cl *call, s *session, now time.Time) {
	op := protocol.MemberPlaced
	if len(cl.members) == 1 {
		cl.notices = callNotices{since: now}
		if c.storeUnreadable() {
			op = protocol.MemberAsk
		}
	}
	c.notifyOp(cl, s.participant, op, now)
}

// askIfUnread asks who serves cl when the call's record has not been read
// since this forwarder began serving it a cluster tick ago or more (the
// store hangs, or was not yet known to be away at the join).
func (c *control) askIfUnread(cl *call, now time.Time) {
	cn := &cl.notices
	cn.prune(cl.remote, now)
	if cn.read || cn.asked || now.Sub(cn.since) < c.f.clusterPeriod() {
		return
	}
	for _, s := range cl.members {
		if !s.refused {
			c.notifyOp(cl, s.participant, protocol.MemberAsk, now)
			return
		}
	}
}

// notifyOp is notify, counting asks.
func (c *control) notifyOp(cl *call, participant protocol.ID, op protocol.MemberOp, now time.Time) {
	if op == protocol.MemberAsk {
		if !c.f.cfg.Cluster.enabled() || c.f.cfg.Cluster.NATS == nil {
			op = protocol.MemberPlaced
		} else {
			cl.notices.asked = true
			c.f.notices.asked.Add(1)
			cl.log(c.f.log).Info("the call's record cannot be read: asking the call's other forwarders who serves it")
		}
	}
	c.notify(cl, participant, op, now)
}

// storeUnreadable: there is no store, or it is known to be away.
func (c *control) storeUnreadable() bool { return c.f.writer == nil || c.storeAway() }

// storeAway: the store is known to be unreachable, by a write that failed
// or by the liveness lease's last renewal (so a forwarder that has written
// nothing lately knows it too).
func (c *control) storeAway() bool {
	w := c.f.writer
	return w != nil && (w.Degraded() || c.f.live != nil && c.f.live.storeDown.Load())
}

// noticeAt is the at of this forwarder's next notice: the clock, but never
// earlier than the last one sent (a wall clock stepped back must not make
// our notices look old to the others).
func (c *control) noticeAt(now time.Time) time.Time {
	if now.Before(c.lastNotice) {
		return c.lastNotice
	}
	c.lastNotice = now
	return now
}

var (
	mNoticesIgnored = prometheus.NewDesc("callrelay_forwarder_member_notices_ignored_total",
		"Member notices not newer than the last one applied for their participant and forwarder (duplicates, overtaken or replayed): ignored.", nil, nil)
	mAsks = prometheus.NewDesc("callrelay_forwarder_member_asks_total",
		"Asks who serves a call: sent (a call begun here whose record could not be read) and answered (another forwarder's ask).", []string{"direction"}, nil)
	mAnswers = prometheus.NewDesc("callrelay_forwarder_member_ask_answers_total",
		"Placed notices sent in answer to other forwarders' asks.", nil, nil)
)

// describeNotices describes the notices' metrics and the other cluster
// messages' freshness (freshness.go).
func describeNotices(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{mNoticesIgnored, mAsks, mAnswers} {
		ch <- d
	}
	describeFreshness(ch)
}

func collectNotices(ch chan<- prometheus.Metric, st *Stats) {
	collectFreshness(ch, st.Freshness)
	s := st.Notices
	c := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	c(mNoticesIgnored, s.Ignored)
	c(mAsks, s.Asked, "sent")
	c(mAsks, s.Answered, "answered")
	c(mAnswers, s.Answers)
}
