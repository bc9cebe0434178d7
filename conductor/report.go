package conductor

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/protocol"
)

// The conductor's report (protocol.ConductorReport, README.md 7.8): every
// ReportConfig.Every the process publishes, on <prefix>.conductors, how
// fast it decided over the interval (p50, p99 and max of the time from
// the arrival of a call's first metadata not yet decided on to the
// decision made on it, and sent if it changed), how many decisions it sent, the calls and partitions it
// holds, and the decisions worth a line on a call's timeline: dominant
// speaker switches, and per receiver the video layer switches and the
// cuts the allocation made. Dashboards draw the latency and keep the
// events per call. The partitions' goroutines hand their figures to the
// reporter under its lock, once per call decided (not per packet).

// ReportConfig says how the conductor reports.
type ReportConfig struct {
	// Region is the operator's label for where this conductor runs
	// (protocol.ValidRegion; empty: not set).
	Region string
	// Every is the report interval (the latency figures cover one).
	Every time.Duration
}

// DefaultReportConfig reports every second without a region.
func DefaultReportConfig() ReportConfig { return ReportConfig{Every: time.Second} }

func (r *ReportConfig) validate() error {
	if err := protocol.ValidRegion(r.Region); err != nil {
		return fmt.Errorf("conductor: region (--region): %w", err)
	}
	if r.Every < 10*time.Millisecond || r.Every > time.Minute {
		return fmt.Errorf("conductor: report interval (--report-every) %s, want 10ms..1m", r.Every)
	}
	return nil
}

// maxLatencySamples bounds the latencies kept per interval; beyond it a
// sample replaces a kept one at random (reservoir sampling), so the
// quantiles stay fair at any decision rate.
const maxLatencySamples = 4096

// reporter collects one interval's figures and events.
type reporter struct {
	mu        sync.Mutex
	samples   []time.Duration
	seen      uint64 // samples offered this interval
	maxLat    time.Duration
	sent      uint32 // decisions sent this interval
	total     uint64 // decisions sent since the start
	events    []protocol.ConductorEvent
	lost      uint32
	calls     map[int]int // calls held, by partition
	rnd       uint64      // xorshift state for the reservoir
	seq       uint64
	started   time.Time
	latency   prometheus.Histogram
	published prometheus.Counter
	eventsOut *prometheus.CounterVec
	lostTotal prometheus.Counter
}

func newReporter(reg prometheus.Registerer, started time.Time) *reporter {
	r := &reporter{
		samples: make([]time.Duration, 0, 256), calls: map[int]int{}, rnd: uint64(started.UnixNano()) | 1, started: started,
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "callrelay_conductor_decision_latency_seconds",
			Help:    "From the arrival of a call's first metadata not yet decided on to the decision made (published if it changed): the conductor report's p50/p99.",
			Buckets: []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5}}),
		published: prometheus.NewCounter(prometheus.CounterOpts{Name: "callrelay_conductor_reports_total",
			Help: "Conductor reports published on <prefix>.conductors."}),
		eventsOut: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrelay_conductor_timeline_events_total",
			Help: "Timeline events reported, by kind (speaker, layer, layer_cut)."}, []string{"kind"}),
		lostTotal: prometheus.NewCounter(prometheus.CounterOpts{Name: "callrelay_conductor_timeline_events_lost_total",
			Help: "Timeline events not reported: more than a report holds (64) came in one interval."}),
	}
	if reg != nil {
		reg.MustRegister(r.latency, r.published, r.eventsOut, r.lostTotal)
	}
	return r
}

