package conductor

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

// fleet: two forwarders in Frankfurt (eu), one in Johannesburg (za), one in
// London (uk); eu-za 160 ms, eu-uk 15 ms, uk-za 170 ms over the trunks.
func fleet() (map[string]PlacedForwarder, map[[2]string]time.Duration) {
	return map[string]PlacedForwarder{
			"fra-1": {Region: "eu"}, "fra-2": {Region: "eu"}, "jnb-1": {Region: "za"}, "lon-1": {Region: "uk"},
		}, map[[2]string]time.Duration{
			{"eu", "za"}: ms(160), {"eu", "uk"}: ms(15), {"za", "uk"}: ms(170),
		}
}

func member(b byte, current string, rtts map[string]int) PlacedMember {
	m := PlacedMember{ID: pid(b), Current: current, RTT: map[string]time.Duration{}}
	for f, r := range rtts {
		m.RTT[f] = ms(r)
	}
	return m
}

func TestPlaceThreeInOneCity(t *testing.T) {
	fw, rr := fleet()
	in := &PlacementInput{Forwarders: fw, RegionRTT: rr, Members: []PlacedMember{
		member(1, "fra-1", map[string]int{"fra-1": 12, "fra-2": 14, "lon-1": 30, "jnb-1": 180}),
		member(2, "fra-2", map[string]int{"fra-1": 9, "fra-2": 8, "lon-1": 28, "jnb-1": 175}),
		member(3, "fra-1", map[string]int{"fra-1": 11, "fra-2": 11, "lon-1": 25, "jnb-1": 190}),
	}}
	r, err := Place(DefaultPlacementConfig(), in)
	require.NoError(t, err)
	require.Len(t, r.Used, 1, "one forwarder, no trunk: %+v", r)
	f := r.Used[0]
	require.Contains(t, []string{"fra-1", "fra-2"}, f)
	for _, m := range in.Members {
		require.Equal(t, f, r.Assign[m.ID])
	}
	// fra-1: worst pair 12+11 = 23; fra-2: 14+11 = 25; fra-1 wins.
	require.Equal(t, "fra-1", f)
	require.Equal(t, ms(23), r.Worst)
	require.False(t, r.Avoided || r.Throttled)
}

func TestPlaceEuropeAndSouthAfrica(t *testing.T) {
	fw, rr := fleet()
	in := &PlacementInput{Forwarders: fw, RegionRTT: rr, Members: []PlacedMember{
		member(1, "fra-1", map[string]int{"fra-1": 10, "lon-1": 20, "jnb-1": 170}),
		member(2, "fra-1", map[string]int{"fra-1": 14, "lon-1": 12, "jnb-1": 175}),
		member(3, "fra-1", map[string]int{"fra-1": 175, "jnb-1": 8}),
		member(4, "fra-1", map[string]int{"fra-1": 180, "jnb-1": 11}),
	}}
	cfg := DefaultPlacementConfig()
	r, err := Place(cfg, in)
	require.NoError(t, err)
	require.Equal(t, "jnb-1", r.Assign[pid(3)])
	require.Equal(t, "jnb-1", r.Assign[pid(4)])
	eu := r.Assign[pid(1)]
	require.Equal(t, "fra-1", eu, "both Europeans on one forwarder: a second trunk would not pay")
	require.Equal(t, eu, r.Assign[pid(2)])
	require.Equal(t, []string{"fra-1", "jnb-1"}, r.Used, "one trunk, between the two regions")
	// Worst: a European on fra-1 (14) to a South African on jnb-1 (11) over 160.
	require.Equal(t, ms(14+11+160), r.Worst)
	for _, single := range []string{"fra-1", "fra-2", "jnb-1", "lon-1"} {
		all := map[protocol.ID]string{}
		for _, m := range in.Members {
			all[m.ID] = single
		}
		require.Less(t, r.Worst, Cost(cfg, in, all), "the split beats everyone on %s", single)
	}
	// A new call kept on one forwarder (no trunk hops) takes the best single one.
	cfg.MaxTrunkHops = 0
	fresh := &PlacementInput{Forwarders: fw, RegionRTT: rr}
	for _, m := range in.Members {
		m.Current = ""
		fresh.Members = append(fresh.Members, m)
	}
	one, err := Place(cfg, fresh)
	require.NoError(t, err)
	require.Len(t, one.Used, 1)
	require.Equal(t, "jnb-1", one.Used[0], "jnb-1: 170+175 = 345 beats fra-1's 175+180")
	require.Equal(t, ms(345), one.Worst)
	// Members already on fra-1 are not moved to jnb-1, 160 ms worse for the
	// Europeans by their own reports (over the 60 ms budget): fra-1 stays.
	one, err = Place(cfg, in)
	require.NoError(t, err)
	require.Equal(t, []string{"fra-1"}, one.Used)
	require.Equal(t, ms(175+180), one.Worst)
}

