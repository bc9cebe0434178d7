package dashboard

import (
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/callrelay/callrelay/protocol"
)

// historySeconds is how far back the per-second admission deltas go.
const historySeconds = 300

// Join classes as LoadReport counts them (index into Admitted/Refused).
var classNames = [6]string{"unclassified", "new group call", "new one-to-one call", "new member of a group call", "second party of a one-to-one call", "rejoin"}

// signalNames are LoadReport.Signals' names.
var signalNames = [5]string{"cpu", "packets", "queue_drops", "memory", "sessions"}

// levelHeadline says what a throttle level adds to the one below; levelMeaning
// lists everything it refuses.
var (
	levelHeadline = [5]string{"admitting every join", "new group calls refused", "new one-to-one calls refused",
		"new members of group calls refused", "second parties of one-to-one calls refused"}
	levelMeaning = [5]string{"admits every join",
		"refuses new group calls",
		"refuses new group and new one-to-one calls",
		"refuses new calls and new members of group calls; admits second parties and rejoins",
		"refuses every join but rejoins"}
)

// bucket is one second of admission and adaptation deltas.
type bucket struct {
	sec      int64
	admitted [6]uint64
	refused  [6]uint64
	adapt    [numAdapt]uint64
	ops      [numOps]uint64 // the operations section's growth (history.go)
	// spill is the spill-over section's growth by target region, and
	// spillRefused its refusals' (spill.go).
	spill        []protocol.RegionSpill
	spillRefused uint64
}

// fwdState is what the dashboard knows of one forwarder.
type fwdState struct {
	id       string
	lastSeen time.Time // local clock, last authentic message

	announce    protocol.ForwarderAnnounce
	hasAnnounce bool

	report    protocol.LoadReport
	hasReport bool
	reportAt  time.Time // local clock
	ring      [historySeconds]bucket
	// adaptSince is when the first report with the adaptation section
	// came (local clock; zero while the last report had none): the
	// adaptation rates average over at most the time since.
	adaptSince time.Time
	// hist is the last hour, one packed sample a second (history.go).
	hist    [historyLen]sample
	histSec int64 // the last second in hist
}

// newer reports whether (started, seq) comes after the last one taken.
func newer(started time.Time, seq uint64, lastStarted time.Time, lastSeq uint64) bool {
	if !started.Equal(lastStarted) {
		return started.After(lastStarted)
	}
	return seq > lastSeq
}

// addReport takes r, received at now, and books its counters' growth since
// the previous report in now's second. A report from a new incarnation
// (later started) books its counters whole: they started from zero. It
// returns whether it took r, and r's spill-over growth.
func (f *fwdState) addReport(r *protocol.LoadReport, now time.Time) (took bool, spillTo []protocol.RegionSpill, spillRefused uint64) {
	if f.hasReport && !newer(r.Started, r.Seq, f.report.Started, f.report.Seq) {
		return false, nil, 0
	}
	if f.hasReport {
		restarted := !r.Started.Equal(f.report.Started)
		b := f.bucketAt(now.Unix())
		spillTo, spillRefused = spillGrowth(&f.report.Spill, &r.Spill, restarted)
		b.spill, b.spillRefused = addSpill(b.spill, spillTo), b.spillRefused+spillRefused
		for i := range r.Admitted {
			b.admitted[i] += delta(f.report.Admitted[i], r.Admitted[i], restarted)
			b.refused[i] += delta(f.report.Refused[i], r.Refused[i], restarted)
		}
		if r.HasOps && (f.report.HasOps || restarted) {
			prev, cur := opsCounters(&f.report.Ops), opsCounters(&r.Ops)
			for i := range cur {
				b.ops[i] += delta64(prev[i], cur[i], restarted)
			}
		}
		if r.HasAdapt && (f.report.HasAdapt || restarted) {
			prev, cur := adaptCounters(&f.report.Adapt), adaptCounters(&r.Adapt)
			for i := range cur {
				b.adapt[i] += delta64(prev[i], cur[i], restarted)
			}
		}
	}
	switch {
	case !r.HasAdapt:
		f.adaptSince = time.Time{}
	case f.adaptSince.IsZero():
		f.adaptSince = now
	}
	f.report, f.hasReport, f.reportAt = *r, true, now
	return true, spillTo, spillRefused
}

// delta is how much a cumulative counter grew; a counter that went back
// (a restart the started field did not show) counts from zero.
func delta(prev, cur uint32, restarted bool) uint64 {
	if restarted || cur < prev {
		return uint64(cur)
	}
	return uint64(cur - prev)
}

func (f *fwdState) bucketAt(sec int64) *bucket {
	b := &f.ring[((sec%historySeconds)+historySeconds)%historySeconds]
	if b.sec != sec {
		*b = bucket{sec: sec}
	}
	return b
}

