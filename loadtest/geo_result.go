package loadtest

import "net/netip"

// GeoResult is what the cities saw (present with Plan.Cities): where each
// call was placed and its worst mouth-to-ear estimate, and their
// distribution over the run and per city.
type GeoResult struct {
	// AllowanceMs is MouthToEarAllowance: what every estimate adds to the
	// measured path for the devices' own delays.
	AllowanceMs float64 `json:"allowance_ms"`
	// Calls counts the calls in which at least one member heard another;
	// OneRegion those placed in one region, Spanning those whose members
	// were in two or more (a trunk between them); SpanningPct = Spanning /
	// Calls.
	Calls       int     `json:"calls"`
	OneRegion   int     `json:"one_region"`
	Spanning    int     `json:"spanning"`
	SpanningPct float64 `json:"spanning_pct"`
	// MouthToEarMs is the distribution of the calls' worst mouth-to-ear
	// estimates.
	MouthToEarMs Percentiles `json:"mouth_to_ear_ms"`
	// Cities are the per-city figures, in the plan's order.
	Cities []CityResult `json:"cities"`
	// AccessDropped counts datagrams the access links dropped because
	// their queue was full (the generator's limit, not the city's loss).
	AccessDropped uint64 `json:"access_dropped"`
	// CallRecords are the calls one by one, up to 2000 (CallsOmitted: how
	// many more there were).
	CallRecords  []CallRecord `json:"call_records"`
	CallsOmitted int          `json:"calls_omitted,omitempty"`
}

// CityResult is one city's figures: its devices, where they were placed,
// and the calls it was in.
type CityResult struct {
	Name    string `json:"name"`
	Region  string `json:"region"`
	Devices int    `json:"devices"`
	// PlacedIn counts its devices by the region of the forwarder that
	// had them at the end of their call ("" when the plan does not say).
	PlacedIn map[string]int `json:"placed_in"`
	// CallsOneRegion and CallsSpanning count the calls with a member here;
	// MouthToEarMs is those calls' worst estimates.
	CallsOneRegion int         `json:"calls_one_region"`
	CallsSpanning  int         `json:"calls_spanning"`
	MouthToEarMs   Percentiles `json:"mouth_to_ear_ms"`
}

// CallRecord is one call: where its members were and its worst
// mouth-to-ear estimate.
type CallRecord struct {
	No      int               `json:"no"`
	Class   string            `json:"class"`
	Members []MemberPlacement `json:"members"`
	// Regions are the regions its members were placed in, sorted;
	// SpansRegions is true with two or more (the forwarders trunk it).
	Regions      []string `json:"regions"`
	SpansRegions bool     `json:"spans_regions"`
	// WorstMouthToEarMs is the largest, over the ordered member pairs
	// that heard each other, of WorstPathMs + AllowanceMs; WorstFrom and
	// WorstTo are that pair's member indexes. WorstPathMs is the 95th
	// percentile of the one-way delays the receiver measured from the
	// sender's frames (send time in the frame to arrival): the sender's
	// access link, the relay path with any trunk, the receiver's access
	// link. WorstAccessMs is the part of it the two cities' models
	// configure (each one-way delay + half its jitter), so WorstPathMs -
	// WorstAccessMs is the relay's part.
	WorstMouthToEarMs float64 `json:"worst_mouth_to_ear_ms"`
	WorstFrom         int     `json:"worst_from"`
	WorstTo           int     `json:"worst_to"`
	WorstPathMs       float64 `json:"worst_path_ms"`
	WorstAccessMs     float64 `json:"worst_access_ms"`
}

// MemberPlacement is where one member was.
type MemberPlacement struct {
	Index       int    `json:"index"`
	Participant string `json:"participant"`
	City        string `json:"city"`
	// Forwarder is the address of the forwarder that had it at the end
	// of the call (JoinedOn the one that admitted it, when another);
	// ForwarderID the forwarder's id when the locator named it; Region
	// the forwarder's region (Plan.Regions or the locator's answer).
	Forwarder   string `json:"forwarder"`
	ForwarderID string `json:"forwarder_id,omitempty"`
	Region      string `json:"region"`
	JoinedOn    string `json:"joined_on,omitempty"`
}

