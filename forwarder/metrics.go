package forwarder

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Collector exports the forwarder's counters to Prometheus, read from Stats
// at each scrape (the data path keeps its own atomics; nothing is added to
// the per-packet path). Label sets are bounded: drop reasons and
// directions, never calls or addresses.
func (f *Forwarder) Collector() prometheus.Collector { return &collector{f: f} }

type collector struct{ f *Forwarder }

var (
	mPackets = prometheus.NewDesc("callrelay_forwarder_packets_total",
		"Datagrams by direction: in and out on the media port, trunk_in and trunk_out between forwarders.", []string{"direction"}, nil)
	mBytes = prometheus.NewDesc("callrelay_forwarder_bytes_total",
		"Bytes by direction, as callrelay_forwarder_packets_total.", []string{"direction"}, nil)
	mDrops = prometheus.NewDesc("callrelay_forwarder_drops_total",
		"Datagrams dropped, by reason.", []string{"reason"}, nil)
	mSessions = prometheus.NewDesc("callrelay_forwarder_sessions", "Sessions served.", nil, nil)
	mCalls    = prometheus.NewDesc("callrelay_forwarder_calls", "Calls with at least one session here.", nil, nil)
	mPeers    = prometheus.NewDesc("callrelay_forwarder_peers", "Peer forwarders not taken for dead (heard on NATS or the trunk, or silent while the fault may be ours).", nil, nil)
	mDraining = prometheus.NewDesc("callrelay_forwarder_draining", "1 while draining.", nil, nil)
	mJoins    = prometheus.NewDesc("callrelay_forwarder_joins_total", "Sessions admitted.", nil, nil)
	mRefusals = prometheus.NewDesc("callrelay_forwarder_join_refusals_total", "Joins refused (not counting address-cookie challenges).", nil, nil)
	mNudges   = prometheus.NewDesc("callrelay_forwarder_rejoin_nudges_total", "Rejoin answers to media from unknown addresses.", nil, nil)
	mMigrate  = prometheus.NewDesc("callrelay_forwarder_migrations_total", "MigrateTo messages sent while draining.", nil, nil)
	mMoves    = prometheus.NewDesc("callrelay_forwarder_address_changes_total",
		"Sessions moved to a new address (those over a session's limit are drops_total{reason=\"address_change_limited\"}).", nil, nil)
	mCookies = prometheus.NewDesc("callrelay_forwarder_cookie_challenges_total",
		"Address checks answered (401 with a COOKIE); those over the forwarder's cap are drops_total{reason=\"cookie_rate_limited\"}.", nil, nil)
	mDegraded = prometheus.NewDesc("callrelay_statestore_degraded",
		"1 while the call state store is unreachable and changes are queued.", nil, nil)
	mQueued = prometheus.NewDesc("callrelay_statestore_queued_changes", "Call state changes waiting for the store.", nil, nil)
	mStErr  = prometheus.NewDesc("callrelay_statestore_errors_total",
		"Call state writes that failed for good (e.g. a corrupt record).", nil, nil)
	mStDrop = prometheus.NewDesc("callrelay_statestore_dropped_changes_total",
		"Changes not queued because the queue was full (repaired by the next reconcile).", nil, nil)
	mClBad = prometheus.NewDesc("callrelay_cluster_messages_rejected_total",
		"NATS notices or heartbeats that did not authenticate or parse.", nil, nil)
	mNATSErr = prometheus.NewDesc("callrelay_nats_errors_total", "NATS publish or subscribe errors.", nil, nil)

	mMuted = prometheus.NewDesc("callrelay_forwarder_audio_muted_packets_total",
		"Audio packets not forwarded because their sender is outside the call's audio forwarding set.", nil, nil)
	mOnsets = prometheus.NewDesc("callrelay_forwarder_loud_onsets_total",
		"Loud onsets seen (level steps and device LoudOnset messages).", nil, nil)
	mMeta      = prometheus.NewDesc("callrelay_forwarder_metadata_batches_total", "Metadata batches published to conductors.", nil, nil)
	mMetaBytes = prometheus.NewDesc("callrelay_forwarder_metadata_bytes_total", "Bytes of metadata published to conductors.", nil, nil)
	mDecisions = prometheus.NewDesc("callrelay_forwarder_decisions_total",
		"Conductor decisions by outcome: applied, stale (an older epoch: a fenced-off conductor), unknown_call.", []string{"outcome"}, nil)
	mSpeaker = prometheus.NewDesc("callrelay_forwarder_dominant_speaker_messages_total", "DominantSpeaker messages sent to devices.", nil, nil)
	mLapses  = prometheus.NewDesc("callrelay_forwarder_decision_lapses_total",
		"Calls whose conductor sent no fresh decision for the decision timeout: their audio went back to the default policy (every voice forwarded) until one came.", nil, nil)
	mLapsed = prometheus.NewDesc("callrelay_forwarder_calls_without_decision",
		"Calls on the default audio policy now because their decision lapsed (no fresh one for the decision timeout).", nil, nil)

	mLevel = prometheus.NewDesc("callrelay_forwarder_throttle_level",
		"Throttle level: 0 none, 1 new group calls refused, 2 also new one-to-one calls, 3 also new group members, 4 also second parties.", nil, nil)
	mLoad = prometheus.NewDesc("callrelay_forwarder_load",
		"Load signals at the last sample, 1 = at capacity (the worst one drives the throttle level).", []string{"signal"}, nil)
	mLevelChanges = prometheus.NewDesc("callrelay_forwarder_throttle_level_changes_total",
		"Throttle level changes, by the level entered.", []string{"level"}, nil)
	mRefusedClass = prometheus.NewDesc("callrelay_forwarder_join_refusals_by_class_total",
		"Joins refused for capacity, by class (unclassified: refused before being classified) and reason.", []string{"class", "reason"}, nil)
	mStoreLatency = prometheus.NewDesc("callrelay_statestore_write_seconds",
		"Latency of call-state writes to Redis (the attempt that applied each change).", nil, nil)
	mNATSRTT       = prometheus.NewDesc("callrelay_nats_rtt_seconds", "NATS round trips, measured every few seconds.", nil, nil)
	mAdmittedClass = prometheus.NewDesc("callrelay_forwarder_joins_by_class_total",
		"Joins admitted, by class (unclassified: admitted while not throttling).", []string{"class"}, nil)
	mNacked = prometheus.NewDesc("callrelay_forwarder_nacked_packets_total",
		"Packets receivers NACKed, by outcome: resent from the cache, not cached, bounded (resent to that receiver too often or too soon), over the leg's budget, over the receiver's share of what it was sent.", []string{"outcome"}, nil)
	mKeyReq = prometheus.NewDesc("callrelay_forwarder_key_frame_requests_total",
		"Key frame requests: from receivers (PLI/FIR), and sent by the relay to senders.", []string{"from"}, nil)
	mTargets = prometheus.NewDesc("callrelay_forwarder_sender_feedback_total",
		"REMB, TargetBitrate and SimulcastControl messages sent to senders.", nil, nil)
	mSubs = prometheus.NewDesc("callrelay_forwarder_subscriptions_total",
		"Video Subscription messages from devices, applied or rejected (malformed or not newer).", []string{"outcome"}, nil)
	mResent = prometheus.NewDesc("callrelay_forwarder_retransmitted_bytes_total", "Bytes resent to receivers from the NACK cache.", nil, nil)
	mProbe  = prometheus.NewDesc("callrelay_forwarder_probe_bytes_total", "Padding sent to receivers held below their subscriptions, to find out whether their downlink recovered.", nil, nil)
)

