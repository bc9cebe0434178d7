package dashboard

import (
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/callrelay/callrelay/protocol"
)

// The last hour, kept in fixed rings one entry a second:
//
//   - per forwarder, a packed sample (level, worst signal, load): 2 bytes a
//     second, 7.2 kB a forwarder, 2.2 MB at 300 forwarders (fwdState.hist);
//   - per region, and for the whole fleet, a point (joins by class, NACKs,
//     resends, Redis write and NATS round-trip times, the worst load, how
//     many forwarders are up and throttling; the conductors' decisions per
//     second and the worst conductor's decision latency, conductors.go):
//     3600 points of 128 bytes, 461 kB a series, at most maxRegions+2
//     series (2.3 MB for 4 regions and the fleet, 8.3 MB at most).
//
// So 4.5 MB at 300 forwarders in 4 regions (TestHistorySeries logs it).
// Nothing grows with time or with the traffic; a region beyond maxRegions
// is booked under "other".
const historyLen = 3600

// maxRegions bounds the per-region series.
const maxRegions = 16

// Series names that are not regions.
const (
	seriesAll      = "*"       // the whole fleet
	seriesNoRegion = "(none)"  // forwarders without --region
	seriesOther    = "(other)" // regions beyond maxRegions
)

// The operations counters of a LoadReport, as indices into bucket.ops.
const (
	opStoreN = iota
	opStoreUs
	opRTTN
	opRTTUs
	numOps
)

func opsCounters(o *protocol.LoadOps) [numOps]uint64 {
	return [numOps]uint64{o.StoreWrites, o.StoreWriteUs, o.NATSRTTs, o.NATSRTTUs}
}

// sample packs one forwarder's second: bits 0..2 level+1 (0: no sample),
// 3..5 the worst signal's index, 6..15 the load in percent (capped 1023).
type sample uint16

func packSample(level, worst, loadPermille int) sample {
	pct := min(max(loadPermille, 0)/10, 1023)
	return sample(level+1) | sample(worst&7)<<3 | sample(pct)<<6
}

func (s sample) level() int { return int(s&7) - 1 }

// point is one second of a series.
type point struct {
	sec        int64
	admitted   [6]uint32
	refused    [6]uint32
	nacked     uint32
	resent     uint32
	ops        [numOps]uint64
	loadMax    int32 // permille, -1 none
	worst      int8  // index into signalNames, -1 none
	up         uint16
	throttling uint16
	known      uint16
	// The conductors' reports booked in the second (conductors.go):
	// decisions per second summed, the worst p50 and p99 in microseconds.
	decisions            float32
	decideP50, decideP99 uint32
	conductors           uint16
}

// history holds the series; the tracker writes it under its own lock,
// then history's (lock order: tracker, history).
type history struct {
	mu     sync.Mutex
	last   int64 // the last second recorded (Unix)
	series map[string]*[historyLen]point
}

func ringIndex(sec int64) int { return int(((sec % historyLen) + historyLen) % historyLen) }

// at returns series name's point for sec, reset if it held an older second.
func (h *history) at(name string, sec int64) *point {
	s := h.series[name]
	if s == nil {
		if len(h.series) > maxRegions { // the fleet's series and maxRegions regions
			name = seriesOther
			if s = h.series[name]; s == nil {
				s = new([historyLen]point)
				h.series[name] = s
			}
		} else {
			s = new([historyLen]point)
			h.series[name] = s
		}
	}
	p := &s[ringIndex(sec)]
	if p.sec != sec {
		*p = point{sec: sec, loadMax: -1, worst: -1}
	}
	return p
}

// record books every second completed since the last call, up to the one
// before now's (reports that come in second s are booked in s).
func (t *tracker) record(h *history, now time.Time, down time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.series == nil {
		h.series = map[string]*[historyLen]point{}
	}
	end := now.Unix() - 1
	start := h.last + 1
	if h.last == 0 || start < end-historySeconds+1 {
		start = end // the first second, or after a long stall: the buckets go back no further
	}
	for sec := start; sec <= end; sec++ {
		h.at(seriesAll, sec)
		for _, f := range t.fwds {
			f.record(h, sec, now.Sub(f.lastSeen) < down)
		}
	}
	h.last = max(h.last, end)
}

// record books f's second sec in its ring and in its region's and the
// fleet's series.
func (f *fwdState) record(h *history, sec int64, up bool) {
	if !f.hasReport {
		return
	}
	r := &f.report
	load, worst := -1, -1
	for i, s := range r.Signals {
		if int(s) > load {
			load, worst = int(s), i
		}
	}
	if up {
		f.setSample(sec, packSample(int(r.Level), worst, load))
	} else {
		f.setSample(sec, 0)
	}
	region := r.Ops.Region
	if region == "" {
		region = seriesNoRegion
	}
	for _, p := range [2]*point{h.at(seriesAll, sec), h.at(region, sec)} {
		p.known++
		if !up {
			continue
		}
		p.up++
		if r.Level > 0 {
			p.throttling++
		}
		if int32(load) > p.loadMax {
			p.loadMax, p.worst = int32(load), int8(worst)
		}
		b := &f.ring[((sec%historySeconds)+historySeconds)%historySeconds]
		if b.sec != sec {
			continue
		}
		for c := range b.admitted {
			p.admitted[c] += uint32(b.admitted[c])
			p.refused[c] += uint32(b.refused[c])
		}
		p.nacked += uint32(b.adapt[adNacked])
		p.resent += uint32(b.adapt[adResent])
		for i := range b.ops {
			p.ops[i] += b.ops[i]
		}
	}
}

