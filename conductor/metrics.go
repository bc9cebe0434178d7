package conductor

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the conductor's Prometheus series. Label sets are bounded:
// reasons only, never calls or partitions.
type metrics struct {
	owned         prometheus.Gauge
	takeovers     prometheus.Counter
	decisions     prometheus.Counter
	metadata      prometheus.Counter
	rejected      *prometheus.CounterVec
	switches      prometheus.Counter
	videoChanges  *prometheus.CounterVec
	switchLatency prometheus.Histogram
	decideSeconds prometheus.Histogram
	leaseErrors   prometheus.Counter
	storeErrors   prometheus.Counter
	natsErrors    prometheus.Counter
	ioDropped     prometheus.Counter
	checkpoints   prometheus.Counter
	restored      prometheus.Counter
	malformed     *prometheus.CounterVec
	storeDown     prometheus.Gauge
	behind        prometheus.Gauge
	storeLatency  prometheus.Histogram
	natsRTT       prometheus.Gauge
	deferred      prometheus.Counter
	down          atomic.Bool
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		owned: prometheus.NewGauge(prometheus.GaugeOpts{Name: "callrelay_conductor_partitions_owned",
			Help: "Partitions this conductor holds the lease of."}),
		takeovers: prometheus.NewCounter(prometheus.CounterOpts{Name: "callrelay_conductor_partition_takeovers_total",
			Help: "Partition leases acquired (at start and when taking over from another conductor)."}),
		decisions: prometheus.NewCounter(prometheus.CounterOpts{Name: "callrelay_conductor_decisions_total",
			Help: "Decisions published to forwarders (changes and periodic repeats)."}),
		metadata: prometheus.NewCounter(prometheus.CounterOpts{Name: "callrelay_conductor_metadata_batches_total",
			Help: "Metadata batches accepted from forwarders."}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrelay_conductor_metadata_rejected_total",
			Help: "Metadata rejected, by reason: malformed (bad encoding or key), wrong_partition, stale (not newer than the last batch taken from its forwarder: a replay or a duplicate), skewed (made over 10 s from this clock), unknown_call, queue_full."},
			[]string{"reason"}),
		switches: prometheus.NewCounter(prometheus.CounterOpts{Name: "callrelay_conductor_speaker_switches_total",
			Help: "Dominant speaker changes."}),
		videoChanges: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrelay_conductor_video_allocations_total",
			Help: "Video allocations that changed a call's decision, and of them the senders asked to split into simulcast layers or to go back to one stream."},
			[]string{"change"}),
		switchLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "callrelay_conductor_speaker_switch_latency_seconds",
			Help:    "From the start of the new dominant speaker's speech run to the switch.",
			Buckets: []float64{0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5}}),
		decideSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "callrelay_conductor_decide_seconds",
			Help:    "Time to decide one call that was published.",
			Buckets: prometheus.ExponentialBuckets(1e-6, 4, 10)}),
		leaseErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "callrelay_conductor_lease_errors_total",
			Help: "Lease operations that failed because the state store did not answer."}),
		storeErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "callrelay_conductor_store_errors_total",
			Help: "Call reads and checkpoint writes that failed because the state store did not answer."}),
		natsErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "callrelay_conductor_nats_errors_total",
			Help: "NATS publish or subscribe errors."}),
		ioDropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "callrelay_conductor_store_queue_dropped_total",
			Help: "Store reads or checkpoint writes dropped because the queue was full."}),
		checkpoints: prometheus.NewCounter(prometheus.CounterOpts{Name: "callrelay_conductor_checkpoints_total",
			Help: "Checkpoints written."}),
		restored: prometheus.NewCounter(prometheus.CounterOpts{Name: "callrelay_conductor_checkpoints_restored_total",
			Help: "Calls resumed from a checkpoint."}),
		malformed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrelay_conductor_malformed_records_total",
			Help: "Records read from the state store that did not decode (call, checkpoint); the call is decided without them."},
			[]string{"record"}),
		storeDown: prometheus.NewGauge(prometheus.GaugeOpts{Name: "callrelay_conductor_store_unreachable",
			Help: "1 while lease operations fail because the state store does not answer."}),
		storeLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "callrelay_conductor_store_op_seconds",
			Help:    "Latency of the conductor's Redis operations (leases, call reads, checkpoints).",
			Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1}}),
		natsRTT: prometheus.NewGauge(prometheus.GaugeOpts{Name: "callrelay_conductor_nats_rtt_seconds",
			Help: "The last NATS round trip, measured every 5 s."}),
		behind: prometheus.NewGauge(prometheus.GaugeOpts{Name: "callrelay_conductor_group_decision_stride",
			Help: "Group calls are decided every this many ticks (1: every tick; more when the conductor is behind)."}),
		deferred: prometheus.NewCounter(prometheus.CounterOpts{Name: "callrelay_conductor_group_decisions_deferred_total",
			Help: "Group-call decisions skipped for a tick because the conductor was behind."}),
	}
	if reg != nil {
		reg.MustRegister(m.owned, m.takeovers, m.decisions, m.metadata, m.rejected, m.switches, m.switchLatency,
			m.decideSeconds, m.leaseErrors, m.storeErrors, m.natsErrors, m.ioDropped, m.checkpoints, m.restored, m.malformed, m.storeDown,
			m.behind, m.deferred, m.storeLatency, m.natsRTT, m.videoChanges)
	}
	return m
}

// noteStoreDown records whether the store answers and returns the previous
// state, so the caller logs only the change.
func (m *metrics) noteStoreDown(down bool) bool {
	v := 0.0
	if down {
		v = 1
	}
	m.storeDown.Set(v)
	return m.down.Swap(down)
}
