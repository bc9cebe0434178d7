package forwarder

import (
	"fmt"
	"time"

	"github.com/pion/stun/v3"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/protocol"
)

// Latency-aware placement (issue 20), the forwarder's part: it carries each
// member's reported RTTs to candidate forwarders to the call's conductor,
// and carries out the conductor's moves. It decides nothing itself.

// placementMoveSkew bounds how far a PlacementMove's time may lie from
// this forwarder's clock (a replayed one is older).
const placementMoveSkew = 10 * time.Second

// sessionRTTs is a member's latest CANDIDATE-RTTS report kept: the last
// one newer (by its sequence) than the one before it (README 3.2).
type sessionRTTs struct {
	r     protocol.CandidateRTTs
	tid   [stun.TransactionIDSize]byte // of the request that brought r
	fresh bool                         // not yet in a metadata batch
}

// placementState is a call's last conductor move taken.
type placementState struct {
	epoch, seq uint32
}

// takeRTTs keeps the report an authenticated request of s carried, for its
// next metadata tick, if it is newer than the last one kept: MESSAGE-
// INTEGRITY binds the report to the request, but nothing stops the very
// request being sent again, so a keepalive captured and replayed from the
// device's address would otherwise bring back an old report. A report that
// does not parse, or is not newer (replayed, or overtaken on the way), is
// dropped and counted, and the last one kept stays; the request is
// answered as ever. The request that brought the report kept, sent again
// (a retransmission: its answer was lost), is not read again nor counted.
func (c *control) takeRTTs(s *session, req *protocol.JoinRequest) {
	if req.RTTs == nil || s.rtts.r.N != 0 && req.TransactionID == s.rtts.tid {
		return
	}
	var r protocol.CandidateRTTs
	if err := protocol.ParseCandidateRTTs(req.RTTs, &r); err != nil {
		c.f.countDrop(DropBadRTTReport)
		return
	}
	if !r.Newer(&s.rtts.r) {
		c.f.countDrop(DropStaleRTTReport)
		return
	}
	s.rtts.r, s.rtts.tid, s.rtts.fresh = r, req.TransactionID, true
}

// maxRTTReportsPerTick bounds the reports one metadata tick carries (at
// most 201 bytes each), so that they never push a partition's batch past
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
