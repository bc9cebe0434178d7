package dashboard

import (
	"fmt"
	"sort"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/callrelay/callrelay/protocol"
)

// Regional spill-over (issue 20 item 6). A forwarder whose region throttles
// at its spill level refers refused joins to the nearest other region with
// room; its load report's spill-over section (protocol README 7.6) counts,
// since the process started, the joins referred to each target region and
// those refused with no region in reach. The dashboard takes the growth of
// those counters from one report to the next (a new process, or a counter
// gone back, starts a new series: its whole value is growth; reports lost
// in between cost nothing, the next carries the sum), books it in the
// second the report came, and sums the last minute:
//
//   - "spilled out" on the referring region's card, by target;
//   - "referred in" on the target region's card (the joins the other
//     regions sent it; the target cannot tell them from its own, so
//     whether they came shows in its admitted joins);
//   - "no region in reach" on the referring region's card: joins refused
//     (508) at the spill level because no other region had room within
//     the budget;
//   - the from→to list (FleetMsg.Spills), on /events only when it changed;
//   - callrelay_dashboard_region_spill_joins_total{from,to} and
//     callrelay_dashboard_region_spill_refused_total{region}: counters the
//     dashboard keeps from those growths, so they never go back when a
//     forwarder restarts or leaves the page (only when the dashboard
//     restarts, which rate() takes as a reset).

// otherRegions names, in views and metrics, the row of a spill-over
// section that counts the regions a forwarder did not name (it met more
// than 31), and the pairs beyond maxSpillPairs.
const otherRegions = "(other)"

// maxSpillPairs bounds the dashboard's from→to totals over its life; the
// growth of pairs beyond it is booked as (other)→(other).
const maxSpillPairs = 4096

// SpillView is one forwarder's spill-over: its load report's section, with
// the last minute's and the last five minutes' growth.
type SpillView struct {
	To           []SpillTargetView `json:"to,omitempty"`
	Refused1m    uint64            `json:"refused1m"` // refused, no region in reach
	Refused5m    uint64            `json:"refused5m"`
	RefusedTotal uint64            `json:"refusedTotal"` // since the process started
}

// SpillTargetView is the joins one forwarder referred to one region.
type SpillTargetView struct {
	Region  string `json:"region"` // "(other)": the regions it did not name
	Joins1m uint64 `json:"joins1m"`
	Joins5m uint64 `json:"joins5m"`
	Total   uint64 `json:"total"` // since the process started
}

// SpillPairView is one row of the from→to list: joins the forwarders of
// From referred to region To.
type SpillPairView struct {
	From    string `json:"from"`
	To      string `json:"to"`
	Joins1m uint64 `json:"joins1m"`
	Joins5m uint64 `json:"joins5m"`
}

// spillPair keys the dashboard's totals.
type spillPair struct{ from, to string }

// spillGrowth is how much cur's counters grew since prev (rows by region;
// a row not in prev grew by its whole value), and the refusals' growth.
func spillGrowth(prev, cur *protocol.LoadSpill, restarted bool) (to []protocol.RegionSpill, refused uint64) {
	for _, row := range cur.To {
		var was uint64
		for _, p := range prev.To {
			if p.Region == row.Region {
				was = p.Joins
				break
			}
		}
		if d := delta64(was, row.Joins, restarted); d > 0 {
			to = append(to, protocol.RegionSpill{Region: row.Region, Joins: d})
		}
	}
	return to, delta64(prev.Refused, cur.Refused, restarted)
}

// addSpill adds src's joins to dst's, region by region.
func addSpill(dst, src []protocol.RegionSpill) []protocol.RegionSpill {
next:
	for _, s := range src {
		for i := range dst {
			if dst[i].Region == s.Region {
				dst[i].Joins += s.Joins
				continue next
			}
		}
		dst = append(dst, s)
	}
	return dst
}

func spillJoins(rows []protocol.RegionSpill, region string) uint64 {
	for _, r := range rows {
		if r.Region == region {
			return r.Joins
		}
	}
	return 0
}

// spillRegionName is how views and metrics name a row's region.
func spillRegionName(region string) string {
	if region == "" {
		return otherRegions
	}
	return region
}

// spillView is a forwarder's row part; nil when it never spilled in the
// last five minutes and its report carries no section.
func spillView(s *protocol.LoadSpill, w1, w5 *bucket) *SpillView {
	if len(s.To) == 0 && s.Refused == 0 && len(w5.spill) == 0 && w5.spillRefused == 0 {
		return nil
	}
	v := &SpillView{Refused1m: w1.spillRefused, Refused5m: w5.spillRefused, RefusedTotal: s.Refused}
	regions := map[string]bool{}
	for _, rows := range [][]protocol.RegionSpill{s.To, w5.spill} {
		for _, r := range rows {
			regions[r.Region] = true
		}
	}
	for r := range regions {
		v.To = append(v.To, SpillTargetView{Region: spillRegionName(r), Joins1m: spillJoins(w1.spill, r),
			Joins5m: spillJoins(w5.spill, r), Total: spillJoins(s.To, r)})
	}
	sort.Slice(v.To, func(i, j int) bool { return v.To[i].Region < v.To[j].Region })
	return v
}

