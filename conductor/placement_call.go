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
//
// First placement (PlacementConfig.First): a member new to the call is
// where its device's multi-connect race put it, the forwarder nearest to
// that device alone, which need not be the call's best. It is placed at
// the first decision tick after its RTT report comes, not after the
// re-placement hysteresis (Every, Sustain, MinGain, Cooldown), which is
// there so that a call never flaps mid-call, and is moved at once: within
// a few hundred ms of its join, before much of its media flows, a move
// costs least. The rule:
//   - new: its join is less than First old, by the call record read when
//     the conductor took the call (its first metadata here if it joined
//     later). A call the conductor took over, whose members joined long
//     ago, has no new member; a call whose record could not be read (the
//     store down) has none either: it cannot tell a new call from an old.
//   - when: at the first decision tick after a new member's report, once
//     every new member has sent two reports (the first, sent as its race
//     is won, names only the winner: placing by it would place the call
//     by half a picture; the client sends the second once the losers
//     have answered) or firstGather has passed since its join.
//   - run: Place over the call with the new members as they reported and
//     everyone else held on its forwarder (or on the one it is moving to),
//     so a join moves only the joiner; Place's rules hold (a report that
//     cannot be true is dropped, and nobody is placed further from its
//     own forwarder, by its own report, than Budget).
//   - move: each new member Place puts elsewhere is sent a PlacementMove
//     at once, and is new no more: at most one first move per member. A
//     new member left where it is stays new, so a fuller report later in
//     the window may still move it.
//   - then: re-placement runs as before, once the first moves are done
//     (the members seen on their new forwarders, or firstMoveWait gone).
//     First moves do not start the call's cool-down.

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
	// record: the members' join times in the call record, read when the
	// conductor took the call (nil: not read, no member is new);
	// firstRun: the last first placement; lastJoin: the latest join seen
	// (an upper bound).
	record             map[protocol.ID]time.Time
	firstRun, lastJoin time.Time
}

type wantedMove struct {
	to    string
	since time.Time
}

type placedState struct {
	fwd      string
	rtt      map[string]time.Duration
	reported time.Time
	// joined: when it joined (first placement); settled: moved by the
	// first placement, so new no more; reports: RTT reports taken.
	joined  time.Time
	settled bool
	reports int
	// movedTo, movedAt: its first move, until its metadata comes from
	// there.
	movedTo string
	movedAt time.Time
}

// placementReportMaxAge: older reports are not placed by.
const placementReportMaxAge = time.Minute

// firstMoveWait bounds how long re-placement waits for first moves to be
// done (a member's join elsewhere takes a round trip or two).
const firstMoveWait = 2 * time.Second

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
			Help: "Members asked to move to another forwarder (PlacementMove), by reason: first (a new member's first placement), rtt (a clearly shorter worst path), region (their forwarder throttles or drains)."},
			[]string{"reason"}),
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callrelay_conductor_placements_total",
			Help: "Placement runs by outcome: stay (no move worth it), move, avoided (a throttling region left out within the budget), throttled (kept: no alternative within it), none (no placement reaches every member); first placements of new members: first_move, first_stay."},
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
		switch {
		case st == nil || st.fwd != fwd: // a member that has moved on
		case st.movedTo != "": // leaving for where its first move sends it
			st.fwd, st.movedTo, pl.dirty = st.movedTo, "", true
		default:
			delete(pl.members, mm.Participant)
			if pl.record != nil { // back later (a failover, a rejoin): joined then, not new again
				pl.record[mm.Participant] = st.joined
			}
			pl.dirty = true
		}
		return
	}
	if st == nil {
		if len(pl.members) >= 255 {
			return
		}
		st = &placedState{joined: now}
		if j, ok := pl.record[mm.Participant]; ok {
			st.joined = j
		}
		if st.joined.After(pl.lastJoin) {
			pl.lastJoin = st.joined
		}
		pl.members[mm.Participant] = st
	}
	if st.fwd != fwd {
		st.fwd, pl.dirty = fwd, true
		if fwd == st.movedTo {
			st.movedTo = "" // its first move is done
		}
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
	st.reports++
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

// takeRecord keeps the members' join times from the call record read when
// the conductor took the call (first placement); members seen before it
// came joined when it says.
func (cs *callState) takeRecord(joined map[protocol.ID]time.Time) {
	if cs.place == nil {
		cs.place = &callPlacement{members: make(map[protocol.ID]*placedState)}
	}
	pl := cs.place
	pl.record = joined
	for id, st := range pl.members {
		if j, ok := joined[id]; ok && j.Before(st.joined) {
			st.joined = j
		}
	}
}

// isNew says whether st is placed by the first placement now.
func (pl *callPlacement) isNew(st *placedState, now time.Time, first time.Duration) bool {
	return pl.record != nil && !st.settled && first > 0 && now.Sub(st.joined) < first
}

// firstGather bounds how long the first placement waits for a new
// member's second report: a device sends it as soon as its race's losers
// have answered, within the client's LoserGrace (500 ms), and a metadata
// tick (100 ms) brings it; a device with one candidate has no second
// report to send before its next keepalive.
const firstGather = 600 * time.Millisecond

// firstDue: a new member reported since the last first placement, and
// no new member whose report names one forwarder waits for its second
// report (the first names only the race's winner) for less than
// firstGather (at most half the window). Checked every decision tick
// while a member may be new, whether or not a report came.
func (pl *callPlacement) firstDue(now time.Time, first time.Duration) bool {
	if now.Sub(pl.lastJoin) >= first {
		return false // nobody joined within the window
	}
	due := false
	for _, st := range pl.members {
		if !pl.isNew(st, now, first) {
			continue
		}
		if len(st.rtt) < 2 && st.reports < 2 && now.Sub(st.joined) < min(firstGather, first/2) {
			return false
		}
		due = due || st.rtt != nil && st.reported.After(pl.firstRun)
	}
	return due
}

// inFlight: a first move is under way.
func (pl *callPlacement) inFlight(now time.Time) bool {
	for _, st := range pl.members {
		if st.movedTo != "" && now.Sub(st.movedAt) < firstMoveWait {
			return true
		}
	}
	return false
}

// place runs placement for cs when a report changed it: the first
// placement of its new members at once, re-placement at most every
// PlacementConfig.Every and not while first moves are under way.
func (p *partition) place(cs *callState, now time.Time) {
	pl, cfg := cs.place, p.c.cfg.Placement
	if pl == nil || len(pl.members) < 2 {
		return
	}
	first, again := pl.firstDue(now, cfg.First), pl.dirty && now.Sub(pl.lastRun) >= cfg.Every
	if !first && !again {
		return
	}
	view := p.c.fleet.View(now)
	fwds := make(map[string]PlacedForwarder, len(view.Forwarders))
	for id, fw := range view.Forwarders {
		fwds[id] = PlacedForwarder{Region: fw.Region, Level: fw.Level, Draining: fw.Draining}
	}
	if first {
		p.placeFirst(cs, view, fwds, now)
	}
	if !again || pl.inFlight(now) {
		return // still dirty: re-placed once due
	}
	pl.dirty, pl.lastRun = false, now
	in := PlacementInput{Forwarders: fwds, RegionRTT: view.RegionRTT, RegionLevels: view.RegionLevels}
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
		reason := moveReason(in.Forwarders[pl.members[id].fwd], view, cfg)
		p.sendMove(cs, id, to, reason, reasonLabel(reason), res.Worst, now)
	}
}

