package forwarder

import (
	"slices"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/protocol"
)

// Trunk RTTs and peer regions (README 6.3, docs/architecture.md "Regions:
// the network").
//
// Every trunk keepalive is also a probe: the control goroutine notes when
// it sent each one, and a peer that takes it answers with an echo (sent to
// the trunk the peer announced in its heartbeat, never to the datagram's
// source) saying how long it held it. The sample is (echo arrival -
// keepalive departure) - hold; arrival and hold are both measured from when
// a trunk reader read the frame, so the heartbeat tick that hands frames to
// the control goroutine adds nothing. Samples are smoothed per peer as TCP
// does (RFC 6298: 1/8 and 1/4), and the RTT to a region is the smallest of
// its live peers'.
//
// Echoes are trunk frames: a forged one fails the tag and a replayed one
// the replay window (both counted as trunk drops) before it is read. An
// authentic echo is taken only if it answers a keepalive of this process
// still in the ring of the last probeRing sent, newer than the last taken
// from its echoer, with a hold shorter than the time it took; otherwise it
// is dropped and counted by reason.
//
// Peers' regions and throttle levels come from their load reports (taken
// when fresh: of the peer's current process, newer than the last), and
// from echoes for the region. Admission reads them (region_spill.go).

// probeRing is how many keepalives' departures are kept for matching
// echoes (64 heartbeats).
const probeRing = 64

// echoOutcome says what became of an echo, or that one was sent.
type echoOutcome uint8

const (
	echoSent        echoOutcome = iota // echoes this forwarder sent
	echoTaken                          // a sample taken
	echoMalformed                      // authentic frame, invalid echo payload
	echoUnmatched                      // not an answer to a keepalive of this process still remembered
	echoDuplicate                      // not newer than the last taken from its echoer
	echoImplausible                    // hold longer than the round trip, or no time at all
	numEchoOutcomes
)

var echoOutcomeNames = [numEchoOutcomes]string{"sent", "taken", "malformed", "unmatched", "duplicate", "implausible"}

// peerRegion is what this forwarder knows of a peer's place and load.
type peerRegion struct {
	region        string
	level         ThrottleLevel
	hasLevel      bool
	reportStarted time.Time // the process and sequence of the last report taken
	reportSeq     uint64
	srtt, rttvar  time.Duration
	sampled       time.Time // last sample; zero: none
	echoSeq       uint64    // the last keepalive sequence an echo of it was taken for
}

// regionState is the control goroutine's, except view and the counters.
type regionState struct {
	sent [probeRing]struct {
		seq uint64
		at  time.Time
	}
	frame  []byte
	peers  map[string]*peerRegion
	view   atomic.Pointer[[]protocol.RegionRTT] // per peer region, for reports, Stats and metrics
	echoes [numEchoOutcomes]atomic.Uint64
	spill  [numSpillOutcomes]atomic.Uint64 // region_spill.go
	// spillTo counts the joins spilled to each other region (region_spill.go).
	spillTo spillCounts
}

// peerRegionOf returns the record of peer id, making it if needed.
func (r *regionState) peerRegionOf(id string) *peerRegion {
	if r.peers == nil {
		r.peers = make(map[string]*peerRegion)
	}
	p := r.peers[id]
	if p == nil {
		p = &peerRegion{}
		r.peers[id] = p
	}
	return p
}

// noteKeepaliveSent remembers when keepalive seq left (sendKeepalives).
func (c *control) noteKeepaliveSent(seq uint64, at time.Time) {
	s := &c.f.live.regions.sent[seq%probeRing]
	s.seq, s.at = seq, at
}

