package forwarder

import "sync/atomic"

// DropReason says why a datagram was not forwarded.
type DropReason int

const (
	DropNotMedia          DropReason = iota // neither STUN nor RTP/RTCP (RFC 7983)
	DropUnknownSource                       // media from an address with no session
	DropMalformed                           // RTP/RTCP that does not parse, or unusable STUN
	DropOversized                           // larger than maxDatagram
	DropSTUNRateLimited                     // one source sent too many requests
	DropControlBusy                         // control queue full
	DropSendFailed                          // the kernel refused a send
	DropReadError                           // a receive call failed (counted per call, not per datagram)
	DropRelayControl                        // a device sent a CRLY relay instruction (only forwarders may)
	DropTrunkAuth                           // a trunk frame that does not authenticate or parse
	DropTrunkNoCall                         // a trunk frame for a call with no member here
	DropShedVideo                           // group-call video shed under overload
	DropUnsubscribed                        // trunk video of a sender not known here yet (no subscription can name it)
	DropReceiveBuffer                       // dropped by the kernel before a read: one of our sockets' receive buffers was full (Linux only)
	DropPolicedAudio                        // a member's audio over its audio cap (police.go)
	DropPolicedVideo                        // a member's video over its cap
	DropPolicedRTCP                         // a member's forwarded RTCP (sender reports, SDES...) over its cap
	DropCookieRateLimited                   // a request that needed an address check while the forwarder's answers to them were at their cap
	DropAddrChangeLimited                   // an address change over its session's limit (not answered)
	DropTrunkReplay                         // an authentic trunk frame seen before or older than its stream's replay window (trunk_replay.go)
	DropBadRTTReport                        // a member's CANDIDATE-RTTS that does not parse: the report is dropped, its request answered (placement_move.go)
	DropStaleRTTReport                      // a member's CANDIDATE-RTTS not newer, by its sequence, than the last one kept (a replayed keepalive): dropped, its request answered
	numDropReasons
)

var dropNames = [numDropReasons]string{
	"not_media", "unknown_source", "malformed", "oversized", "stun_rate_limited", "control_busy", "send_failed", "read_error",
	"relay_control", "trunk_auth", "trunk_no_call", "shed_video", "unsubscribed", "receive_buffer",
	"policed_audio", "policed_video", "policed_rtcp", "cookie_rate_limited", "address_change_limited",
	"trunk_replayed", "bad_rtt_report", "stale_rtt_report",
}

func (r DropReason) String() string { return dropNames[r] }

// counters belong to one reader; only it writes them, anyone may read them.
// The padding keeps readers' counters off each other's cache lines.
type counters struct {
	packetsIn, bytesIn, packetsOut, bytesOut atomic.Uint64
	trunkIn, trunkBytesIn                    atomic.Uint64 // frames from other forwarders
	trunkOut, trunkBytesOut                  atomic.Uint64 // frames to other forwarders
	nudges                                   atomic.Uint64 // Rejoin nudges sent
	audioMuted                               atomic.Uint64 // audio packets not forwarded: the member is outside the forwarding set
	onsetMsgs                                atomic.Uint64 // LoudOnset messages from devices
	nacked, keyRequests                      atomic.Uint64 // packets NACKed by receivers; PLI/FIR taken
	nackOut                                  [numNackOutcomes]atomic.Uint64
	resentBytes                              atomic.Uint64
	drops                                    [numDropReasons]atomic.Uint64
	_                                        [64]byte
}

