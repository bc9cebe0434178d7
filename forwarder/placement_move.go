package forwarder

import (
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/callrelay/callrelay/protocol"
)

// Latency-aware placement (issue 20), the forwarder's part: it carries each
// member's reported RTTs to candidate forwarders to the call's conductor,
// and carries out the conductor's moves. It decides nothing itself.

// placementMoveSkew bounds how far a PlacementMove's time may lie from
// this forwarder's clock (a replayed one is older).
const placementMoveSkew = 10 * time.Second

// sessionRTTs is a member's latest CANDIDATE-RTTS report.
type sessionRTTs struct {
	r     protocol.CandidateRTTs
	fresh bool // not yet in a metadata batch
}

// placementState is a call's last conductor move taken.
type placementState struct {
	epoch, seq uint32
}

// takeRTTs keeps the report an authenticated request of s carried, for its
// next metadata tick. A report that does not parse is dropped and counted;
// the request is answered as ever.
func (c *control) takeRTTs(s *session, v []byte) {
	if v == nil {
		return
	}
	if err := protocol.ParseCandidateRTTs(v, &s.rtts.r); err != nil {
		s.rtts.fresh = false
		c.f.countDrop(DropBadRTTReport)
		return
	}
	s.rtts.fresh = true
}

// maxRTTReportsPerTick bounds the reports one metadata tick carries (at
// most 194 bytes each), so that they never push a partition's batch past
// its 64 KiB; the others wait, fresh, for the next tick.
const maxRTTReportsPerTick = 64

// rttMeta puts s's fresh report into its metadata, and says whether it did
// (then the member is reported this tick even if quiet).
func (c *control) rttMeta(s *session, mm *protocol.MemberMetadata) bool {
	if !s.rtts.fresh || c.meta.rtts >= maxRTTReportsPerTick {
		return false
	}
	c.meta.rtts++
	s.rtts.fresh = false
	mm.Flags |= protocol.MetaRTT
	mm.RTTs = s.rtts.r
	return true
}

// onPlacementMove carries out a conductor's move of a member served here:
// the signed MigrateTo of an operator's move (admin.go), make-before-break.
// Moves are ordered per call by (epoch, sequence) and fenced like
// decisions: one from an epoch older than the call's decision, or not
// newer than the last move taken, or more than placementMoveSkew away from
// our clock, is stale (counted with the stale decisions).
func (c *control) onPlacementMove(data []byte, now time.Time) {
	var m protocol.PlacementMove
	if err := m.Unmarshal(data, c.f.cfg.Cluster.Key); err != nil {
		c.f.clusterBad.Add(1)
		return
	}
	cl := c.calls[m.Call]
	if cl == nil {
		return
	}
	s := cl.members[m.Participant]
	if s == nil {
		return // served by another forwarder of the call
	}
	last := cl.placement
	if cl.decision.applied && m.Epoch < cl.decision.d.Epoch || m.Epoch < last.epoch ||
		m.Epoch == last.epoch && m.Seq <= last.seq || m.At.Sub(now).Abs() > placementMoveSkew {
		c.f.decisionsStale.Add(1)
		return
	}
	cl.placement = placementState{epoch: m.Epoch, seq: m.Seq}
	p := c.peers[m.To]
	if m.To == c.f.cfg.Cluster.ID || p == nil || !p.last.Media.IsValid() || p.last.Draining {
		s.log.Info("conductor's move not taken: not a live, non-draining peer", zap.String("to", m.To), zap.String("conductor", m.Conductor))
		return
	}
	s.moveTo, s.moveUntil, s.migrateSent = p.last.Media, now.Add(adminMoveTimeout), time.Time{}
	why := "rtt"
	if m.Reason == protocol.MoveReasonRegion {
		why = "region"
	}
	c.event(cl.id, now, "migrate", s.participant, fmt.Sprintf("asked to move to %s by conductor %s (%s)", m.To, m.Conductor, why))
	s.log.Info("conductor moves the member", zap.String("to", m.To), zap.Stringer("addr", p.last.Media), zap.String("reason", why))
	c.adminMoves(now)
}
