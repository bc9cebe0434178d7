package conductor

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/callrelay/callrelay/protocol"
)

// Placement decides where a call's members attach: all on one forwarder,
// or each near home with trunks between the forwarders used. It is pure:
// everything it knows comes in a PlacementInput, and the same input gives
// the same answer.
//
// The cost of a placement is its worst member-to-member path, in round-trip
// time: for members i and j on forwarders a and b, access(i) + access(j) +
// trunk(a, b), where access is the member's reported RTT to its forwarder
// and trunk is 0 on one forwarder, PlacementConfig.IntraRegion between two
// forwarders of one region, and the inter-region RTT otherwise. Trunks are
// a full mesh (every forwarder sends one copy to each remote forwarder of
// the call), so a path has at most one trunk hop; MaxTrunkHops 0 keeps
// every call on one forwarder, and MaxForwarders bounds how many
// forwarders (trunk copies) one call may span.
//
// Search: every set of at most MaxForwarders forwarders among the
// candidates the members reported (at most maxPlacementCandidates, the
// nearest first), each member on the forwarder of the set nearest to it.
// A larger set must beat a smaller one by TrunkPenalty to be taken, so a
// call spreads only when it pays.
type PlacementConfig struct {
	// Budget: a placement avoiding throttling forwarders is taken while its
	// worst path is within Budget of the best placement's. Default 60ms.
	Budget time.Duration
	// AvoidLevel is the throttle level from which a forwarder (or its
	// region) is avoided for members not already on it. Default 2.
	AvoidLevel int
	// MaxTrunkHops: 0 keeps a call on one forwarder; 1 (the default, and
	// the most a full mesh of trunks gives) lets it span forwarders.
	MaxTrunkHops int
	// MaxForwarders bounds the forwarders one call spans. Default 3.
	MaxForwarders int
	// IntraRegion is the trunk RTT between two forwarders of one region.
	// Default 2ms.
	IntraRegion time.Duration
	// TrunkPenalty is what a placement on more forwarders must gain over
	// one on fewer to be preferred. Default 5ms.
	TrunkPenalty time.Duration
	// Re-placement hysteresis: an ongoing call is moved only when the new
	// placement's worst path is shorter by MinGain and by MinGainFraction
	// of the current one, and not within Cooldown of its last move.
	// Defaults 15ms, 0.2, 10s.
	MinGain         time.Duration
	MinGainFraction float64
	Cooldown        time.Duration
	// Every: the conductor places a call again at most this often, when
	// its members reported new RTTs (not used by Place). Default 500ms.
	Every time.Duration
	// Sustain: the conductor sends a move only once Replace has asked
	// for it, to the same forwarder, for this long (a lone RTT spike asks
	// once; with 1 s keepalives, two reports in a row). Default 500ms.
	Sustain time.Duration
	// First is the first-placement window. A member whose join (by the
	// call record the conductor read when it took the call, or its first
	// metadata if it joined later) is less than First old is new: it is
	// placed at the first decision tick after each RTT report of its,
	// with the other members held where they are, and moved at once
	// without the re-placement hysteresis above (no MinGain, Cooldown,
	// Sustain or Every), at most once; Place's own rules still hold (a
	// bad report is dropped, nobody goes further than Budget beyond its
	// own forwarder by its own report). After First, or once moved, it is
	// placed by the re-placement rules like everyone. 0: no first
	// placement. Default 2s (a device reports the RTTs of its race's
	// losers a round trip after its join, and the conductor waits up to
	// 600 ms for them). Not used by Place.
	First time.Duration
}

// DefaultPlacementConfig returns the defaults listed per field.
func DefaultPlacementConfig() PlacementConfig {
	return PlacementConfig{Budget: 60 * time.Millisecond, AvoidLevel: 2, MaxTrunkHops: 1, MaxForwarders: 3,
		IntraRegion: 2 * time.Millisecond, TrunkPenalty: 5 * time.Millisecond,
		MinGain: 15 * time.Millisecond, MinGainFraction: 0.2, Cooldown: 10 * time.Second, Every: 500 * time.Millisecond, Sustain: 500 * time.Millisecond,
		First: 2 * time.Second}
}

