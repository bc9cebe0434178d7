package conductor

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// liarFleet: Frankfurt and Johannesburg, 200 ms apart over the trunk.
func liarFleet() (map[string]PlacedForwarder, map[[2]string]time.Duration) {
	return map[string]PlacedForwarder{"fra-1": {Region: "eu"}, "jnb-1": {Region: "za"}},
		map[[2]string]time.Duration{{"eu", "za"}: ms(200)}
}

// A member lying about its RTTs must not move anyone else: the security
// review's case and variants, each through Place then Replace.
func TestPlacementLiarMovesOnlyItself(t *testing.T) {
	honest := func() PlacedMember { return member(2, "fra-1", map[string]int{"fra-1": 10, "jnb-1": 100}) }
	for _, tc := range []struct {
		name  string
		liar  map[string]int
		bad   bool            // the liar's report is dropped as impossible
		moves map[byte]string // who moves where (nil: nobody)
	}{
		// The review's example: fra 10 s is over the 5 s cap, the report is
		// dropped and nobody moves.
		{name: "review example", liar: map[string]int{"fra-1": 10_000, "jnb-1": 0}, bad: true},
		// Negative RTTs: dropped.
		{name: "negative", liar: map[string]int{"fra-1": 10, "jnb-1": -5}, bad: true},
		// Within the cap: 0 ms to jnb when fra is 100 ms and the trunk 200
		// ms is physically impossible ((200-100)/2 - 20 = 30 > 0).
		{name: "faster than the trunk", liar: map[string]int{"fra-1": 100, "jnb-1": 0}, bad: true},
		// A plausible lie (fra 1 s, jnb 0): the liar may move itself to
		// jnb, the honest member stays on fra (jnb is 90 ms worse for it).
		{name: "plausible lie", liar: map[string]int{"fra-1": 1000, "jnb-1": 0}, moves: map[byte]string{1: "jnb-1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fw, rr := liarFleet()
			in := &PlacementInput{Forwarders: fw, RegionRTT: rr, Members: []PlacedMember{member(1, "fra-1", tc.liar), honest()}}
			cfg := DefaultPlacementConfig()
			r, err := Place(cfg, in)
			require.NoError(t, err)
			require.Equal(t, "fra-1", r.Assign[pid(2)], "the honest member stays: %+v", r)
			if tc.bad {
				require.Equal(t, []protocol.ID{pid(1)}, r.BadReports)
				require.NotEmpty(t, BadReport(cfg, in, &in.Members[0]))
			} else {
				require.Empty(t, r.BadReports)
			}
			require.Empty(t, BadReport(cfg, in, &in.Members[1]), "the honest report passes the bounds")
			var want map[protocol.ID]string
			for b, f := range tc.moves {
				if want == nil {
					want = map[protocol.ID]string{}
				}
				want[pid(b)] = f
			}
			require.Equal(t, want, Replace(cfg, in, r, time.Time{}, time.Unix(1_800_000_000, 0)))
		})
	}
}

// Reversing the lie every cool-down bounces only the liar.
func TestPlacementLiarReversingBouncesOnlyItself(t *testing.T) {
	fw, rr := liarFleet()
	cfg := DefaultPlacementConfig()
	now := time.Unix(1_800_000_000, 0)
	cur := map[protocol.ID]string{pid(1): "fra-1", pid(2): "fra-1"}
	for round := range 6 {
		lie := map[string]int{"fra-1": 1000, "jnb-1": 0}
		if cur[pid(1)] == "jnb-1" {
			lie = map[string]int{"fra-1": 0, "jnb-1": 1000}
		}
		in := &PlacementInput{Forwarders: fw, RegionRTT: rr, Members: []PlacedMember{
			member(1, cur[pid(1)], lie),
			member(2, cur[pid(2)], map[string]int{"fra-1": 10, "jnb-1": 100}),
		}}
		r, err := Place(cfg, in)
		require.NoError(t, err)
		for id, to := range Replace(cfg, in, r, time.Time{}, now) {
			require.Equal(t, pid(1), id, "round %d: only the liar moves", round)
			cur[id] = to
		}
		require.Equal(t, "fra-1", cur[pid(2)], "round %d", round)
	}
}

// The conductor checks each report on receipt against the fleet's view
// (badReport, counted by observePlacement): only the forwarders it names.
func TestBadReportAgainstFleetView(t *testing.T) {
	view := &FleetView{Forwarders: map[string]FleetForwarder{"fra-1": {ID: "fra-1", Region: "eu"}, "jnb-1": {ID: "jnb-1", Region: "za"}},
		RegionRTT: map[[2]string]time.Duration{{"eu", "za"}: ms(200), {"za", "eu"}: ms(200)}}
	cfg := DefaultPlacementConfig()
	require.Empty(t, badReport(cfg, view, "fra-1", map[string]time.Duration{"fra-1": ms(10), "jnb-1": ms(100)}))
	require.Equal(t, "triangle", badReport(cfg, view, "fra-1", map[string]time.Duration{"fra-1": ms(10), "jnb-1": ms(50)}))
	require.Equal(t, "range", badReport(cfg, view, "fra-1", map[string]time.Duration{"fra-1": 6 * time.Second}))
	// From jnb the same bound holds the other way; unknown forwarders are not judged.
	require.Equal(t, "triangle", badReport(cfg, view, "jnb-1", map[string]time.Duration{"jnb-1": ms(20), "fra-1": 0}))
	require.Empty(t, badReport(cfg, view, "jnb-1", map[string]time.Duration{"jnb-1": ms(20), "gone-1": 0}))
}
