package dashboard

import (
	"slices"
	"sort"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/callrelay/callrelay/protocol"
)

// The trunk RTT matrix (issue 20 item 6): each forwarder's load report
// may carry its measured round-trip time to each peer region (the trunk
// RTT section, flag 0x10); the dashboard folds them into one row per
// region pair: the median over the source region's forwarders that
// report the pair, and the worst of them.

// TrunkRTTView is one row of a forwarder's trunk RTT section.
type TrunkRTTView struct {
	Region string  `json:"region"` // the peer region
	RTTMs  float64 `json:"rttMs"`  // smoothed round-trip time
	DevMs  float64 `json:"devMs"`  // its mean deviation
}

// TrunkView is one region pair of the matrix. Times are in whole
// microseconds so that a steady pair compares equal from one push to the
// next (a delta then leaves the matrix out).
type TrunkView struct {
	From       string `json:"from"` // the measuring forwarders' region
	To         string `json:"to"`   // the peer region
	Forwarders int    `json:"n"`    // forwarders of From that report To
	MedianUs   int64  `json:"med"`
	WorstUs    int64  `json:"max"`
	WorstID    string `json:"maxId"` // the forwarder that measured WorstUs
}

func trunkRTTViews(rows []protocol.RegionRTT) []TrunkRTTView {
	if len(rows) == 0 {
		return nil
	}
	out := make([]TrunkRTTView, len(rows))
	for i, r := range rows {
		out[i] = TrunkRTTView{Region: r.Region, RTTMs: float64(r.RTT.Microseconds()) / 1000, DevMs: float64(r.Dev.Microseconds()) / 1000}
	}
	return out
}

// trunks builds the matrix from the forwarders that are up, ordered by
// From then To. Forwarders without a region of their own are left out:
// their rows name no source.
func trunks(fwds []ForwarderView) []TrunkView {
	type sample struct {
		us int64
		id string
	}
	type pair struct{ from, to string }
	by := map[pair][]sample{}
	for i := range fwds {
		f := &fwds[i]
		if !f.Up || f.Region == "" {
			continue
		}
		for _, t := range f.Trunks {
			k := pair{f.Region, t.Region}
			by[k] = append(by[k], sample{int64(t.RTTMs*1000 + 0.5), f.ID})
		}
	}
	out := make([]TrunkView, 0, len(by))
	for k, s := range by {
		slices.SortFunc(s, func(a, b sample) int {
			if a.us != b.us {
				return int(a.us - b.us)
			}
			return compareStrings(a.id, b.id)
		})
		n := len(s)
		med := s[n/2].us
		if n%2 == 0 {
			med = (s[n/2-1].us + s[n/2].us) / 2
		}
		out = append(out, TrunkView{From: k.from, To: k.to, Forwarders: n, MedianUs: med, WorstUs: s[n-1].us, WorstID: s[n-1].id})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].From != out[j].From {
			return out[i].From < out[j].From
		}
		return out[i].To < out[j].To
	})
	return out
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

var mTrunkRTT = prometheus.NewDesc("callrelay_dashboard_trunk_rtt_seconds",
	"Trunk round-trip time by region pair, from the forwarders' load reports: stat median (over the from region's forwarders up that report the pair) or worst.",
	[]string{"from", "to", "stat"}, nil)

// collectTrunks exports the trunk RTT matrix.
func collectTrunks(ch chan<- prometheus.Metric, fwds []ForwarderView) {
	for _, p := range trunks(fwds) {
		ch <- prometheus.MustNewConstMetric(mTrunkRTT, prometheus.GaugeValue, float64(p.MedianUs)/1e6, p.From, p.To, "median")
		ch <- prometheus.MustNewConstMetric(mTrunkRTT, prometheus.GaugeValue, float64(p.WorstUs)/1e6, p.From, p.To, "worst")
	}
}