// setSample writes f's sample for sec, clearing the seconds skipped since
// the last one.
func (f *fwdState) setSample(sec int64, s sample) {
	for x := max(f.histSec+1, sec-historyLen+1); x < sec; x++ {
		f.hist[ringIndex(x)] = 0
	}
	f.hist[ringIndex(sec)] = s
	f.histSec = max(f.histSec, sec)
}

// PointView is one second of a series, as the page draws it.
type PointView struct {
	Sec      int64     `json:"sec"`
	Admitted [6]uint32 `json:"admitted"`
	Refused  [6]uint32 `json:"refused"`
	Nacked   uint32    `json:"nacked"`
	Resent   uint32    `json:"resent"`
	// StoreMs and RTTMs are the mean Redis write and NATS round-trip
	// times of the second, -1 when none was measured in it.
	StoreMs    float64 `json:"storeMs"`
	RTTMs      float64 `json:"rttMs"`
	LoadMax    int32   `json:"loadMax"` // permille, -1: no forwarder up
	Worst      string  `json:"worst"`
	Up         uint16  `json:"up"`
	Throttling uint16  `json:"throttling"`
	Known      uint16  `json:"known"`
	// Conductors reported in the second; Decisions is their decisions per
	// second, DecideP50Ms and DecideP99Ms the worst conductor's decision
	// latency (-1: no conductor reported).
	Conductors  uint16  `json:"conductors"`
	Decisions   float64 `json:"decisions"`
	DecideP50Ms float64 `json:"decideP50Ms"`
	DecideP99Ms float64 `json:"decideP99Ms"`
}

func meanMs(sumUs, n uint64) float64 {
	if n == 0 {
		return -1
	}
	return float64(sumUs*1000/n) / 1e6 // rounded to the microsecond
}

func (p *point) view() PointView {
	v := PointView{Sec: p.sec, Admitted: p.admitted, Refused: p.refused, Nacked: p.nacked, Resent: p.resent,
		StoreMs: meanMs(p.ops[opStoreUs], p.ops[opStoreN]), RTTMs: meanMs(p.ops[opRTTUs], p.ops[opRTTN]),
		LoadMax: p.loadMax, Up: p.up, Throttling: p.throttling, Known: p.known,
		Conductors: p.conductors, Decisions: float64(p.decisions), DecideP50Ms: -1, DecideP99Ms: -1}
	if p.conductors > 0 {
		v.DecideP50Ms, v.DecideP99Ms = float64(p.decideP50)/1000, float64(p.decideP99)/1000
	}
	if p.worst >= 0 {
		v.Worst = signalNames[p.worst]
	}
	return v
}

// lastPoints is every series' point for the last second recorded.
func (h *history) lastPoints() map[string]PointView {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]PointView, len(h.series))
	for name, s := range h.series {
		if p := &s[ringIndex(h.last)]; p.sec == h.last {
			out[name] = p.view()
		}
	}
	return out
}

// HistoryView is the last secs seconds, ending at End: every series as
// points (oldest first; a second without data has Sec 0), and every
// forwarder's levels.
type HistoryView struct {
	End        int64                  `json:"end"`
	Len        int                    `json:"len"`
	Series     map[string][]PointView `json:"series"`
	Forwarders []StripView            `json:"forwarders"`
}

// StripView is one forwarder's levels over the history, run-length coded:
// "level*count" runs separated by commas, level "-" for no sample (not
// heard, down, or no load report), oldest first.
type StripView struct {
	ID     string `json:"id"`
	Region string `json:"region"`
	Levels string `json:"levels"`
}

// view builds the history of the last secs seconds (1..historyLen).
func (t *tracker) historyView(h *history, secs int) HistoryView {
	t.mu.Lock()
	defer t.mu.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	v := HistoryView{End: h.last, Len: secs, Series: map[string][]PointView{}, Forwarders: []StripView{}}
	first := h.last - int64(secs) + 1
	for name, s := range h.series {
		pts := make([]PointView, secs)
		for i := range pts {
			if p := &s[ringIndex(first+int64(i))]; p.sec == first+int64(i) {
				pts[i] = p.view()
			} else {
				pts[i] = PointView{LoadMax: -1, StoreMs: -1, RTTMs: -1, DecideP50Ms: -1, DecideP99Ms: -1}
			}
		}
		v.Series[name] = pts
	}
	for _, f := range t.fwds {
		v.Forwarders = append(v.Forwarders, StripView{ID: f.id, Region: f.report.Ops.Region, Levels: f.strip(first, h.last)})
	}
	sort.Slice(v.Forwarders, func(i, j int) bool { return v.Forwarders[i].ID < v.Forwarders[j].ID })
	return v
}

// strip run-length codes f's levels from first to last.
func (f *fwdState) strip(first, last int64) string {
	var b strings.Builder
	run, n := -2, 0
	flush := func() {
		if n == 0 {
			return
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		if run < 0 {
			b.WriteByte('-')
		} else {
			b.WriteString(strconv.Itoa(run))
		}
		b.WriteByte('*')
		b.WriteString(strconv.Itoa(n))
	}
	for sec := first; sec <= last; sec++ {
		l := -1
		if sec > f.histSec-historyLen && sec <= f.histSec {
			l = f.hist[ringIndex(sec)].level()
		}
		if l != run {
			flush()
			run, n = l, 0
		}
		n++
	}
	flush()
	return b.String()
}