// echoKeepalive answers a keepalive taken from k's sender (onBeat), to the
// trunk it announced; a peer heard only on the trunk so far gets none.
func (c *control) echoKeepalive(k *protocol.TrunkKeepalive, b *trunkBeat) {
	f := c.f
	p := c.peers[k.Forwarder]
	if p == nil || !p.last.Trunk.IsValid() || p.last.Trunk == f.trunkAdvertise || !reachableFrom(p.last.Trunk, f.trunkV6) {
		return
	}
	rs := &f.live.regions
	hold := max(f.cfg.Now().Sub(time.Unix(0, b.at)), 0)
	e := protocol.TrunkEcho{Forwarder: f.cfg.Cluster.ID, Region: f.cfg.Cluster.Region, Started: k.Started, Seq: k.Seq,
		Hold: min(hold, protocol.MaxEchoHold)}
	if rs.frame == nil {
		rs.frame = make([]byte, 0, protocol.TrunkOverhead+protocol.MaxTrunkEcho)
	}
	frame, err := protocol.SealTrunkEcho(c.trunkCodec, rs.frame[:0], &e)
	if err != nil {
		return // our id and region were valid when the forwarder started
	}
	if _, err := f.trunkConns[0].WriteToUDPAddrPort(frame, p.last.Trunk); err != nil {
		f.countDrop(DropSendFailed)
		return
	}
	rs.echoes[echoSent].Add(1)
}

// onEcho takes an echo handed over by a trunk reader.
func (c *control) onEcho(b *trunkBeat) {
	rs := &c.f.live.regions
	e, err := protocol.ParseTrunkEcho(&b.hdr, b.b[:b.n])
	if err != nil {
		rs.echoes[echoMalformed].Add(1)
		return
	}
	s := rs.sent[e.Seq%probeRing]
	if e.Started.UnixMilli() != c.started.UnixMilli() || s.seq != e.Seq || s.at.IsZero() {
		rs.echoes[echoUnmatched].Add(1)
		return
	}
	p := rs.peerRegionOf(e.Forwarder)
	if e.Seq <= p.echoSeq {
		rs.echoes[echoDuplicate].Add(1)
		return
	}
	took := time.Unix(0, b.at).Sub(s.at)
	sample := took - e.Hold
	if sample <= 0 {
		rs.echoes[echoImplausible].Add(1)
		return
	}
	p.echoSeq, p.region = e.Seq, e.Region
	if p.sampled.IsZero() {
		p.srtt, p.rttvar = sample, sample/2
	} else {
		p.rttvar = (3*p.rttvar + (p.srtt - sample).Abs()) / 4
		p.srtt = (7*p.srtt + sample) / 8
	}
	p.sampled = time.Unix(0, b.at)
	rs.echoes[echoTaken].Add(1)
}

// onPeerReport takes a peer's load report for its region and level, if it
// is of the peer's current process and newer than the last taken.
func (c *control) onPeerReport(r *protocol.LoadReport) {
	if r.Forwarder == c.f.cfg.Cluster.ID || c.peers[r.Forwarder] == nil {
		return
	}
	p := c.f.live.regions.peerRegionOf(r.Forwarder)
	switch {
	case r.Started.Before(p.reportStarted):
		return
	case r.Started.Equal(p.reportStarted) && r.Seq <= p.reportSeq:
		return
	}
	p.reportStarted, p.reportSeq = r.Started, r.Seq
	p.level, p.hasLevel = ThrottleLevel(r.Level), true
	var admitted uint32
	for _, n := range r.Admitted {
		admitted += n
	}
	c.peers[r.Forwarder].referred.report(r.Started, admitted, c.f.cfg.Now()) // referrals.go
	if r.HasOps {
		p.region = r.Ops.Region
	}
}

// rttFresh is how long a peer's smoothed RTT stands without a new sample.
func (c *control) rttFresh() time.Duration { return 2 * c.f.cfg.Cluster.PeerTimeout }

