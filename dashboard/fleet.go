package dashboard

import (
	"encoding/json"
	"reflect"
	"slices"
	"sort"
	"time"
)

// The fleet view: what /events streams. The first message of a stream is
// a full one (every cell, the partitions); each later one is a delta from
// the message before it (the cells that changed, the forwarders gone, the
// partitions only when they changed, the verdict only when it changed,
// and the second just recorded in each history series). A stream that
// skipped a message (a slow reader) is sent the latest full one instead.

// Cell is one forwarder in the grid: only what colours and sorts it, so a
// steady forwarder's cell does not change from one second to the next.
type Cell struct {
	ID       string `json:"id"`
	Region   string `json:"r,omitempty"`
	Level    int    `json:"l"` // -1 unknown
	Load     int    `json:"p"` // percent of capacity, the worst signal
	Worst    string `json:"w,omitempty"`
	Up       bool   `json:"u"`
	Draining bool   `json:"d,omitempty"`
	Degraded bool   `json:"s,omitempty"` // cannot reach Redis
}

// RegionView sums one region's forwarders (Region "" is the forwarders
// without one).
type RegionView struct {
	Region     string `json:"region"`
	Forwarders int    `json:"forwarders"`
	Up         int    `json:"up"`
	Throttling int    `json:"throttling"`
	Draining   int    `json:"draining"`
	Degraded   int    `json:"degraded"`
	Levels     [5]int `json:"levels"` // forwarders up at each level
	MaxLevel   int    `json:"maxLevel"`
	LoadMax    int    `json:"loadMax"` // permille
	Worst      string `json:"worst"`   // the signal behind LoadMax
	WorstID    string `json:"worstId"` // the forwarder
	Sessions   uint64 `json:"sessions"`
	Calls      uint64 `json:"calls"`
	Admitted1m uint64 `json:"admitted1m"`
	Refused1m  uint64 `json:"refused1m"`
	// Regional spill-over in the last minute (spill.go): joins this
	// region's forwarders referred to other regions, joins other regions
	// referred to this one, and joins this region refused at its spill
	// level with no other region in reach.
	SpilledOut1m   uint64 `json:"spillOut1m,omitempty"`
	ReferredIn1m   uint64 `json:"spillIn1m,omitempty"`
	SpillRefused1m uint64 `json:"spillRefused1m,omitempty"`
}

// FleetMsg is one message of /events.
type FleetMsg struct {
	Seq        uint64          `json:"seq"`
	Full       bool            `json:"full"`
	At         time.Time       `json:"at"`
	Verdict    *Verdict        `json:"verdict,omitempty"`
	Cluster    ClusterTotals   `json:"cluster"`
	Health     HealthView      `json:"health"`
	Dropped    dropCounts      `json:"dropped"`
	Partitions *PartitionsView `json:"partitions,omitempty"`
	Regions    []RegionView    `json:"regions"`
	Cells      []Cell          `json:"cells"`
	Gone       []string        `json:"gone,omitempty"`
	// Trunks is the region-to-region trunk RTT matrix (trunks.go): in a
	// full message always, in a delta only when it changed.
	Trunks *[]TrunkView `json:"trunks,omitempty"`
	// Spills is the from→to spill-over list (spill.go): the region pairs
	// with joins spilled in the last five minutes; in a full message
	// always, in a delta only when it changed.
	Spills *[]SpillPairView `json:"spills,omitempty"`
	// Point is the second just recorded, by series (history.go).
	Point map[string]PointView `json:"point,omitempty"`
}

// pushedMsgs is what one push made: the full message and the delta from
// the push before.
type pushedMsgs struct {
	seq         uint64
	full, delta []byte
}

// fleetState is what the previous push sent; only the push loop uses it.
type fleetState struct {
	seq     uint64
	cells   map[string]Cell
	verdict Verdict
	parts   PartitionsView
	trunks  []TrunkView
	spills  []SpillPairView
}

func cellOf(f *ForwarderView) Cell {
	return Cell{ID: f.ID, Region: f.Region, Level: f.Level, Load: max(f.Load, 0) / 10, Worst: f.Worst,
		Up: f.Up, Draining: f.Draining, Degraded: f.StateDegraded}
}

// regions sums the forwarders by region, in name order.
func regions(fwds []ForwarderView) []RegionView {
	by := map[string]*RegionView{}
	for i := range fwds {
		f := &fwds[i]
		r := by[f.Region]
		if r == nil {
			r = &RegionView{Region: f.Region, LoadMax: -1}
			by[f.Region] = r
		}
		r.Forwarders++
		for _, c := range f.Classes {
			r.Admitted1m += c.Admitted1
			r.Refused1m += c.Refused1
		}
		if !f.Up {
			continue
		}
		r.Up++
		r.Sessions += uint64(f.Sessions)
		r.Calls += uint64(f.Calls)
		if f.Draining {
			r.Draining++
		}
		if f.StateDegraded {
			r.Degraded++
		}
		if f.Level >= 0 {
			r.Levels[f.Level]++
			r.MaxLevel = max(r.MaxLevel, f.Level)
		}
		if f.Level > 0 {
			r.Throttling++
		}
		if f.Load > r.LoadMax {
			r.LoadMax, r.Worst, r.WorstID = f.Load, f.Worst, f.ID
		}
	}
	out := make([]RegionView, 0, len(by))
	for _, r := range by {
		out = append(out, *r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Region < out[j].Region })
	addSpillToRegions(out, fwds)
	return out
}

// next makes this push's full message and its delta from the last push.
func (st *fleetState) next(snap *Snapshot, point map[string]PointView) (*pushedMsgs, error) {
	st.seq++
	full := FleetMsg{Seq: st.seq, Full: true, At: snap.At, Verdict: &snap.Verdict, Cluster: snap.Cluster, Health: snap.Health,
		Dropped: snap.Dropped, Partitions: &snap.Partitions, Regions: regions(snap.Forwarders),
		Cells: make([]Cell, len(snap.Forwarders)), Point: point}
	matrix := trunks(snap.Forwarders)
	full.Trunks = &matrix
	spills := spillPairs(snap.Forwarders)
	full.Spills = &spills
	delta := full
	delta.Full, delta.Cells = false, []Cell{}
	cells := make(map[string]Cell, len(snap.Forwarders))
	for i := range snap.Forwarders {
		c := cellOf(&snap.Forwarders[i])
		full.Cells[i], cells[c.ID] = c, c
		if prev, ok := st.cells[c.ID]; !ok || prev != c {
			delta.Cells = append(delta.Cells, c)
		}
	}
	for id := range st.cells {
		if _, ok := cells[id]; !ok {
			delta.Gone = append(delta.Gone, id)
		}
	}
	sort.Strings(delta.Gone)
	if reflect.DeepEqual(st.verdict, snap.Verdict) {
		delta.Verdict = nil
	}
	if reflect.DeepEqual(st.parts, snap.Partitions) {
		delta.Partitions = nil
	}
	if st.seq > 1 && slices.Equal(st.trunks, matrix) {
		delta.Trunks = nil
	}
	if st.seq > 1 && slices.Equal(st.spills, spills) {
		delta.Spills = nil
	}
	st.cells, st.verdict, st.parts, st.trunks, st.spills = cells, snap.Verdict, snap.Partitions, matrix, spills
	m := &pushedMsgs{seq: st.seq}
	var err error
	if m.full, err = json.Marshal(full); err != nil {
		return nil, err
	}
	if m.delta, err = json.Marshal(delta); err != nil {
		return nil, err
	}
	return m, nil
}
