package conductor

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/protocol"
)

// The conductor's side of placement: each call's members, the forwarder
// serving each (the one whose metadata names it) and their reported RTTs,
// placed again when reports change (at most every PlacementConfig.Every)
// and moved by PlacementMove when Replace says it pays.

// callPlacement is one call's placement state, the partition goroutine's.
type callPlacement struct {
	members  map[protocol.ID]*placedState
	dirty    bool // a report came since the last run
	lastRun  time.Time
	lastMove time.Time
	moveSeq  uint32
	// wanted: moves Replace asked for, since when (sent once they last
	// PlacementConfig.Sustain).
	wanted map[protocol.ID]wantedMove
}

type wantedMove struct {
	to    string
	since time.Time
}

type placedState struct {
	fwd      string
	rtt      map[string]time.Duration
	reported time.Time
}

// placementReportMaxAge: older reports are not placed by.
const placementReportMaxAge = time.Minute

type placementMetrics struct {
	moves    *prometheus.CounterVec
	runs     *prometheus.CounterVec
	worst    prometheus.Histogram
	entries  *prometheus.CounterVec
	fleetBad prometheus.Counter
}

func newPlacementMetrics(reg prometheus.Registerer) *placementMetrics {
	m := &placementMetrics{
		moves: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrelay_conductor_placement_moves_total",
			Help: "Members asked to move to another forwarder (PlacementMove), by reason: rtt (a clearly shorter worst path), region (their forwarder throttles or drains)."},
			[]string{"reason"}),
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrelay_conductor_placements_total",
			Help: "Placement runs by outcome: stay (no move worth it), move, avoided (a throttling region left out within the budget), throttled (kept: no alternative within it), none (no placement reaches every member)."},
			[]string{"outcome"}),
		worst: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "callrelay_conductor_placement_worst_path_seconds",
			Help:    "The worst member-to-member path (access RTTs + trunk RTT) of each placement computed.",
			Buckets: []float64{0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 1}}),
		entries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrelay_conductor_rtt_entries_dropped_total",
			Help: "Entries of members' RTT reports not used, by reason: unknown_forwarder (an address no live forwarder announces); bad_report_range, bad_report_triangle (the whole report dropped: an RTT below 0 or over 5 s, or one to a forwarder shorter than the trunk from the member's own forwarder allows; counted once per report)."},
			[]string{"reason"}),
		fleetBad: prometheus.NewCounter(prometheus.CounterOpts{Name: "callrelay_conductor_fleet_messages_rejected_total",
			Help: "Heartbeats and load reports on <prefix>.forwarders dropped: they did not authenticate or parse, or were stale (not newer than the last taken from their forwarder, or made over 10 s from this clock: replayed)."}),
	}
	if reg != nil {
		reg.MustRegister(m.moves, m.runs, m.worst, m.entries, m.fleetBad)
	}
	return m
}

// observePlacement takes what one metadata member says about placement:
// which forwarder serves it (fwd, the batch's) and its RTT report.
func (p *partition) observePlacement(cs *callState, fwd string, mm *protocol.MemberMetadata, now time.Time) {
	pl := cs.place
	if pl == nil {
		pl = &callPlacement{members: make(map[protocol.ID]*placedState)}
		cs.place = pl
	}
	st := pl.members[mm.Participant]
	if mm.Flags&protocol.MetaLeft != 0 {
		if st != nil && st.fwd == fwd { // not a member that has moved on
			delete(pl.members, mm.Participant)
			pl.dirty = true
		}
		return
	}
	if st == nil {
		if len(pl.members) >= 255 {
			return
		}
		st = &placedState{}
		pl.members[mm.Participant] = st
	}
	if st.fwd != fwd {
		st.fwd, pl.dirty = fwd, true
	}
	if mm.Flags&protocol.MetaRTT == 0 {
		return
	}
	view := p.c.fleet.View(now)
	st.rtt = make(map[string]time.Duration, mm.RTTs.N)
	for _, e := range mm.RTTs.Entries[:mm.RTTs.N] {
		id := fwd
		if !e.Via {
			var ok bool
			if id, ok = view.ByAddr[e.Addr]; !ok {
				p.c.pm.entries.WithLabelValues("unknown_forwarder").Inc()
				continue
			}
		}
		st.rtt[id] = e.RTT
	}
	st.reported, pl.dirty = now, true
	if why := badReport(p.c.cfg.Placement, view, fwd, st.rtt); why != "" {
		p.c.pm.entries.WithLabelValues("bad_report_" + why).Inc()
		st.rtt = nil // placed as if it reported nothing: it stays where it is
	}
}