// publishRTTs forgets the records of peers no longer known and publishes
// the RTT to each peer region: the smallest smoothed RTT of its live peers
// sampled within rttFresh.
func (c *control) publishRTTs(now time.Time) {
	rs := &c.f.live.regions
	best := map[string]protocol.RegionRTT{}
	for id, p := range rs.peers {
		if c.peers[id] == nil {
			delete(rs.peers, id)
			continue
		}
		if p.region == "" || p.sampled.IsZero() || now.Sub(p.sampled) > c.rttFresh() {
			continue
		}
		if b, ok := best[p.region]; !ok || p.srtt < b.RTT {
			best[p.region] = protocol.RegionRTT{Region: p.region, RTT: p.srtt.Truncate(time.Microsecond), Dev: p.rttvar.Truncate(time.Microsecond)}
		}
	}
	rows := make([]protocol.RegionRTT, 0, len(best))
	for _, b := range best {
		rows = append(rows, b)
	}
	slices.SortFunc(rows, func(a, b protocol.RegionRTT) int {
		switch {
		case a.Region < b.Region:
			return -1
		case a.Region > b.Region:
			return 1
		}
		return 0
	})
	if len(rows) > protocol.MaxRegionRTTs {
		c.f.log.Warn("more peer regions than a load report carries: the last are left out", zap.Int("regions", len(rows)))
		rows = rows[:protocol.MaxRegionRTTs]
	}
	rs.view.Store(&rows)
}

// regionRTT is the published RTT to region (false: not measured).
func (r *regionState) regionRTT(region string) (time.Duration, bool) {
	v := r.view.Load()
	if v == nil {
		return 0, false
	}
	for _, x := range *v {
		if x.Region == region {
			return x.RTT, true
		}
	}
	return 0, false
}

// RegionStats is how this forwarder sees the other regions.
type RegionStats struct {
	// RTTs is the trunk RTT to each peer region, as last published.
	RTTs []protocol.RegionRTT
	// Echoes counts trunk echoes by outcome: sent, taken, malformed,
	// unmatched, duplicate, implausible.
	Echoes [numEchoOutcomes]uint64
	// Spill counts refused joins by where they were sent (region_spill.go).
	Spill [numSpillOutcomes]uint64
	// SpillTo counts the joins spilled to each other region, as the load
	// report's spill-over section carries them.
	SpillTo []protocol.RegionSpill
}

// Regions returns the forwarder's region statistics (zero on a lone
// forwarder).
func (f *Forwarder) Regions() RegionStats {
	var s RegionStats
	if f.live == nil {
		return s
	}
	rs := &f.live.regions
	if v := rs.view.Load(); v != nil {
		s.RTTs = slices.Clone(*v)
	}
	for i := range s.Echoes {
		s.Echoes[i] = rs.echoes[i].Load()
	}
	for i := range s.Spill {
		s.Spill[i] = rs.spill[i].Load()
	}
	s.SpillTo = rs.spillTo.snapshot()
	return s
}

// EchoOutcome names the index of RegionStats.Echoes.
func EchoOutcome(name string) int { return slices.Index(echoOutcomeNames[:], name) }

var (
	mTrunkRTT = prometheus.NewDesc("callrelay_forwarder_trunk_rtt_seconds",
		"Round-trip time over the trunk to each peer region: the smallest smoothed RTT of its live forwarders, measured by keepalive echoes.", []string{"region"}, nil)
	mTrunkEchoes = prometheus.NewDesc("callrelay_forwarder_trunk_echoes_total",
		"Trunk echoes by outcome: sent, taken (an RTT sample), malformed, unmatched (no keepalive of this process it answers), duplicate, implausible (hold longer than the round trip).", []string{"outcome"}, nil)
	mRegionSpill = prometheus.NewDesc("callrelay_forwarder_region_referrals_total",
		"Joins refused for load, by where they were sent: same_region (a peer of this region with room), spilled (the nearest region with room within the latency budget), below_spill_level, over_budget, unmeasured, no_room (none named: the device retries later).", []string{"outcome"}, nil)
)

func describeRegions(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{mTrunkRTT, mTrunkEchoes, mRegionSpill} {
		ch <- d
	}
}

func collectRegions(ch chan<- prometheus.Metric, s RegionStats) {
	for _, r := range s.RTTs {
		ch <- prometheus.MustNewConstMetric(mTrunkRTT, prometheus.GaugeValue, r.RTT.Seconds(), r.Region)
	}
	for i, n := range s.Echoes {
		ch <- prometheus.MustNewConstMetric(mTrunkEchoes, prometheus.CounterValue, float64(n), echoOutcomeNames[i])
	}
	for i, n := range s.Spill {
		ch <- prometheus.MustNewConstMetric(mRegionSpill, prometheus.CounterValue, float64(n), spillOutcomeNames[i])
	}
}
