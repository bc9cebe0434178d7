package forwarder

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/callrelay/callrelay/protocol"
)

// Regional spill-over (issue 20, docs/architecture.md "Regions: the
// network"). A forwarder with a region refers the joins it refuses for
// load region first:
//
//  1. to the least loaded live, not draining peer of its own region whose
//     load is below ours (what pickLessLoaded does without regions);
//  2. failing that, only when the region is throttling at SpillLevel or
//     above (every live forwarder of the region it knows of, itself
//     included, is at that level or higher), to the nearest other region
//     by the trunk RTT this forwarder measured, among those within
//     SpillBudget whose forwarders admit the join's class, to its least
//     loaded forwarder there;
//  3. otherwise to nobody: the device is told to come back later (508).
//
// Ongoing calls are never moved by this: it only names an alternate in the
// answer to a join refused anyway. A forwarder without a region keeps the
// region-blind choice. Each referral (or its absence) is counted by outcome,
// and each join spilled to another region by that region too: the load
// report's spill-over section (protocol README 7.6) carries both, so the
// dashboard shows where each region's joins went.

type spillOutcome uint8

const (
	spillSameRegion spillOutcome = iota // a peer of our region with room
	spillSpilled                        // the nearest other region with room within the budget
	spillBelowLevel                     // the region is not throttling at SpillLevel: no other region is named
	spillOverBudget                     // regions with room exist, but all beyond the budget
	spillUnmeasured                     // regions with room exist, but their RTT is not measured
	spillNoRoom                         // no forwarder of another region admits the join
	numSpillOutcomes
)

var spillOutcomeNames = [numSpillOutcomes]string{"same_region", "spilled", "below_spill_level", "over_budget", "unmeasured", "no_room"}

// SpillOutcome names the index of RegionStats.Spill.
func SpillOutcome(name string) int {
	for i, n := range spillOutcomeNames {
		if n == name {
			return i
		}
	}
	return -1
}

// Set parses a throttle level by name (none, new_group, new_one_to_one,
// group_join, second_party) or number (0..4), for flags such as
// --spill-level.
func (l *ThrottleLevel) Set(s string) error {
	for i, n := range throttleNames {
		if s == n || s == strconv.Itoa(i) {
			*l = ThrottleLevel(i)
			return nil
		}
	}
	return fmt.Errorf("throttle level %q: want one of %v or 0..4", s, throttleNames)
}

// livePeer: heard within the peer timeout, announced media, not draining.
func (c *control) livePeer(p *peer, now time.Time) bool {
	return !p.last.Draining && p.last.Media.IsValid() && now.Sub(p.lastHeard()) <= c.f.cfg.Cluster.PeerTimeout
}

// pickRegional is pickLessLoaded for a forwarder with a region.
func (c *control) pickRegional(dev netip.AddrPort, class JoinClass, own int) netip.AddrPort {
	f := c.f
	cc := &f.cfg.Cluster
	rs := &f.live.regions
	now := f.cfg.Now()
	regionLevel := ThrottleLevel(f.thr.level.Load())
	var best *peer
	bestLoad, idle := own, c.sessionShare(own)
	for id, p := range c.peers {
		pr := rs.peers[id]
		if pr == nil || pr.region != cc.Region || !c.livePeer(p, now) {
			continue
		}
		if pr.hasLevel {
			regionLevel = min(regionLevel, pr.level)
		}
		if l := p.effectiveLoad(dev, idle, now); l < bestLoad || best != nil && l == bestLoad && p.last.ID < best.last.ID {
			best, bestLoad = p, l
		}
	}
	if best != nil {
		return c.referTo(best, dev, spillSameRegion)
	}
	if regionLevel < cc.SpillLevel {
		rs.spill[spillBelowLevel].Add(1)
		return netip.AddrPort{}
	}
	var bestRTT time.Duration
	var bestRegion string
	unmeasured, overBudget := false, false
	for id, p := range c.peers {
		pr := rs.peers[id]
		if pr == nil || pr.region == "" || pr.region == cc.Region || !pr.hasLevel || !pr.level.Admits(class) || !c.livePeer(p, now) {
			continue
		}
		rtt, ok := rs.regionRTT(pr.region)
		switch {
		case !ok:
			unmeasured = true
			continue
		case rtt > cc.SpillBudget:
			overBudget = true
			continue
		}
		if best == nil || rtt < bestRTT || rtt == bestRTT && (p.effectiveLoad(dev, idle, now) < best.effectiveLoad(dev, idle, now) ||
			p.effectiveLoad(dev, idle, now) == best.effectiveLoad(dev, idle, now) && p.last.ID < best.last.ID) {
			best, bestRTT, bestRegion = p, rtt, pr.region
		}
	}
	if best == nil {
		outcome := spillNoRoom
		if overBudget {
			outcome = spillOverBudget
		} else if unmeasured {
			outcome = spillUnmeasured
		}
		rs.spill[outcome].Add(1)
		return netip.AddrPort{}
	}
	rs.spillTo.add(bestRegion)
	return c.referTo(best, dev, spillSpilled)
}

// referTo names p to dev, counting the referral.
func (c *control) referTo(p *peer, dev netip.AddrPort, why spillOutcome) netip.AddrPort {
	p.referred.add(dev, c.f.cfg.Now())
	c.f.live.regions.spill[why].Add(1)
	return mediaFor(&p.last, dev)
}

// regionCost orders alternates for a drain or a hard refusal: our own
// region first, then other regions by measured RTT, regions not measured
// (or peers whose region is not known yet) last. Without a region of our
// own, every peer costs the same.
func (c *control) regionCost(id string) time.Duration {
	own := c.f.cfg.Cluster.Region
	if own == "" || c.f.live == nil {
		return 0
	}
	rs := &c.f.live.regions
	pr := rs.peers[id]
	switch {
	case pr == nil || pr.region == "":
		return time.Duration(1<<63 - 1)
	case pr.region == own:
		return 0
	}
	if rtt, ok := rs.regionRTT(pr.region); ok {
		return max(rtt, 1)
	}
	return time.Duration(1<<63 - 2)
}

// spillCounts counts the joins spilled to each other region since the
// process started, as the load report's spill-over section carries them:
// ascending by region, at most protocol.MaxSpillRegions rows, the joins to
// regions beyond the first MaxSpillRegions-1 in a row with no region
// (first). Admission adds (a join refused, not a packet); reports read.
type spillCounts struct {
	mu   sync.Mutex
	rows []protocol.RegionSpill
}

func (s *spillCounts) add(region string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cmp := func(r protocol.RegionSpill, t string) int { return strings.Compare(r.Region, t) }
	i, found := slices.BinarySearchFunc(s.rows, region, cmp)
	if !found {
		named := len(s.rows)
		if named > 0 && s.rows[0].Region == "" {
			named--
		}
		if named >= protocol.MaxSpillRegions-1 {
			i, found = 0, len(s.rows) > 0 && s.rows[0].Region == ""
			region = ""
		}
		if !found {
			s.rows = slices.Insert(s.rows, i, protocol.RegionSpill{Region: region})
		}
	}
	s.rows[i].Joins++
}

// snapshot returns a copy of the rows.
func (s *spillCounts) snapshot() []protocol.RegionSpill {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.rows)
}

// spillSection is the load report's spill-over section: the rows, and the
// joins refused at the spill level with no region in reach.
func (r *regionState) spillSection() protocol.LoadSpill {
	return protocol.LoadSpill{To: r.spillTo.snapshot(),
		Refused: r.spill[spillOverBudget].Load() + r.spill[spillUnmeasured].Load() + r.spill[spillNoRoom].Load()}
}