var nackOutcomeNames = [numNackOutcomes]string{"resent", "not_cached", "bounded", "over_budget", "over_share"}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{mPackets, mBytes, mDrops, mSessions, mCalls, mPeers, mDraining, mJoins,
		mRefusals, mNudges, mMigrate, mMoves, mCookies, mDegraded, mQueued, mStErr, mStDrop, mClBad, mNATSErr,
		mMuted, mOnsets, mMeta, mMetaBytes, mDecisions, mSpeaker, mLevel, mLoad, mLevelChanges, mRefusedClass, mAdmittedClass, mStoreLatency, mNATSRTT,
		mNacked, mKeyReq, mTargets, mSubs, mResent, mProbe, mSockBuf} {
		ch <- d
	}
	describePeering(ch)
	describeRegions(ch)
	describeAdmin(ch)
	describeResume(ch)
	describeStream(ch)
	describeNotices(ch)
	describeSenderMoves(ch, &c.f.moves)
	ch <- mLapses
	ch <- mLapsed
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.f.Stats()
	c.f.collectBuffers(ch)
	collectTraffic(ch, &s)
	constGauge(ch, mSessions, float64(s.Sessions))
	constGauge(ch, mCalls, float64(s.Calls))
	constGauge(ch, mPeers, float64(s.Peers))
	collectPeering(ch, s.Peering)
	collectRegions(ch, c.f.Regions())
	collectAdmin(ch, &c.f.adminCount)
	constGauge(ch, mDraining, b2f(s.Draining))
	constCounter(ch, mJoins, s.Joins)
	constCounter(ch, mRefusals, s.JoinErrors)
	constCounter(ch, mNudges, s.RejoinNudges)
	constCounter(ch, mMigrate, s.Migrations)
	constCounter(ch, mMoves, s.AddressChanges)
	constCounter(ch, mCookies, s.CookieChallenges)
	collectResume(ch, s.Resume)
	collectStream(ch, s.Stream)
	constGauge(ch, mDegraded, b2f(s.StateDegraded))
	constGauge(ch, mQueued, float64(s.StateQueued))
	constCounter(ch, mStErr, s.StateErrors)
	constCounter(ch, mStDrop, s.StateDropped)
	constCounter(ch, mClBad, s.ClusterBad)
	constCounter(ch, mNATSErr, s.NATSErrors)
	collectDecisions(ch, &s)
	collectNotices(ch, &s)
	collectMedia(ch, &s)
	ch <- c.f.storeLatency.metric(mStoreLatency)
	ch <- c.f.natsRTT.metric(mNATSRTT)
	collectLoad(ch, &s)
	collectSenderMoves(ch, &c.f.moves)
}