// Stats is a snapshot of a forwarder's counters since it started.
type Stats struct {
	PacketsIn, BytesIn, PacketsOut, BytesOut uint64
	Drops                                    [numDropReasons]uint64
	Sessions, Calls                          int
	Joins, JoinErrors, AddressChanges        uint64
	CookieChallenges                         uint64 // 401s asking a device to prove its address (not refusals)

	TrunkIn, TrunkBytesIn, TrunkOut, TrunkBytesOut uint64
	RejoinNudges                                   uint64      // Rejoin answers to media from unknown addresses
	Migrations                                     uint64      // MigrateTo messages sent while draining
	Resume                                         ResumeStats // resumption tickets (resume.go)
	Stream                                         StreamStats // TCP and TLS legs (stream.go)
	Draining                                       bool

	// The call state store (zero without one).
	StateDegraded bool   // unreachable: changes are queued
	StateQueued   int    // changes waiting for the store
	StateErrors   uint64 // writes that failed for good (e.g. a corrupt record)
	StateDropped  uint64 // changes not queued because the queue was full
	// NATS and peers.
	ClusterBad   uint64 // notices or heartbeats that did not authenticate or parse
	ClusterDrops uint64 // cluster messages dropped because the control queue was full
	NATSErrors   uint64
	Peers        int         // peer forwarders not taken for dead
	Peering      PeerStats   // how they are heard and judged (liveness.go)
	Notices      NoticeStats // member notices: ignored ones, asks (notices.go)
	// Freshness counts stale heartbeats and messages on the wrong subject
	// (freshness.go).
	Freshness FreshnessStats

	// The conductor's decisions (audio.go, decisions.go).
	AudioMuted       uint64 // audio packets not forwarded: the member is outside the call's forwarding set
	OnsetMessages    uint64 // LoudOnset messages from devices
	Onsets           uint64 // loud onsets that opened a muted member's audio (level steps and device flags)
	MetadataSent     uint64 // metadata batches published to conductors
	MetadataBytes    uint64
	Decisions        uint64 // conductor decisions applied
	DecisionsStale   uint64 // decisions ignored: not newer than the last applied (an old epoch)
	DecisionsUnknown uint64 // decisions for calls not served here
	DecisionLapses   uint64 // calls whose conductor sent no fresh decision for Audio.DecisionTimeout: their audio went back to the default policy (every voice)
	CallsLapsed      int    // calls on the default policy for that reason now
	SpeakerUpdates   uint64 // DominantSpeaker messages sent to devices

	// Network adaptation (nack.go, feedback.go, adapt.go).
	Nacked         uint64                  // packets receivers NACKed
	NackOutcomes   [numNackOutcomes]uint64 // by outcome: resent, not cached, bounded (too often/soon), over the leg's budget, over the receiver's share
	KeyRequests    uint64                  // PLI/FIR from receivers
	ResentBytes    uint64                  // bytes resent from the NACK cache
	Probes         uint64                  // downlink probes begun (probe.go)
	ProbeBytes     uint64                  // padding sent in them
	KeyFramesAsked uint64                  // PLIs the relay sent to senders
	TargetsSent    uint64                  // TargetBitrate/SimulcastControl/REMB messages sent to senders
	Subscriptions  uint64                  // Subscription messages applied
	SubsRejected   uint64                  // Subscription messages malformed or not newer

	// Overload throttling (admission.go).
	ThrottleLevel ThrottleLevel
	Load          LoadSignals // the last sample's signals (1.0 = at capacity)
	// Refusals and Admissions by join class (index JoinClass; 0: refused
	// or admitted without being classified) and, for refusals, reason.
	Refusals      [numJoinClasses][numRefusalReasons]uint64
	Admissions    [numJoinClasses]uint64
	LevelChanges  [5]uint64 // by the level entered
	LookupsFailed uint64    // join classifications whose store read failed
}

// TotalDrops sums all drop reasons.
func (s Stats) TotalDrops() uint64 {
	var n uint64
	for _, d := range s.Drops {
		n += d
	}
	return n
}

func (s *Stats) add(c *counters) {
	s.PacketsIn += c.packetsIn.Load()
	s.BytesIn += c.bytesIn.Load()
	s.PacketsOut += c.packetsOut.Load()
	s.BytesOut += c.bytesOut.Load()
	s.TrunkIn += c.trunkIn.Load()
	s.TrunkBytesIn += c.trunkBytesIn.Load()
	s.TrunkOut += c.trunkOut.Load()
	s.TrunkBytesOut += c.trunkBytesOut.Load()
	s.RejoinNudges += c.nudges.Load()
	s.AudioMuted += c.audioMuted.Load()
	s.OnsetMessages += c.onsetMsgs.Load()
	s.Nacked += c.nacked.Load()
	s.KeyRequests += c.keyRequests.Load()
	s.ResentBytes += c.resentBytes.Load()
	for i := range s.NackOutcomes {
		s.NackOutcomes[i] += c.nackOut[i].Load()
	}
	for i := range s.Drops {
		s.Drops[i] += c.drops[i].Load()
	}
}

// RefusedThrottled is the number of joins of class c refused by the
// throttle.
func (s Stats) RefusedThrottled(c JoinClass) uint64 { return s.Refusals[c][refusedThrottled] }