// Validate says what to fix.
func (c *PlacementConfig) Validate() error {
	var errs []error
	if c.Budget < 0 || c.IntraRegion < 0 || c.TrunkPenalty < 0 || c.MinGain < 0 || c.Cooldown < 0 {
		errs = append(errs, fmt.Errorf("placement: budget %s, intra-region %s, trunk penalty %s, min gain %s, cool-down %s: none may be negative",
			c.Budget, c.IntraRegion, c.TrunkPenalty, c.MinGain, c.Cooldown))
	}
	if c.AvoidLevel < 1 || c.AvoidLevel > protocol.MaxThrottleLevel+1 {
		errs = append(errs, fmt.Errorf("placement: avoid level %d, want 1..%d (%d: never avoid)", c.AvoidLevel, protocol.MaxThrottleLevel+1, protocol.MaxThrottleLevel+1))
	}
	if c.MaxTrunkHops < 0 || c.MaxTrunkHops > 1 {
		errs = append(errs, fmt.Errorf("placement: max trunk hops %d, want 0 or 1 (trunks are a full mesh)", c.MaxTrunkHops))
	}
	if c.MaxForwarders < 1 || c.MaxForwarders > 8 {
		errs = append(errs, fmt.Errorf("placement: max forwarders per call %d, want 1..8", c.MaxForwarders))
	}
	if c.Every <= 0 || c.Sustain < 0 || c.First < 0 {
		errs = append(errs, fmt.Errorf("placement: every %s (> 0), sustain %s (>= 0), first-placement window %s (>= 0)", c.Every, c.Sustain, c.First))
	}
	if c.MinGainFraction < 0 || c.MinGainFraction >= 1 {
		errs = append(errs, fmt.Errorf("placement: min gain fraction %g, want 0 <= it < 1", c.MinGainFraction))
	}
	return errors.Join(errs...)
}

// PlacedForwarder is what placement knows of one forwarder.
type PlacedForwarder struct {
	Region   string
	Level    int  // its throttle level
	Draining bool // never placed on
}

// PlacedMember is one member of the call.
type PlacedMember struct {
	ID      protocol.ID
	Current string                   // the forwarder serving it now ("" unknown)
	RTT     map[string]time.Duration // forwarder id -> the member's RTT to it
}

// PlacementInput is everything Place decides from.
type PlacementInput struct {
	Members    []PlacedMember
	Forwarders map[string]PlacedForwarder
	// RegionRTT is the RTT between two regions' forwarders over their
	// trunks, keyed by the pair in either order (a missing pair: those
	// regions are not combined). Region levels raise their forwarders'.
	RegionRTT    map[[2]string]time.Duration
	RegionLevels map[string]int
}

// PlacementResult is a placement and its cost.
type PlacementResult struct {
	Assign map[protocol.ID]string // member -> forwarder
	Worst  time.Duration          // the worst member-to-member path (RTT)
	Used   []string               // the forwarders used, sorted
	// Avoided says a throttling forwarder was left out within the budget;
	// Throttled that one is used because no alternative was within it.
	Avoided, Throttled bool
	// BadReports are the members whose RTT reports could not be true
	// (BadReport): placed as if they had reported nothing.
	BadReports []protocol.ID
}

// ErrNoPlacement says no placement reaches every member.
var ErrNoPlacement = errors.New("conductor: no placement reaches every member")

// maxPlacementCandidates bounds the forwarders the search considers.
const maxPlacementCandidates = 12

// Place computes the best placement for in.
func Place(cfg PlacementConfig, in *PlacementInput) (PlacementResult, error) {
	s := newPlacementSearch(cfg, in)
	best, ok := s.search(false)
	if !ok {
		return PlacementResult{}, ErrNoPlacement
	}
	if !best.throttled {
		return s.result(best), nil
	}
	if calm, ok := s.search(true); ok && calm.worst <= best.worst+cfg.Budget {
		r := s.result(calm)
		r.Avoided = true
		return r, nil
	}
	r := s.result(best)
	r.Throttled = true
	return r, nil
}