// delta64 is delta for the 64-bit counters.
func delta64(prev, cur uint64, restarted bool) uint64 {
	if restarted || cur < prev {
		return cur
	}
	return cur - prev
}

// window sums the buckets of the last n seconds up to now.
func (f *fwdState) window(now time.Time, n int64) (sum bucket) {
	cur := now.Unix()
	for i := range f.ring {
		b := &f.ring[i]
		if b.sec > cur-n && b.sec <= cur {
			for c := range sum.admitted {
				sum.admitted[c] += b.admitted[c]
				sum.refused[c] += b.refused[c]
			}
			for a := range sum.adapt {
				sum.adapt[a] += b.adapt[a]
			}
			sum.spill = addSpill(sum.spill, b.spill)
			sum.spillRefused += b.spillRefused
		}
	}
	return sum
}

// dropCounts counts what the subscription dropped.
type dropCounts struct {
	Forged     uint64 `json:"forged"`     // failed the tag: wrong key or tampered
	Malformed  uint64 `json:"malformed"`  // not a valid envelope or body
	Unexpected uint64 `json:"unexpected"` // authentic, but not a heartbeat type
	Stale      uint64 `json:"stale"`      // older than what was taken (replay, reordering)
	Overflow   uint64 `json:"overflow"`   // beyond MaxForwarders
}

// tracker holds the forwarders' state; safe for concurrent use.
type tracker struct {
	mu    sync.Mutex
	fwds  map[string]*fwdState
	drops dropCounts
	max   int
	// spillJoins and spillRefused are the spill-over growth booked since
	// the dashboard started, by region pair and by region (spill.go).
	spillJoins   map[spillPair]uint64
	spillRefused map[string]uint64
}

func newTracker(max int) *tracker {
	return &tracker{fwds: make(map[string]*fwdState), max: max}
}

// get returns id's state, creating it; nil when full.
func (t *tracker) get(id string) *fwdState {
	f := t.fwds[id]
	if f == nil {
		if len(t.fwds) >= t.max {
			t.drops.Overflow++
			return nil
		}
		f = &fwdState{id: id}
		t.fwds[id] = f
	}
	return f
}

func (t *tracker) addAnnounce(a *protocol.ForwarderAnnounce, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	f := t.get(a.ID)
	if f == nil {
		return
	}
	if f.hasAnnounce && !newer(a.Started, a.Seq, f.announce.Started, f.announce.Seq) {
		t.drops.Stale++
		return
	}
	f.announce, f.hasAnnounce, f.lastSeen = *a, true, now
}

func (t *tracker) addReport(r *protocol.LoadReport, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	f := t.get(r.Forwarder)
	if f == nil {
		return
	}
	took, spillTo, spillRefused := f.addReport(r, now)
	if !took {
		t.drops.Stale++
		return
	}
	t.bookSpill(r.Ops.Region, spillTo, spillRefused)
	f.lastSeen = now
}

func (t *tracker) drop(what *uint64) {
	t.mu.Lock()
	*what++
	t.mu.Unlock()
}

// view builds the forwarders' part of a snapshot at now, forgetting those
// silent for forget.
func (t *tracker) view(now time.Time, down, forget time.Duration) ([]ForwarderView, dropCounts) {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]ForwarderView, 0, len(t.fwds))
	for id, f := range t.fwds {
		if now.Sub(f.lastSeen) > forget {
			delete(t.fwds, id)
			continue
		}
		out = append(out, f.view(now, down))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, t.drops
}

// ForwarderView is one forwarder's row.
type ForwarderView struct {
	ID         string  `json:"id"`
	Region     string  `json:"region"` // the load report's, empty: none
	Up         bool    `json:"up"`
	SilentSecs float64 `json:"silentSecs"` // since its last heartbeat
	Media      string  `json:"media,omitempty"`
	// Media6 is a dual-stack forwarder's IPv6 media address; Streams its
	// TCP and TLS listeners ("tcp 192.0.2.1:443"), from its announce.
	Media6   string   `json:"media6,omitempty"`
	Streams  []string `json:"streams,omitempty"`
	Draining bool     `json:"draining"`
	// HasReport is false for a forwarder that sends announces only: level,
	// signals and admissions are then unknown, Load is the announce's.
	HasReport     bool          `json:"hasReport"`
	Level         int           `json:"level"` // -1 unknown
	LevelText     string        `json:"levelText"`
	LevelMeaning  string        `json:"levelMeaning"`
	Load          int           `json:"load"`  // permille, the worst signal
	Worst         string        `json:"worst"` // the worst signal's name
	Signals       []SignalView  `json:"signals"`
	Sessions      uint32        `json:"sessions"`
	Calls         uint32        `json:"calls"`
	CallsOneToOne uint32        `json:"callsOneToOne"`
	CallsGroup    uint32        `json:"callsGroup"`
	StateDegraded bool          `json:"stateDegraded"`
	StateQueued   uint32        `json:"stateQueued"`
	AudioMuted    uint64        `json:"audioMuted"`
	ShedVideo     uint64        `json:"shedVideo"`
	Classes       []ClassCounts `json:"classes"`
	Started       time.Time     `json:"started"`
	Seq           uint64        `json:"seq"`
	// Adapt is the network adaptation, nil when the last report has no
	// adaptation section (a forwarder that predates it).
	Adapt *AdaptView `json:"adapt,omitempty"`
	// Trunks is the RTT to each peer region, from the load report's trunk
	// RTT section (trunks.go); empty without one.
	Trunks []TrunkRTTView `json:"trunks,omitempty"`
	// Spill is where the joins it refused for load went (spill.go); nil
	// when it has not spilled since it started, nor in the last 5 minutes.
	Spill *SpillView `json:"spill,omitempty"`
}

