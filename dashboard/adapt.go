package dashboard

import (
	"time"

	"github.com/callrelay/callrelay/protocol"
)

// The adaptation counters of a LoadReport, as indices into bucket.adapt.
const (
	adNacked = iota
	adResent
	adNotCached
	adOverBudget
	adResentBytes
	adProbes
	adKeyFrames
	adSubscriptions
	numAdapt
)

// adaptWindow is what the adaptation rates average over.
const adaptWindow = 60 * time.Second

func adaptCounters(a *protocol.LoadAdapt) [numAdapt]uint64 {
	return [numAdapt]uint64{a.Nacked, a.Resent, a.NotCached, a.OverBudget, a.ResentBytes, a.Probes, a.KeyFramesAsked, a.Subscriptions}
}

// AdaptView is a forwarder's network adaptation, from the adaptation
// section of its LoadReports: rates over the last minute and totals since
// it started.
type AdaptView struct {
	// WindowSecs is what the rates average over: 60, or the time since the
	// forwarder's first report with the section when that is shorter (0:
	// only one report yet, no rates).
	WindowSecs float64 `json:"windowSecs"`
	// NACKed packets per second, and what became of them: resent from the
	// cache, not in the cache, over the leg's budget, and bounded (asked
	// too often or too soon: the rest).
	NackedPerSec     float64 `json:"nackedPerSec"`
	ResentPerSec     float64 `json:"resentPerSec"`
	NotCachedPerSec  float64 `json:"notCachedPerSec"`
	OverBudgetPerSec float64 `json:"overBudgetPerSec"`
	BoundedPerSec    float64 `json:"boundedPerSec"`
	// ResentKBPerSec is retransmitted kB (1000 bytes) per second.
	ResentKBPerSec      float64 `json:"resentKBPerSec"`
	ProbesPerMin        float64 `json:"probesPerMin"`
	KeyFramesPerMin     float64 `json:"keyFramesPerMin"`
	SubscriptionsPerMin float64 `json:"subscriptionsPerMin"`
	// Last1m is the counters' growth over the window; Total what the last
	// report says.
	Last1m AdaptCounts `json:"last1m"`
	Total  AdaptCounts `json:"total"`
}

// AdaptCounts are the adaptation counters.
type AdaptCounts struct {
	Nacked         uint64 `json:"nacked"`
	Resent         uint64 `json:"resent"`
	NotCached      uint64 `json:"notCached"`
	OverBudget     uint64 `json:"overBudget"`
	ResentBytes    uint64 `json:"resentBytes"`
	Probes         uint64 `json:"probes"`
	KeyFramesAsked uint64 `json:"keyFramesAsked"`
	Subscriptions  uint64 `json:"subscriptions"`
}

func adaptCounts(c [numAdapt]uint64) AdaptCounts {
	return AdaptCounts{Nacked: c[adNacked], Resent: c[adResent], NotCached: c[adNotCached], OverBudget: c[adOverBudget],
		ResentBytes: c[adResentBytes], Probes: c[adProbes], KeyFramesAsked: c[adKeyFrames], Subscriptions: c[adSubscriptions]}
}

// adaptView turns a's totals and the last minute's growth, last1m, into
// rates over min(heard, 1 min), heard being how long the forwarder has
// sent the section.
func adaptView(a *protocol.LoadAdapt, last1m [numAdapt]uint64, heard time.Duration) *AdaptView {
	v := &AdaptView{Last1m: adaptCounts(last1m), Total: adaptCounts(adaptCounters(a))}
	secs := min(heard, adaptWindow).Seconds()
	if secs <= 0 {
		return v
	}
	perSec := func(i int) float64 { return float64(last1m[i]) / secs }
	v.WindowSecs = secs
	v.NackedPerSec, v.ResentPerSec = perSec(adNacked), perSec(adResent)
	v.NotCachedPerSec, v.OverBudgetPerSec = perSec(adNotCached), perSec(adOverBudget)
	// The outcomes are counted apart from the NACKs: a report can catch
	// one ahead of the other.
	if n, known := last1m[adNacked], last1m[adResent]+last1m[adNotCached]+last1m[adOverBudget]; n > known {
		v.BoundedPerSec = float64(n-known) / secs
	}
	v.ResentKBPerSec = perSec(adResentBytes) / 1000
	v.ProbesPerMin, v.KeyFramesPerMin, v.SubscriptionsPerMin = 60*perSec(adProbes), 60*perSec(adKeyFrames), 60*perSec(adSubscriptions)
	return v
}