// decisionSent notes a decision published.
func (r *reporter) decisionSent() {
	if r == nil {
		return // a Conductor built by a test without New
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sent++
	r.total++
}

// decided notes the latency of a decision made on new metadata.
func (r *reporter) decided(d time.Duration) {
	if r == nil {
		return
	}
	d = max(d, 0)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.latency.Observe(d.Seconds())
	r.maxLat = max(r.maxLat, d)
	r.seen++
	if len(r.samples) < maxLatencySamples {
		r.samples = append(r.samples, d)
		return
	}
	r.rnd ^= r.rnd << 13
	r.rnd ^= r.rnd >> 7
	r.rnd ^= r.rnd << 17
	if i := r.rnd % r.seen; i < maxLatencySamples {
		r.samples[i] = d
	}
}

// event notes a timeline event; beyond a report's worth it is counted.
func (r *reporter) event(e protocol.ConductorEvent) {
	if r == nil {
		return // a Conductor built by a test without New
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.events) >= protocol.MaxConductorEvents {
		r.lost++
		r.lostTotal.Inc()
		return
	}
	r.events = append(r.events, e)
	r.eventsOut.WithLabelValues(e.Kind.String()).Inc()
}

// setCalls notes how many calls a partition holds (0: stopped).
func (r *reporter) setCalls(part, n int) {
	if r == nil {
		return // a Conductor built by a test without New
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if n == 0 {
		delete(r.calls, part)
		return
	}
	r.calls[part] = n
}

// take fills rep with the interval's figures and starts the next one.
func (r *reporter) take(rep *protocol.ConductorReport) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seq++
	rep.Seq, rep.Started, rep.Decisions, rep.InInterval, rep.EventsLost = r.seq, r.started, r.total, r.sent, r.lost
	rep.Calls = 0
	for _, n := range r.calls {
		rep.Calls += uint32(n)
	}
	rep.P50, rep.P99, rep.Max = 0, 0, r.maxLat.Truncate(time.Microsecond)
	if n := len(r.samples); n > 0 {
		slices.Sort(r.samples)
		rep.P50 = r.samples[(n-1)/2].Truncate(time.Microsecond)
		rep.P99 = r.samples[(n-1)*99/100].Truncate(time.Microsecond)
	}
	rep.Events = append(rep.Events[:0], r.events...)
	r.samples, r.events = r.samples[:0], r.events[:0]
	r.seen, r.maxLat, r.sent, r.lost = 0, 0, 0, 0
}

// reportName is the id the conductor reports under: its lease holder
// name (the --id and a per-start suffix, as the dashboard's partitions
// view shows it), the id cut short to fit 64 bytes.
func (c *Conductor) reportName() string {
	if len(c.owner) <= 64 {
		return c.owner
	}
	suffix := c.owner[len(c.cfg.ID):]
	return c.cfg.ID[:64-len(suffix)] + suffix
}

// report publishes the conductor report every Report.Every until ctx ends.
func (c *Conductor) report(ctx context.Context) {
	t := time.NewTicker(c.cfg.Report.Every)
	defer t.Stop()
	rep := protocol.ConductorReport{Conductor: c.reportName(), Region: c.cfg.Report.Region, Interval: c.cfg.Report.Every}
	subject := protocol.ConductorsSubject(c.cfg.Subject)
	var buf []byte
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.rep.take(&rep)
		rep.At, rep.Partitions = c.cfg.Now(), uint16(min(len(c.Owned()), 65535))
		var err error
		if buf, err = rep.Marshal(buf[:0], c.cfg.Key); err != nil {
			c.log.Error("encoding the conductor report", zap.Error(err))
			continue
		}
		if err := c.cfg.NATS.Publish(subject, buf); err != nil {
			c.m.natsErrors.Inc()
			continue
		}
		c.rep.published.Inc()
	}
}

// noteSent tells the reporter a decision of cs was published.
func (p *partition) noteSent(*callState) { p.c.rep.decisionSent() }

// noteDecided, at the end of each decision on cs, gives the reporter the
// time since the first metadata not yet decided on arrived, if any came:
// the decision is made (and sent, if it changed) when this returns.
func (p *partition) noteDecided(cs *callState) {
	if !cs.pendingSince.IsZero() {
		p.c.rep.decided(p.c.cfg.Now().Sub(cs.pendingSince))
		cs.pendingSince = time.Time{}
	}
}

// noteSpeaker reports a dominant speaker switch.
func (p *partition) noteSpeaker(cs *callState, to protocol.ID, now time.Time) {
	p.c.rep.event(protocol.ConductorEvent{Kind: protocol.ConductorSpeaker, At: now, Call: cs.id, Participant: to, Other: cs.dominant})
}

// noteLayers reports, per (receiver, sender) pair in both the old and the
// new allocation, a rank that changed: a cut when it went down (or to
// none), a switch when it went up. Called when the allocation changed
// (after allocateVideo swapped them: the old one is nextLayers).
func (p *partition) noteLayers(cs *callState, now time.Time) {
	cv := cs.video
	if cv == nil || len(cv.nextLayers) == 0 {
		return
	}
	type pair struct{ rx, tx protocol.ID }
	old := make(map[pair]uint8, len(cv.nextLayers))
	for _, l := range cv.nextLayers {
		old[pair{l.Receiver, l.Sender}] = l.Rank
	}
	for _, l := range cv.layers {
		from, ok := old[pair{l.Receiver, l.Sender}]
		if !ok || from == l.Rank {
			continue
		}
		kind := protocol.ConductorLayer
		if rankLevel(l.Rank) < rankLevel(from) {
			kind = protocol.ConductorCut
		}
		p.c.rep.event(protocol.ConductorEvent{Kind: kind, At: now, Call: cs.id, Participant: l.Receiver, Other: l.Sender, From: from, To: l.Rank})
	}
}

// rankLevel orders ranks from none (lowest) up.
func rankLevel(r uint8) int {
	if r == RankNone {
		return -1
	}
	return int(r)
}
