package report

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/loadtest"
)

// A run with cities gets the placement section: the calls in one region
// and spanning, the per-city table and the calls by worst mouth-to-ear,
// the worst first.
func TestFromResultGeo(t *testing.T) {
	r := &loadtest.Result{DurationMs: 3000}
	r.Plan.Profile.Kind = "steady"
	r.Geo = &loadtest.GeoResult{AllowanceMs: 65, Calls: 2, OneRegion: 1, Spanning: 1, SpanningPct: 50,
		MouthToEarMs: loadtest.Percentiles{Count: 2, P50: 120, P95: 211, Max: 211},
		Cities: []loadtest.CityResult{
			{Name: "london", Region: "eu", Devices: 3, PlacedIn: map[string]int{"eu": 3}, CallsOneRegion: 1, CallsSpanning: 1, MouthToEarMs: loadtest.Percentiles{Count: 2, P50: 120, P95: 211}},
			{Name: "joburg", Region: "za", Devices: 1, PlacedIn: map[string]int{"za": 1}, CallsSpanning: 1, MouthToEarMs: loadtest.Percentiles{Count: 1, P50: 211, P95: 211}},
		},
		CallRecords: []loadtest.CallRecord{
			{No: 1, Class: "one_to_one", Regions: []string{"eu"}, WorstMouthToEarMs: 120, WorstFrom: 0, WorstTo: 1, WorstPathMs: 55,
				Members: []loadtest.MemberPlacement{{Index: 0, City: "london", Region: "eu"}, {Index: 1, City: "london", Region: "eu"}}},
			{No: 2, Class: "one_to_one", Regions: []string{"eu", "za"}, SpansRegions: true, WorstMouthToEarMs: 211, WorstFrom: 1, WorstTo: 0, WorstPathMs: 146, WorstAccessMs: 41,
				Members: []loadtest.MemberPlacement{{Index: 0, City: "london", Region: "eu", ForwarderID: "fwd-eu"}, {Index: 1, City: "joburg", Region: "za"}}},
		}}
	in := FromResult(r)
	var geo *Section
	for i := range in.Sections {
		if in.Sections[i].Title == "Cities and placement" {
			geo = &in.Sections[i]
		}
	}
	require.NotNil(t, geo)
	require.Len(t, geo.Tables, 3)
	require.Equal(t, []string{"joburg", "za", "1", "za 1", "0", "1", "211", "211"}, geo.Tables[1].Rows[1])
	require.Equal(t, "2", geo.Tables[2].Rows[0][0], "the worst call first")
	require.Equal(t, "eu + za", geo.Tables[2].Rows[0][3])
	require.Contains(t, geo.Tables[2].Rows[0][2], "0 london @ eu fwd-eu")
	text := parsePage(t, render(t, in)).allText()
	for _, want := range []string{"Cities and placement", "spanning regions", "1 (50.0 %)", "worst mouth-to-ear"} {
		require.Contains(t, text, want)
	}
	r.Geo = nil
	for _, s := range FromResult(r).Sections {
		require.NotEqual(t, "Cities and placement", s.Title)
	}
}
