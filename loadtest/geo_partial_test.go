package loadtest

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// geoCalls files n made-up calls (2 to 4 members each, from two cities,
// on two forwarders of two regions, some moved, some nobody heard) into
// the geo of call number % len(into) and into all.
func geoCalls(t *testing.T, n int, all *geo, into ...*geo) {
	t.Helper()
	eu, za := netip.MustParseAddrPort("127.0.0.1:4000"), netip.MustParseAddrPort("127.0.0.1:4001")
	rng := rand.New(rand.NewPCG(1, 2))
	for no := range n {
		lc := &liveCall{spec: &callSpec{no: no, class: protocol.ClassGroup}}
		heard := no%7 != 0
		for idx := range 2 + rng.IntN(3) {
			m := &member{idx: idx, id: protocol.NewID(), city: rng.IntN(2), endOn: eu, joinedOn: eu,
				ear: &listener{streams: map[uint32]*stream{}}}
			if rng.IntN(3) == 0 {
				m.endOn = za
			}
			lc.members = append(lc.members, m)
		}
		// Each pair's delays in buckets of their own, so that no two pairs
		// tie for the worst (a tie is broken by map order).
		base, k := 5+200*rng.Float64(), 0
		for _, rx := range lc.members {
			for _, tx := range lc.members {
				if tx == rx || !heard {
					continue
				}
				s := &stream{}
				for j := range 20 {
					s.delay.Add(base * math.Pow(1.1, float64(k)) * (1 + 0.001*float64(j)))
				}
				k++
				rx.ear.streams[uint32(tx.idx<<1)] = s
			}
		}
		into[no%len(into)].record(lc)
		all.record(lc)
	}
}

func geoPlan() Plan {
	p := mergePlan()
	p.Profile = Profile{Kind: ProfileSteady}
	p.Regions = []Region{{Name: "eu", Forwarders: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:4000")}},
		{Name: "za", Forwarders: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:4001")}}}
	p.Cities = []City{{Name: "london", Region: "eu", Share: 0.5}, {Name: "joburg", Region: "za", Share: 0.5}}
	return p
}

func newTestGeo(p *Plan) *geo {
	g := &geo{p: p, where: map[netip.AddrPort]placeOf{}, agg: newGeoAgg(p.Cities)}
	for _, r := range p.Regions {
		for _, a := range r.Forwarders {
			g.where[a] = placeOf{region: r.Name}
		}
	}
	return g
}

// Agents' geos merge into what one process making all their calls gives:
// the same counts, per-city placements, mouth-to-ear percentiles (added
// sketches) and call records, also through the partials' JSON; a partial
// without geo (an older agent) adds nothing.
func TestMergeGeo(t *testing.T) {
	p := geoPlan()
	a, b, all := newTestGeo(&p), newTestGeo(&p), newTestGeo(&p)
	geoCalls(t, 60, all, a, b)
	a.dropped.Store(3)
	b.dropped.Store(4)
	all.dropped.Store(7)
	want := all.result()
	require.Positive(t, want.Spanning)
	require.Positive(t, want.OneRegion)
	require.Less(t, want.Calls, 60, "some calls nobody heard")

	part := func(g *geo, agent string) *Partial {
		return &Partial{Agent: agent, Plan: p, Geo: g.partial()}
	}
	got := Merge(part(a, "a"), part(b, "b")).Geo
	require.Equal(t, want, got)

	var a2, b2 Partial
	for _, pair := range []struct{ in, out *Partial }{{part(a, "a"), &a2}, {part(b, "b"), &b2}} {
		j, err := json.Marshal(pair.in)
		require.NoError(t, err)
		require.NoError(t, json.Unmarshal(j, pair.out))
	}
	require.Equal(t, want, Merge(&a2, &b2, &Partial{Agent: "old", Plan: p}).Geo)
	require.Equal(t, want, Merge(part(all, "all")).Geo)
	require.Nil(t, Merge(&Partial{Agent: "old", Plan: p}).Geo, "no agent had cities")
	t.Logf("merged geo: %d calls, %d spanning, mouth-to-ear %+v", got.Calls, got.Spanning, got.MouthToEarMs)
}

// The merged call records keep the plan's bound: the lowest call numbers,
// the others counted as omitted.
func TestMergeGeoBoundsCallRecords(t *testing.T) {
	p := geoPlan()
	part := func(agent string, from, n, omitted int) *Partial {
		gp := &GeoPartial{Calls: n + omitted, OneRegion: n + omitted, CallsOmitted: omitted}
		for i := range n {
			gp.CallRecords = append(gp.CallRecords, CallRecord{No: from + 2*i, Class: "group", Regions: []string{"eu"}})
		}
		return &Partial{Agent: agent, Plan: p, Geo: gp}
	}
	got := Merge(part("a", 0, 1500, 10), part("b", 1, 1500, 20)).Geo
	require.Len(t, got.CallRecords, maxCallRecords)
	require.Equal(t, 1000+30, got.CallsOmitted)
	require.Equal(t, 3030, got.Calls)
	for i, c := range got.CallRecords {
		require.Equal(t, i, c.No, fmt.Sprint("record ", i))
	}
	require.Len(t, got.Cities, 2)
	require.Equal(t, "london", got.Cities[0].Name)
	require.NotNil(t, got.Cities[1].PlacedIn)
}
