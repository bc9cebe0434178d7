package forwarder

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/callrelay/callrelay/protocol"
)

// Freshness of cluster messages (README 7): each kind is ordered by the
// fields meant for it, and what is not newer is dropped and counted.
//
//   - MemberNotice: by at, per participant and forwarder (notices.go).
//   - ForwarderAnnounce: strictly newer (started, sequence) per forwarder,
//     and made within announceMaxAge of our clock; so a dead forwarder's
//     last heartbeat, replayed, neither keeps it alive for those that heard
//     the original nor brings it back for those that did not.
//   - CallDecision: by (epoch, sequence) and then at (decisions.go).
//   - Each subject carries only its own types (a call's: notices and
//     decisions; the forwarders': heartbeats and load reports); any other
//     type there is dropped and counted, and load reports, which the
//     forwarder does not use, are authenticated all the same, so a forged
//     one is counted as a bad message.
//   - Trunk frames: a replay window per sending stream (trunk_replay.go).

// announceMaxAge: a heartbeat made further than this from our clock is
// dropped (as the ask of notices.go, it takes clocks within 10 s).
const announceMaxAge = 10 * time.Second

// Subjects, for the wrong-type counter.
const (
	subjectCall = iota
	subjectForwarders
	numSubjects
)

var subjectNames = [numSubjects]string{"call", "forwarders"}

type freshCounters struct {
	beatsStale, beatsOld atomic.Uint64
	wrongType            [numSubjects]atomic.Uint64
}

// FreshnessStats counts cluster messages dropped as stale or out of place.
type FreshnessStats struct {
	HeartbeatsStale uint64              // ForwarderAnnounces not newer than the last taken from their forwarder, or from an older process: replayed or reordered
	HeartbeatsOld   uint64              // ForwarderAnnounces made over 10 s from our clock: old ones replayed, or a clock far off
	WrongType       [numSubjects]uint64 // messages of a type that does not belong on their subject (call, forwarders)
}

func (f *freshCounters) stats() FreshnessStats {
	s := FreshnessStats{HeartbeatsStale: f.beatsStale.Load(), HeartbeatsOld: f.beatsOld.Load()}
	for i := range s.WrongType {
		s.WrongType[i] = f.wrongType[i].Load()
	}
	return s
}

// beatMark is the newest heartbeat taken from a forwarder, kept after the
// forwarder was taken for dead (as long as deadPeers keeps it), so that its
// last heartbeat replayed does not bring it back.
type beatMark struct {
	started time.Time
	seq     uint64
}

// newerThan says whether a heartbeat is newer than m.
func (m beatMark) newerThan(started time.Time, seq uint64) bool {
	return started.After(m.started) || started.Equal(m.started) && seq > m.seq
}

// buried notes the last heartbeat of a peer taken for dead.
func (c *control) buried(id string, p *peer) {
	if p.last.ID == "" {
		return // heard on the trunk only
	}
	if c.goneBeats == nil {
		c.goneBeats = make(map[string]beatMark)
	}
	c.goneBeats[id] = beatMark{p.last.Started, p.last.Seq}
}

// revived says whether a heartbeat from a forwarder not among the peers is
// newer than the last one taken before it was taken for dead; a stale one
// is counted.
func (c *control) revived(a *protocol.ForwarderAnnounce) bool {
	m, ok := c.goneBeats[a.ID]
	if !ok || m.newerThan(a.Started, a.Seq) {
		delete(c.goneBeats, a.ID)
		return true
	}
	c.f.fresh.beatsStale.Add(1)
	return false
}

// announceFresh says whether a heartbeat made at is young enough to take.
func (c *control) announceFresh(at, now time.Time) bool {
	if d := now.Sub(at); d > announceMaxAge || d < -announceMaxAge {
		c.f.fresh.beatsOld.Add(1)
		return false
	}
	return true
}

var (
	mBeatsStale = prometheus.NewDesc("callrelay_forwarder_heartbeats_stale_total",
		"Forwarder heartbeats dropped: not newer than the last taken from their forwarder (replayed or reordered; reason not_newer) or made over 10 s from this forwarder's clock (an old one replayed, or a clock far off; reason too_old).", []string{"reason"}, nil)
	mWrongType = prometheus.NewDesc("callrelay_cluster_messages_wrong_type_total",
		"NATS messages of a type that does not belong on the subject they came on (a call's subject: notices and decisions; the forwarders': heartbeats and load reports): dropped.", []string{"subject"}, nil)
)

func describeFreshness(ch chan<- *prometheus.Desc) {
	ch <- mBeatsStale
	ch <- mWrongType
}

func collectFreshness(ch chan<- prometheus.Metric, s FreshnessStats) {
	c := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	c(mBeatsStale, s.HeartbeatsStale, "not_newer")
	c(mBeatsStale, s.HeartbeatsOld, "too_old")
	for i, v := range s.WrongType {
		c(mWrongType, v, subjectNames[i])
	}
}