// SignalView is one load signal.
type SignalView struct {
	Name     string `json:"name"`
	Permille int    `json:"permille"`
}

// ClassCounts are one join class's admissions and refusals.
type ClassCounts struct {
	Class     int    `json:"class"`
	Name      string `json:"name"`
	Admitted1 uint64 `json:"admitted1m"`
	Refused1  uint64 `json:"refused1m"`
	Admitted5 uint64 `json:"admitted5m"`
	Refused5  uint64 `json:"refused5m"`
	// Since the process started.
	AdmittedTotal uint64 `json:"admittedTotal"`
	RefusedTotal  uint64 `json:"refusedTotal"`
}

func (f *fwdState) view(now time.Time, down time.Duration) ForwarderView {
	silent := now.Sub(f.lastSeen)
	v := ForwarderView{ID: f.id, Up: silent < down, SilentSecs: max(0, silent.Seconds()), Level: -1,
		LevelText: "no load report", LevelMeaning: "this forwarder sends no load report: level unknown"}
	if f.hasAnnounce {
		a := &f.announce
		v.Media, v.Draining, v.Load, v.Worst = a.Media.String(), a.Draining, int(a.Load), "load"
		if a.Media6.IsValid() {
			v.Media6 = a.Media6.String()
		}
		v.Streams = streamViews(&a.Streams)
		v.Sessions, v.Calls, v.Started, v.Seq = a.Sessions, a.Calls, a.Started, a.Seq
	}
	if f.hasReport {
		r := &f.report
		v.HasReport, v.Level, v.Region = true, int(r.Level), r.Ops.Region
		v.LevelText, v.LevelMeaning = "level "+strconv.Itoa(int(r.Level))+": "+levelHeadline[r.Level], levelMeaning[r.Level]
		v.Draining = v.Draining || r.Draining
		v.Sessions, v.CallsOneToOne, v.CallsGroup = r.Sessions, r.CallsOneToOne, r.CallsGroup
		v.Calls = r.CallsOneToOne + r.CallsGroup
		v.StateDegraded, v.StateQueued, v.AudioMuted, v.ShedVideo = r.StateDegraded, r.StateQueued, r.AudioMuted, r.ShedVideo
		v.Load, v.Worst, v.Started, v.Seq = -1, "", r.Started, r.Seq
		for i, s := range r.Signals {
			v.Signals = append(v.Signals, SignalView{Name: signalNames[i], Permille: int(s)})
			if int(s) > v.Load {
				v.Load, v.Worst = int(s), signalNames[i]
			}
		}
		w1, w5 := f.window(now, 60), f.window(now, historySeconds)
		for c := range classNames {
			v.Classes = append(v.Classes, ClassCounts{Class: c, Name: classNames[c],
				Admitted1: w1.admitted[c], Refused1: w1.refused[c], Admitted5: w5.admitted[c], Refused5: w5.refused[c],
				AdmittedTotal: uint64(r.Admitted[c]), RefusedTotal: uint64(r.Refused[c])})
		}
		if r.HasAdapt {
			v.Adapt = adaptView(&r.Adapt, w1.adapt, now.Sub(f.adaptSince))
		}
		v.Trunks = trunkRTTViews(r.RTTs)
		v.Spill = spillView(&r.Spill, &w1, &w5)
	}
	return v
}

// refusing names the classes a row refused in the last minute.
func (v *ForwarderView) refusing() string {
	var names []string
	for _, c := range v.Classes {
		if c.Refused1 > 0 {
			names = append(names, c.Name)
		}
	}
	return strings.Join(names, ", ")
}

// streamViews lists a forwarder's announced TCP and TLS listeners.
func streamViews(l *protocol.StreamListeners) []string {
	var out []string
	for t, name := range [2]string{"tcp", "tls"} {
		for _, ap := range l[t] {
			if ap.IsValid() {
				out = append(out, name+" "+ap.String())
			}
		}
	}
	return out
}