// placeFirst is the first placement (see the top of this file): the new
// members as they reported, the others held where they are or are going,
// and each new member Place puts elsewhere moved at once.
func (p *partition) placeFirst(cs *callState, view *FleetView, fwds map[string]PlacedForwarder, now time.Time) {
	pl, cfg := cs.place, p.c.cfg.Placement
	pl.firstRun = now
	in := PlacementInput{Forwarders: fwds, RegionRTT: view.RegionRTT, RegionLevels: view.RegionLevels}
	for id, st := range pl.members {
		m := PlacedMember{ID: id, Current: st.fwd}
		fresh := now.Sub(st.reported) <= placementReportMaxAge
		switch {
		case pl.isNew(st, now, cfg.First):
			if fresh {
				m.RTT = st.rtt
			}
		default: // held: only its own forwarder's RTT, so it stays there
			if st.movedTo != "" {
				m.Current = st.movedTo
			}
			if r, ok := st.rtt[m.Current]; ok && fresh {
				m.RTT = map[string]time.Duration{m.Current: r}
			}
		}
		in.Members = append(in.Members, m)
	}
	res, err := Place(cfg, &in)
	if err != nil {
		p.c.pm.runs.WithLabelValues("none").Inc()
		return
	}
	moved := false
	for id, st := range pl.members {
		to, ok := res.Assign[id]
		if !ok || st.fwd == "" || to == st.fwd || !pl.isNew(st, now, cfg.First) {
			continue
		}
		st.settled, st.movedTo, st.movedAt, moved = true, to, now, true
		p.sendMove(cs, id, to, moveReason(fwds[st.fwd], view, cfg), "first", res.Worst, now)
	}
	if moved {
		p.c.pm.runs.WithLabelValues("first_move").Inc()
	} else {
		p.c.pm.runs.WithLabelValues("first_stay").Inc()
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

// reasonLabel is a move reason's metric label.
func reasonLabel(reason uint8) string {
	if reason == protocol.MoveReasonRegion {
		return "region"
	}
	return "rtt"
}

// sendMove publishes the move of id to forwarder to; label is its
// reason in the metrics and log (first, rtt, region).
func (p *partition) sendMove(cs *callState, id protocol.ID, to string, reason uint8, label string, worst time.Duration, now time.Time) {
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
	p.c.pm.moves.WithLabelValues(label).Inc()
	p.c.log.Info("member moved", zap.Stringer("call", cs.id), zap.Stringer("participant", id),
		zap.String("from", cs.place.members[id].fwd), zap.String("to", to), zap.String("reason", label), zap.Duration("worst_path", worst))
}