func TestPlaceAvoidsThrottlingRegionWithinBudget(t *testing.T) {
	fw, rr := fleet()
	members := func(lon int) []PlacedMember {
		return []PlacedMember{
			member(1, "", map[string]int{"fra-1": 10, "lon-1": lon}),
			member(2, "", map[string]int{"fra-1": 12, "lon-1": lon}),
		}
	}
	// eu at level 2: London is 2×40 = 80 ms against Frankfurt's 22, within 60 ms.
	in := &PlacementInput{Forwarders: fw, RegionRTT: rr, RegionLevels: map[string]int{"eu": 2}, Members: members(40)}
	r, err := Place(DefaultPlacementConfig(), in)
	require.NoError(t, err)
	require.Equal(t, []string{"lon-1"}, r.Used)
	require.True(t, r.Avoided)
	require.Equal(t, ms(80), r.Worst)
	// London 2×50 = 100 > 22 + 60: Frankfurt is kept, throttling or not.
	in.Members = members(50)
	r, err = Place(DefaultPlacementConfig(), in)
	require.NoError(t, err)
	require.Equal(t, []string{"fra-1"}, r.Used)
	require.True(t, r.Throttled)
	// A forwarder's own level counts too; level 1 is not avoided by default.
	fw["fra-1"] = PlacedForwarder{Region: "eu", Level: 1}
	in.RegionLevels, in.Members = nil, members(40)
	r, err = Place(DefaultPlacementConfig(), in)
	require.NoError(t, err)
	require.Equal(t, []string{"fra-1"}, r.Used)
	require.False(t, r.Avoided || r.Throttled)
	// An ongoing call stays on its throttling forwarder: only new members avoid it.
	fw["fra-1"] = PlacedForwarder{Region: "eu", Level: 3}
	in.Members[0].Current, in.Members[1].Current = "fra-1", "fra-1"
	r, err = Place(DefaultPlacementConfig(), in)
	require.NoError(t, err)
	require.Equal(t, []string{"fra-1"}, r.Used)
	// Draining forwarders are never chosen.
	fw["fra-1"] = PlacedForwarder{Region: "eu", Draining: true}
	in.Members[0].Current, in.Members[1].Current = "", ""
	r, err = Place(DefaultPlacementConfig(), in)
	require.NoError(t, err)
	require.Equal(t, []string{"lon-1"}, r.Used)
}

func TestPlaceMembersWithoutReports(t *testing.T) {
	fw, rr := fleet()
	in := &PlacementInput{Forwarders: fw, RegionRTT: rr, Members: []PlacedMember{
		member(1, "fra-1", map[string]int{"fra-1": 10, "jnb-1": 200}),
		member(2, "jnb-1", nil), // nothing reported: stays on jnb-1
	}}
	r, err := Place(DefaultPlacementConfig(), in)
	require.NoError(t, err)
	require.Equal(t, "jnb-1", r.Assign[pid(2)])
	require.Equal(t, "fra-1", r.Assign[pid(1)])
	require.Equal(t, ms(10+160), r.Worst)

	// Nobody reachable: no placement.
	in.Members = []PlacedMember{member(1, "", map[string]int{"gone-1": 10})}
	_, err = Place(DefaultPlacementConfig(), in)
	require.True(t, errors.Is(err, ErrNoPlacement), "%v", err)
	// Regions without a measured trunk are not combined.
	in.Members = []PlacedMember{
		member(1, "", map[string]int{"fra-1": 10, "jnb-1": 300}),
		member(2, "", map[string]int{"fra-1": 300, "jnb-1": 10}),
	}
	in.RegionRTT = nil
	r, err = Place(DefaultPlacementConfig(), in)
	require.NoError(t, err)
	require.Len(t, r.Used, 1)
}