// bookSpill adds one report's growth to the dashboard's totals (under the
// tracker's lock).
func (t *tracker) bookSpill(from string, to []protocol.RegionSpill, refused uint64) {
	if from == "" {
		from = seriesNoRegion
	}
	if t.spillJoins == nil {
		t.spillJoins, t.spillRefused = map[spillPair]uint64{}, map[string]uint64{}
	}
	for _, r := range to {
		k := spillPair{from, spillRegionName(r.Region)}
		if _, ok := t.spillJoins[k]; !ok && len(t.spillJoins) >= maxSpillPairs {
			k = spillPair{otherRegions, otherRegions}
		}
		t.spillJoins[k] += r.Joins
	}
	if refused > 0 {
		if _, ok := t.spillRefused[from]; !ok && len(t.spillRefused) >= maxSpillPairs {
			from = otherRegions
		}
		t.spillRefused[from] += refused
	}
}

// spillTotals copies the dashboard's totals.
func (t *tracker) spillTotals() (map[spillPair]uint64, map[string]uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	joins := make(map[spillPair]uint64, len(t.spillJoins))
	for k, v := range t.spillJoins {
		joins[k] = v
	}
	refused := make(map[string]uint64, len(t.spillRefused))
	for k, v := range t.spillRefused {
		refused[k] = v
	}
	return joins, refused
}

// spillPairs is the from→to list over the forwarders on the page: the
// pairs with joins in the last five minutes, by From then To.
func spillPairs(fwds []ForwarderView) []SpillPairView {
	by := map[spillPair]*SpillPairView{}
	for i := range fwds {
		f := &fwds[i]
		if f.Spill == nil {
			continue
		}
		from := f.Region
		if from == "" {
			from = seriesNoRegion
		}
		for _, t := range f.Spill.To {
			if t.Joins5m == 0 {
				continue
			}
			k := spillPair{from, t.Region}
			p := by[k]
			if p == nil {
				p = &SpillPairView{From: from, To: t.Region}
				by[k] = p
			}
			p.Joins1m += t.Joins1m
			p.Joins5m += t.Joins5m
		}
	}
	out := make([]SpillPairView, 0, len(by))
	for _, p := range by {
		out = append(out, *p)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].From != out[j].From {
			return out[i].From < out[j].From
		}
		return out[i].To < out[j].To
	})
	return out
}

// addSpillToRegions puts the last minute's spill-over on the region
// cards: out and no region in reach on the referring region's, in on the
// target's (when the page has a card for it).
func addSpillToRegions(out []RegionView, fwds []ForwarderView) {
	index := make(map[string]int, len(out))
	for i := range out {
		index[out[i].Region] = i
	}
	for i := range fwds {
		f := &fwds[i]
		if f.Spill == nil {
			continue
		}
		from := &out[index[f.Region]] // every forwarder has its card
		from.SpillRefused1m += f.Spill.Refused1m
		for _, t := range f.Spill.To {
			from.SpilledOut1m += t.Joins1m
			if j, ok := index[t.Region]; ok && t.Region != "" {
				out[j].ReferredIn1m += t.Joins1m
			}
		}
	}
}

// spillIssues says, for the verdict, where each region's joins went in the
// last minute.
func spillIssues(fwds []ForwarderView) []string {
	var issues []string
	for _, r := range regions(fwds) {
		if r.SpilledOut1m == 0 && r.SpillRefused1m == 0 {
			continue
		}
		name := r.Region
		if name == "" {
			name = seriesNoRegion
		}
		var to []string
		for _, p := range spillPairs(fwds) {
			if p.From == name && p.Joins1m > 0 {
				to = append(to, fmt.Sprintf("%d to %s", p.Joins1m, p.To))
			}
		}
		text := fmt.Sprintf("region %s spilled %d new joins to other regions in the last minute", name, r.SpilledOut1m)
		if len(to) > 0 {
			text += " (" + strings.Join(to, ", ") + ")"
		}
		if r.SpillRefused1m > 0 {
			text += fmt.Sprintf("; %d refused with no region in reach (all over the latency budget, unmeasured or full)", r.SpillRefused1m)
		}
		issues = append(issues, text)
	}
	return issues
}

// collectSpill exports the dashboard's spill-over totals.
func collectSpill(ch chan<- prometheus.Metric, t *tracker) {
	joins, refused := t.spillTotals()
	for k, n := range joins {
		ch <- prometheus.MustNewConstMetric(mSpillJoins, prometheus.CounterValue, float64(n), k.from, k.to)
	}
	for r, n := range refused {
		ch <- prometheus.MustNewConstMetric(mSpillRefused, prometheus.CounterValue, float64(n), r)
	}
}