// Cost is the worst path of the given assignment (members missing from it
// stay where they are); math.MaxInt64 when a path cannot be computed (a
// forwarder nobody reported, or regions without a trunk RTT).
func Cost(cfg PlacementConfig, in *PlacementInput, assign map[protocol.ID]string) time.Duration {
	s := newPlacementSearch(cfg, in)
	at := make([]int, len(in.Members))
	for i, m := range in.Members {
		f, ok := assign[m.ID]
		if !ok {
			f = m.Current
		}
		at[i] = s.index(f)
		if at[i] < 0 && f != "" {
			return math.MaxInt64
		}
	}
	return s.worst(at)
}

// placementSearch holds the candidates as indexes for the search.
type placementSearch struct {
	cfg    PlacementConfig
	in     *PlacementInput
	ids    []string
	avoid  []bool            // throttling and not serving a member now
	access [][]time.Duration // [member][candidate], -1 unknown
	known  []bool            // per member: it reported an RTT to a candidate
	pinned []int             // per member: its current candidate when it reported nothing, else -1
	// limit: per member, the worst access its own report lets a placement
	// give it (its RTT to its current forwarder + Budget), -1 no limit.
	limit []time.Duration
	bad   []protocol.ID
}

type candidateSet struct {
	at        []int
	worst     time.Duration
	n         int
	moves     int
	throttled bool
}

func newPlacementSearch(cfg PlacementConfig, in *PlacementInput) *placementSearch {
	s := &placementSearch{cfg: cfg, in: in}
	best := map[string]time.Duration{}
	current := map[string]bool{}
	rtts := make([]map[string]time.Duration, len(in.Members))
	for i, m := range in.Members {
		current[m.Current] = true
		if BadReport(cfg, in, &in.Members[i]) != "" {
			s.bad = append(s.bad, m.ID)
			continue
		}
		rtts[i] = m.RTT
		for f, r := range m.RTT {
			if fw, ok := in.Forwarders[f]; !ok || fw.Draining || r < 0 {
				continue
			}
			if v, ok := best[f]; !ok || r < v {
				best[f] = r
			}
		}
	}
	for f := range best {
		s.ids = append(s.ids, f)
	}
	slices.SortFunc(s.ids, func(a, b string) int {
		if best[a] != best[b] {
			return int(best[a] - best[b])
		}
		return cmpString(a, b)
	})
	if len(s.ids) > maxPlacementCandidates {
		s.ids = s.ids[:maxPlacementCandidates]
	}
	for _, m := range in.Members { // a member's current forwarder is always a candidate
		if _, ok := in.Forwarders[m.Current]; ok && m.Current != "" && !slices.Contains(s.ids, m.Current) {
			s.ids = append(s.ids, m.Current)
		}
	}
	for _, f := range s.ids {
		fw := in.Forwarders[f]
		level := max(fw.Level, in.RegionLevels[fw.Region])
		s.avoid = append(s.avoid, level >= cfg.AvoidLevel && !current[f])
	}
	s.access = make([][]time.Duration, len(in.Members))
	s.pinned = make([]int, len(in.Members))
	s.limit = make([]time.Duration, len(in.Members))
	for i, m := range in.Members {
		row := make([]time.Duration, len(s.ids))
		known := false
		for c, f := range s.ids {
			row[c] = -1
			if r, ok := rtts[i][f]; ok && r >= 0 {
				row[c], known = r, true
			}
		}
		s.access[i], s.pinned[i], s.limit[i] = row, -1, -1
		s.known = append(s.known, known)
		if !known {
			s.pinned[i] = s.index(m.Current)
		} else if c := s.index(m.Current); c >= 0 && row[c] >= 0 {
			s.limit[i] = row[c] + cfg.Budget
		}
	}
	return s
}

// maxReportedRTT: a claimed RTT above it is not a measurement.
const maxReportedRTT = 5 * time.Second

