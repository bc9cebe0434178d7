package loadtest

import (
	"maps"
	"sort"
)

// GeoPartial is one agent's geo (Partial.Geo) in mergeable form: the
// counts, the mouth-to-ear sketches' buckets and the call records, so that
// Merge gives the GeoResult one process making every call would have.
type GeoPartial struct {
	Calls         int           `json:"calls"`
	OneRegion     int           `json:"one_region"`
	Spanning      int           `json:"spanning"`
	MouthToEar    Sketch        `json:"mouth_to_ear"`
	Cities        []CityPartial `json:"cities"` // in the plan's order
	AccessDropped uint64        `json:"access_dropped"`
	CallRecords   []CallRecord  `json:"call_records"`
	CallsOmitted  int           `json:"calls_omitted,omitempty"`
}

// CityPartial is one city's share of a GeoPartial.
type CityPartial struct {
	Devices    int            `json:"devices"`
	PlacedIn   map[string]int `json:"placed_in"`
	OneRegion  int            `json:"one_region"`
	Spanning   int            `json:"spanning"`
	MouthToEar Sketch         `json:"mouth_to_ear"`
}

// partial is the run's geo so far, copied.
func (g *geo) partial() *GeoPartial {
	g.mu.Lock()
	defer g.mu.Unlock()
	a := &g.agg
	gp := &GeoPartial{Calls: a.calls, OneRegion: a.one, Spanning: a.spanning, MouthToEar: a.m2e,
		AccessDropped: g.dropped.Load(), CallRecords: append([]CallRecord(nil), g.calls...), CallsOmitted: a.omitted}
	for i := range a.cities {
		c := &a.cities[i]
		gp.Cities = append(gp.Cities, CityPartial{Devices: c.devices, PlacedIn: maps.Clone(c.placed),
			OneRegion: c.one, Spanning: c.spanning, MouthToEar: c.m2e})
	}
	return gp
}

// mergeGeo adds the agents' geos up (nil when none has one): counts and
// sketches added, city by city in the plan's order, call records put
// together by call number, at most maxCallRecords (the rest counted in
// CallsOmitted).
func mergeGeo(ps []*Partial, cities []City) *GeoResult {
	var out *GeoPartial
	for _, p := range ps {
		o := p.Geo
		if o == nil {
			continue
		}
		if out == nil {
			out = &GeoPartial{}
		}
		out.Calls += o.Calls
		out.OneRegion += o.OneRegion
		out.Spanning += o.Spanning
		out.MouthToEar.Merge(&o.MouthToEar)
		out.AccessDropped += o.AccessDropped
		out.CallRecords = append(out.CallRecords, o.CallRecords...)
		out.CallsOmitted += o.CallsOmitted
		for len(out.Cities) < len(o.Cities) {
			out.Cities = append(out.Cities, CityPartial{PlacedIn: map[string]int{}})
		}
		for i := range o.Cities {
			c, oc := &out.Cities[i], &o.Cities[i]
			c.Devices += oc.Devices
			c.OneRegion += oc.OneRegion
			c.Spanning += oc.Spanning
			c.MouthToEar.Merge(&oc.MouthToEar)
			for r, n := range oc.PlacedIn {
				c.PlacedIn[r] += n
			}
		}
	}
	if out == nil {
		return nil
	}
	sort.Slice(out.CallRecords, func(i, j int) bool { return out.CallRecords[i].No < out.CallRecords[j].No })
	if n := len(out.CallRecords); n > maxCallRecords {
		out.CallsOmitted += n - maxCallRecords
		out.CallRecords = out.CallRecords[:maxCallRecords]
	}
	return out.result(cities)
}

// result is the GeoResult of gp, for the plan's cities.
func (gp *GeoPartial) result(cities []City) *GeoResult {
	out := &GeoResult{AllowanceMs: ms(MouthToEarAllowance), Calls: gp.Calls, OneRegion: gp.OneRegion, Spanning: gp.Spanning,
		MouthToEarMs: gp.MouthToEar.Percentiles(), AccessDropped: gp.AccessDropped,
		CallRecords: append([]CallRecord(nil), gp.CallRecords...), CallsOmitted: gp.CallsOmitted}
	if gp.Calls > 0 {
		out.SpanningPct = round3(100 * float64(gp.Spanning) / float64(gp.Calls))
	}
	sort.Slice(out.CallRecords, func(i, j int) bool { return out.CallRecords[i].No < out.CallRecords[j].No })
	for i, c := range cities {
		var cp CityPartial
		if i < len(gp.Cities) {
			cp = gp.Cities[i]
		}
		placed := maps.Clone(cp.PlacedIn)
		if placed == nil {
			placed = map[string]int{}
		}
		out.Cities = append(out.Cities, CityResult{Name: c.Name, Region: c.Region, Devices: cp.Devices, PlacedIn: placed,
			CallsOneRegion: cp.OneRegion, CallsSpanning: cp.Spanning, MouthToEarMs: cp.MouthToEar.Percentiles()})
	}
	return out
}