func constCounter(ch chan<- prometheus.Metric, d *prometheus.Desc, v uint64, labels ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
}

func constGauge(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// collectTraffic reports packets, bytes and drops.
func collectTraffic(ch chan<- prometheus.Metric, s *Stats) {
	constCounter(ch, mPackets, s.PacketsIn, "in")
	constCounter(ch, mPackets, s.PacketsOut, "out")
	constCounter(ch, mPackets, s.TrunkIn, "trunk_in")
	constCounter(ch, mPackets, s.TrunkOut, "trunk_out")
	constCounter(ch, mBytes, s.BytesIn, "in")
	constCounter(ch, mBytes, s.BytesOut, "out")
	constCounter(ch, mBytes, s.TrunkBytesIn, "trunk_in")
	constCounter(ch, mBytes, s.TrunkBytesOut, "trunk_out")
	for i, d := range s.Drops {
		constCounter(ch, mDrops, d, DropReason(i).String())
	}
}

// collectDecisions reports the conductor's decisions and what they did.
func collectDecisions(ch chan<- prometheus.Metric, s *Stats) {
	constCounter(ch, mMuted, s.AudioMuted)
	constCounter(ch, mOnsets, s.Onsets)
	constCounter(ch, mMeta, s.MetadataSent)
	constCounter(ch, mMetaBytes, s.MetadataBytes)
	constCounter(ch, mDecisions, s.Decisions, "applied")
	constCounter(ch, mDecisions, s.DecisionsStale, "stale")
	constCounter(ch, mDecisions, s.DecisionsUnknown, "unknown_call")
	constCounter(ch, mSpeaker, s.SpeakerUpdates)
	constCounter(ch, mLapses, s.DecisionLapses)
	constGauge(ch, mLapsed, float64(s.CallsLapsed))
}

// collectMedia reports retransmissions, key frames, targets and subscriptions.
func collectMedia(ch chan<- prometheus.Metric, s *Stats) {
	for i, n := range s.NackOutcomes {
		constCounter(ch, mNacked, n, nackOutcomeNames[i])
	}
	constCounter(ch, mKeyReq, s.KeyRequests, "receivers")
	constCounter(ch, mKeyReq, s.KeyFramesAsked, "relay")
	constCounter(ch, mTargets, s.TargetsSent)
	constCounter(ch, mSubs, s.Subscriptions, "applied")
	constCounter(ch, mSubs, s.SubsRejected, "rejected")
	constCounter(ch, mResent, s.ResentBytes)
	constCounter(ch, mProbe, s.ProbeBytes)
}

// collectLoad reports the throttle level, the load signals and admissions.
func collectLoad(ch chan<- prometheus.Metric, s *Stats) {
	constGauge(ch, mLevel, float64(s.ThrottleLevel))
	for i, v := range s.Load.values() {
		ch <- prometheus.MustNewConstMetric(mLoad, prometheus.GaugeValue, v, loadSignalNames[i])
	}
	for l, n := range s.LevelChanges {
		constCounter(ch, mLevelChanges, n, ThrottleLevel(l).String())
	}
	for class := range s.Refusals {
		for why, n := range s.Refusals[class] {
			constCounter(ch, mRefusedClass, n, joinClassName(JoinClass(class)), refusalNames[why])
		}
		constCounter(ch, mAdmittedClass, s.Admissions[class], joinClassName(JoinClass(class)))
	}
}