// badReport checks a member's report against the fleet (BadReport), with
// only the forwarders it names.
func badReport(cfg PlacementConfig, view *FleetView, fwd string, rtt map[string]time.Duration) string {
	in := PlacementInput{Forwarders: make(map[string]PlacedForwarder, len(rtt)+1), RegionRTT: view.RegionRTT}
	for id := range rtt {
		if fw, ok := view.Forwarders[id]; ok {
			in.Forwarders[id] = PlacedForwarder{Region: fw.Region}
		}
	}
	if fw, ok := view.Forwarders[fwd]; ok {
		in.Forwarders[fwd] = PlacedForwarder{Region: fw.Region}
	}
	return BadReport(cfg, &in, &PlacedMember{Current: fwd, RTT: rtt})
}

// place runs placement for cs when a report changed it, and sends the
// moves Replace asks for.
func (p *partition) place(cs *callState, now time.Time) {
	pl, cfg := cs.place, p.c.cfg.Placement
	if pl == nil || !pl.dirty || now.Sub(pl.lastRun) < cfg.Every || len(pl.members) < 2 {
		return
	}
	pl.dirty, pl.lastRun = false, now
	view := p.c.fleet.View(now)
	in := PlacementInput{Forwarders: make(map[string]PlacedForwarder, len(view.Forwarders)),
		RegionRTT: view.RegionRTT, RegionLevels: view.RegionLevels}
	for id, fw := range view.Forwarders {
		in.Forwarders[id] = PlacedForwarder{Region: fw.Region, Level: fw.Level, Draining: fw.Draining}
	}
	for id, st := range pl.members {
		m := PlacedMember{ID: id, Current: st.fwd}
		if now.Sub(st.reported) <= placementReportMaxAge {
			m.RTT = st.rtt
		}
		in.Members = append(in.Members, m)
	}
	res, err := Place(cfg, &in)
	if err != nil {
		p.c.pm.runs.WithLabelValues("none").Inc()
		return
	}
	p.c.pm.worst.Observe(res.Worst.Seconds())
	moves := pl.sustained(Replace(cfg, &in, res, pl.lastMove, now), cfg.Sustain, now)
	switch {
	case len(moves) > 0:
		p.c.pm.runs.WithLabelValues("move").Inc()
	case res.Avoided:
		p.c.pm.runs.WithLabelValues("avoided").Inc()
	case res.Throttled:
		p.c.pm.runs.WithLabelValues("throttled").Inc()
	default:
		p.c.pm.runs.WithLabelValues("stay").Inc()
	}
	if len(moves) == 0 {
		return
	}
	pl.lastMove = now
	for id, to := range moves {
		p.sendMove(cs, id, to, moveReason(in.Forwarders[pl.members[id].fwd], view, cfg), res.Worst, now)
	}
}

// sustained returns the moves asked for, to the same forwarder, for at
// least sustain, and remembers the others; a move no longer asked for is
// forgotten.
func (pl *callPlacement) sustained(moves map[protocol.ID]string, sustain time.Duration, now time.Time) map[protocol.ID]string {
	if pl.wanted == nil {
		pl.wanted = make(map[protocol.ID]wantedMove)
	}
	for id, w := range pl.wanted {
		if moves[id] != w.to {
			delete(pl.wanted, id)
		}
	}
	var out map[protocol.ID]string
	for id, to := range moves {
		w, ok := pl.wanted[id]
		if !ok {
			w = wantedMove{to: to, since: now}
			pl.wanted[id] = w
		}
		if now.Sub(w.since) >= sustain {
			if out == nil {
				out = make(map[protocol.ID]string)
			}
			out[id] = to
		}
	}
	if len(out) > 0 {
		clear(pl.wanted)
	}
	return out
}

// moveReason: region when the member's forwarder throttles or drains, else
// RTT.
func moveReason(from PlacedForwarder, view *FleetView, cfg PlacementConfig) uint8 {
	if from.Draining || max(from.Level, view.RegionLevels[from.Region]) >= cfg.AvoidLevel {
		return protocol.MoveReasonRegion
	}
	return protocol.MoveReasonRTT
}

func (p *partition) sendMove(cs *callState, id protocol.ID, to string, reason uint8, worst time.Duration, now time.Time) {
	cs.place.moveSeq++
	m := protocol.PlacementMove{Call: cs.id, Participant: id, Partition: uint16(p.part), Epoch: p.epoch.Load(),
		Seq: cs.place.moveSeq, At: now, Reason: reason, Conductor: p.c.cfg.ID, To: to}
	raw, err := m.Marshal(nil, p.c.cfg.Key)
	if err != nil {
		p.c.log.Error("encoding placement move", zap.Stringer("call", cs.id), zap.Error(err))
		return
	}
	if err := p.c.cfg.NATS.Publish(cs.subject, raw); err != nil {
		p.c.m.natsErrors.Inc()
		return
	}
	label := "rtt"
	if reason == protocol.MoveReasonRegion {
		label = "region"
	}
	p.c.pm.moves.WithLabelValues(label).Inc()
	p.c.log.Info("member moved", zap.Stringer("call", cs.id), zap.Stringer("participant", id),
		zap.String("from", cs.place.members[id].fwd), zap.String("to", to), zap.String("reason", label), zap.Duration("worst_path", worst))
}