// triangleSlack: internet paths are not triangles (a device may reach X by
// a shorter route than its forwarder's trunk takes), so the physical bound
// BadReport checks is halved and loosened by this much: it catches gross
// lies only; the rule that nobody is moved against its own report is what
// keeps a liar from moving others.
const triangleSlack = 20 * time.Millisecond

// BadReport says why m's RTT report cannot be true, or "" when it can: an
// RTT below 0 or above maxReportedRTT ("range"), or an RTT to a forwarder
// X shorter than the trunk RTT from m's current forwarder to X less m's
// RTT to its current one, halved, less triangleSlack ("triangle"): by the
// triangle inequality trunk(cur, X) <= RTT(cur) + RTT(X), give or take
// routing.
func BadReport(cfg PlacementConfig, in *PlacementInput, m *PlacedMember) string {
	for _, r := range m.RTT {
		if r < 0 || r > maxReportedRTT {
			return "range"
		}
	}
	here, ok := m.RTT[m.Current]
	if !ok || m.Current == "" {
		return ""
	}
	for f, r := range m.RTT {
		t, ok := trunkRTT(cfg, in, m.Current, f)
		if ok && r < (t-here)/2-triangleSlack {
			return "triangle"
		}
	}
	return ""
}

// trunkRTT is the RTT between forwarders a and b over their trunk: 0 on one
// forwarder, IntraRegion in one region, else the regions' RTT.
func trunkRTT(cfg PlacementConfig, in *PlacementInput, a, b string) (time.Duration, bool) {
	if a == b {
		return 0, true
	}
	fa, okA := in.Forwarders[a]
	fb, okB := in.Forwarders[b]
	if !okA || !okB {
		return 0, false
	}
	if fa.Region == fb.Region {
		return cfg.IntraRegion, true
	}
	if r, ok := in.RegionRTT[[2]string{fa.Region, fb.Region}]; ok {
		return r, true
	}
	r, ok := in.RegionRTT[[2]string{fb.Region, fa.Region}]
	return r, ok
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (s *placementSearch) index(f string) int {
	return slices.Index(s.ids, f)
}

// trunk is the RTT between two candidates' forwarders, or -1.
func (s *placementSearch) trunk(a, b int) time.Duration {
	if r, ok := trunkRTT(s.cfg, s.in, s.ids[a], s.ids[b]); ok {
		return r
	}
	return -1
}

// worst is the worst path of an assignment (candidate per member, -1 for a
// pinned member on an unknown forwarder, which is left out).
func (s *placementSearch) worst(at []int) time.Duration {
	n := len(s.ids)
	top1, top2 := make([]time.Duration, n), make([]time.Duration, n)
	count := make([]int, n)
	for i, c := range at {
		if c < 0 {
			continue
		}
		a := time.Duration(0) // a pinned member reported nothing: its access is unknown
		if s.access[i][c] >= 0 {
			a = s.access[i][c]
		} else if s.pinned[i] != c {
			return math.MaxInt64
		}
		count[c]++
		if a > top1[c] {
			top1[c], top2[c] = a, top1[c]
		} else if a > top2[c] {
			top2[c] = a
		}
	}
	var w time.Duration
	for a := range n {
		if count[a] == 0 {
			continue
		}
		if count[a] > 1 {
			w = max(w, top1[a]+top2[a])
		}
		for b := a + 1; b < n; b++ {
			if count[b] == 0 {
				continue
			}
			t := s.trunk(a, b)
			if t < 0 || s.cfg.MaxTrunkHops == 0 {
				return math.MaxInt64
			}
			w = max(w, top1[a]+top1[b]+t)
		}
	}
	return w
}

// search returns the best set of forwarders, leaving out the avoided ones
// if calm.
func (s *placementSearch) search(calm bool) (candidateSet, bool) {
	var pool []int
	for c := range s.ids {
		if !calm || !s.avoid[c] {
			pool = append(pool, c)
		}
	}
	limit := s.cfg.MaxForwarders
	if s.cfg.MaxTrunkHops == 0 {
		limit = 1
	}
	var best candidateSet
	found := false
	set := make([]int, 0, limit)
	var walk func(from int)
	walk = func(from int) {
		if len(set) > 0 {
			if cs, ok := s.evaluate(set); ok && (!found || s.better(cs, best)) {
				best, found = cs, true
			}
		}
		if len(set) == limit {
			return
		}
		for i := from; i < len(pool); i++ {
			set = append(set, pool[i])
			walk(i + 1)
			set = set[:len(set)-1]
		}
	}
	walk(0)
	return best, found
}

// evaluate puts each member on the forwarder of set nearest to it.
func (s *placementSearch) evaluate(set []int) (candidateSet, bool) {
	at := make([]int, len(s.in.Members))
	cs := candidateSet{at: at}
	used := make(map[int]bool, len(set)+1)
	for i, m := range s.in.Members {
		if !s.known[i] { // reported nothing: stays where it is, or is left out
			at[i] = s.pinned[i]
			if at[i] >= 0 {
				used[at[i]] = true
			}
			continue
		}
		cur := s.index(m.Current)
		at[i] = -1
		for _, c := range set {
			a := s.access[i][c]
			if a < 0 {
				continue
			}
			if at[i] < 0 || a < s.access[i][at[i]] || a == s.access[i][at[i]] && c == cur {
				at[i] = c
			}
		}
		if at[i] < 0 || s.limit[i] >= 0 && s.access[i][at[i]] > s.limit[i] {
			return cs, false // unreachable, or worse for it than where it is, by its own report
		}
		used[at[i]] = true
		if at[i] != cur {
			cs.moves++
		}
	}
	if len(used) > s.cfg.MaxForwarders {
		return cs, false
	}
	cs.n = len(used)
	for c := range used {
		cs.throttled = cs.throttled || s.avoid[c]
	}
	cs.worst = s.worst(at)
	return cs, cs.worst != math.MaxInt64
}

// better orders placements: worst path plus TrunkPenalty per extra
// forwarder, then fewer forwarders, then fewer moves.
func (s *placementSearch) better(a, b candidateSet) bool {
	sa := a.worst + time.Duration(a.n-1)*s.cfg.TrunkPenalty
	sb := b.worst + time.Duration(b.n-1)*s.cfg.TrunkPenalty
	if sa != sb {
		return sa < sb
	}
	if a.n != b.n {
		return a.n < b.n
	}
	return a.moves < b.moves
}

func (s *placementSearch) result(cs candidateSet) PlacementResult {
	r := PlacementResult{Assign: make(map[protocol.ID]string, len(cs.at)), Worst: cs.worst, BadReports: s.bad}
	for i, c := range cs.at {
		if c < 0 {
			continue
		}
		f := s.ids[c]
		r.Assign[s.in.Members[i].ID] = f
		if !slices.Contains(r.Used, f) {
			r.Used = append(r.Used, f)
		}
	}
	slices.Sort(r.Used)
	return r
}

// Replace decides whether an ongoing call moves from its current
// placement to next, under the hysteresis: the worst path must shrink by
// MinGain and by MinGainFraction of the current one, and the last move
// must be at least Cooldown ago. A current placement whose cost cannot be
// computed (a forwarder not heard of yet) is not judged: nobody moves. It
// returns the members to move, with their new forwarders (nil: stay).
func Replace(cfg PlacementConfig, in *PlacementInput, next PlacementResult, lastMove, now time.Time) map[protocol.ID]string {
	if !lastMove.IsZero() && now.Sub(lastMove) < cfg.Cooldown {
		return nil
	}
	cur := Cost(cfg, in, nil)
	gain := cur - next.Worst
	if cur == math.MaxInt64 || gain < cfg.MinGain || float64(gain) < cfg.MinGainFraction*float64(cur) {
		return nil
	}
	var moves map[protocol.ID]string
	for _, m := range in.Members {
		f, ok := next.Assign[m.ID]
		if !ok || m.Current == "" || f == m.Current {
			continue
		}
		if moves == nil {
			moves = make(map[protocol.ID]string)
		}
		moves[m.ID] = f
	}
	return moves
}