func TestReplaceHysteresis(t *testing.T) {
	fw, rr := fleet()
	cfg := DefaultPlacementConfig()
	now := time.Unix(1_800_000_000, 0)
	// Two members on fra-1 at 40 ms each (worst 80).
	in := &PlacementInput{Forwarders: fw, RegionRTT: rr, Members: []PlacedMember{
		member(1, "fra-1", map[string]int{"fra-1": 40, "fra-2": 36}),
		member(2, "fra-1", map[string]int{"fra-1": 40, "fra-2": 36}),
	}}
	r, err := Place(cfg, in)
	require.NoError(t, err)
	require.Equal(t, ms(72), r.Worst)
	require.Nil(t, Replace(cfg, in, r, time.Time{}, now), "8 ms (10%%) is not worth a move")

	// Member 1's RTT to fra-1 jumps to 120: worst 160 against 76 on fra-2.
	in.Members[0].RTT["fra-1"] = ms(120)
	r, err = Place(cfg, in)
	require.NoError(t, err)
	moves := Replace(cfg, in, r, time.Time{}, now)
	require.Equal(t, map[protocol.ID]string{pid(1): "fra-2", pid(2): "fra-2"}, moves)
	// ... but not within the cool-down of the last move.
	require.Nil(t, Replace(cfg, in, r, now.Add(-cfg.Cooldown/2), now))
	require.NotNil(t, Replace(cfg, in, r, now.Add(-cfg.Cooldown), now))

	// Flapping: RTTs that cross back and forth by a few ms never move anyone.
	in.Members[0].RTT["fra-1"] = ms(40)
	for i := range 20 {
		d := ms(3 * (i%2*2 - 1)) // +3, -3, ...
		for j := range in.Members {
			in.Members[j].RTT["fra-1"] = ms(40) + d
			in.Members[j].RTT["fra-2"] = ms(40) - d
		}
		r, err := Place(cfg, in)
		require.NoError(t, err)
		require.Nil(t, Replace(cfg, in, r, time.Time{}, now), "round %d: %+v", i, r)
	}
}

func TestPlacementConfigValidate(t *testing.T) {
	cfg := DefaultPlacementConfig()
	require.NoError(t, cfg.Validate())
	for _, bad := range []func(*PlacementConfig){
		func(c *PlacementConfig) { c.Budget = -1 },
		func(c *PlacementConfig) { c.AvoidLevel = 0 },
		func(c *PlacementConfig) { c.MaxTrunkHops = 2 },
		func(c *PlacementConfig) { c.MaxForwarders = 0 },
		func(c *PlacementConfig) { c.MinGainFraction = 1 },
	} {
		c := DefaultPlacementConfig()
		bad(&c)
		require.Error(t, c.Validate())
	}
}

func TestSustainedMoves(t *testing.T) {
	var pl callPlacement
	now := time.Unix(1_800_000_000, 0)
	a, b := pid(1), pid(2)
	want := map[protocol.ID]string{a: "fra-2"}
	require.Nil(t, pl.sustained(want, time.Second, now), "asked once: not yet")
	require.Nil(t, pl.sustained(want, time.Second, now.Add(500*time.Millisecond)))
	// A lone spike: the move is no longer asked for, and is forgotten.
	require.Nil(t, pl.sustained(nil, time.Second, now.Add(600*time.Millisecond)))
	require.Nil(t, pl.sustained(want, time.Second, now.Add(1200*time.Millisecond)), "asked again: the wait starts over")
	// Asked for to another forwarder: starts over too.
	require.Nil(t, pl.sustained(map[protocol.ID]string{a: "lon-1"}, time.Second, now.Add(1500*time.Millisecond)))
	require.Nil(t, pl.sustained(map[protocol.ID]string{a: "lon-1", b: "lon-1"}, time.Second, now.Add(2000*time.Millisecond)))
	got := pl.sustained(map[protocol.ID]string{a: "lon-1", b: "lon-1"}, time.Second, now.Add(2500*time.Millisecond))
	require.Equal(t, map[protocol.ID]string{a: "lon-1"}, got, "a asked for 1 s, b for 0.5 s")
	require.Empty(t, pl.wanted)
	// Sustain 0 sends at once.
	require.Equal(t, want, pl.sustained(want, 0, now))
}