// geoAgg accumulates the aggregates (geo.mu).
type geoAgg struct {
	calls, one, spanning, omitted int
	m2e                           Sketch
	cities                        []cityAgg
}

type cityAgg struct {
	devices       int
	placed        map[string]int
	one, spanning int
	m2e           Sketch
}

func newGeoAgg(cities []City) geoAgg {
	a := geoAgg{cities: make([]cityAgg, len(cities))}
	for i := range a.cities {
		a.cities[i].placed = map[string]int{}
	}
	return a
}

// notePlaced records where each member is now (before the call closes).
func notePlaced(ms []*member) {
	for _, m := range ms {
		if m.via != nil {
			m.endOn = m.forwarderOf()
		}
	}
}

// record files a closed call whose listeners are all done.
func (g *geo) record(lc *liveCall) {
	rec := CallRecord{No: lc.spec.no, Class: lc.spec.class.String(), WorstFrom: -1, WorstTo: -1}
	regions := map[string]bool{}
	for _, m := range lc.members {
		where := g.where[m.endOn]
		mp := MemberPlacement{Index: m.idx, Participant: m.id.String(), City: g.p.Cities[m.city].Name,
			Forwarder: addrString(m.endOn), ForwarderID: where.id, Region: where.region}
		if m.joinedOn != m.endOn {
			mp.JoinedOn = addrString(m.joinedOn)
		}
		regions[where.region] = true
		rec.Members = append(rec.Members, mp)
	}
	rec.Regions = sortedKeys(regions)
	rec.SpansRegions = len(rec.Regions) > 1
	heard := g.worstPair(lc, &rec)
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, m := range lc.members {
		c := &g.agg.cities[m.city]
		c.devices++
		c.placed[g.where[m.endOn].region]++
	}
	if !heard {
		return
	}
	a := &g.agg
	a.calls++
	a.m2e.Add(rec.WorstMouthToEarMs)
	if rec.SpansRegions {
		a.spanning++
	} else {
		a.one++
	}
	seen := map[int]bool{}
	for _, m := range lc.members {
		if seen[m.city] {
			continue
		}
		seen[m.city] = true
		c := &a.cities[m.city]
		c.m2e.Add(rec.WorstMouthToEarMs)
		if rec.SpansRegions {
			c.spanning++
		} else {
			c.one++
		}
	}
	if len(g.calls) < maxCallRecords {
		g.calls = append(g.calls, rec)
	} else {
		a.omitted++
	}
}

// worstPair fills rec's worst pair from the listeners' per-sender delays
// and says whether any member heard another.
func (g *geo) worstPair(lc *liveCall, rec *CallRecord) bool {
	byIdx := make(map[int]*member, len(lc.members))
	for _, m := range lc.members {
		byIdx[m.idx] = m
	}
	heard := false
	for _, rx := range lc.members {
		if rx.ear == nil {
			continue
		}
		for ssrc, s := range rx.ear.streams {
			tx := byIdx[memberOf(ssrc)]
			if tx == nil || tx == rx || s.delay.Count() == 0 {
				continue
			}
			path := s.delay.Quantile(0.95)
			if e := path + ms(MouthToEarAllowance); !heard || e > rec.WorstMouthToEarMs {
				heard = true
				rec.WorstMouthToEarMs, rec.WorstPathMs = round3(e), round3(path)
				rec.WorstFrom, rec.WorstTo = tx.idx, rx.idx
				rec.WorstAccessMs = round3(g.accessMs(tx) + g.accessMs(rx))
			}
		}
	}
	return heard
}

// accessMs is m's city's configured one-way access delay: delay + half
// the jitter (the uniform draw's mean).
func (g *geo) accessMs(m *member) float64 {
	a := g.p.Cities[m.city].Access
	return ms(a.Delay.D()) + ms(a.Jitter.D())/2
}

// result is the run's GeoResult.
func (g *geo) result() *GeoResult { return g.partial().result(g.p.Cities) }

func addrString(a netip.AddrPort) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}
