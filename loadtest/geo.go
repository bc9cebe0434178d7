package loadtest

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/callrelay/callrelay/client"
)

// City is where a share of the devices are (issue 20): its coarse region
// (the one a locator is asked about) and the access link its devices
// reach the relay over.
type City struct {
	Name   string `json:"name" yaml:"name"`
	Region string `json:"region" yaml:"region"`
	// Share is the fraction, 0..1, of devices in the city; the cities'
	// shares sum to 1.
	Share  float64 `json:"share" yaml:"share"`
	Access Access  `json:"access,omitzero" yaml:"access,omitempty"`
}

// Access is a city's access-latency model, applied to every datagram of
// its devices in each direction by an access link on the generator's host
// (access.go): one-way Delay, plus a uniform draw in [0, Jitter], and
// LossPct per cent dropped at random.
type Access struct {
	Delay   Duration `json:"delay" yaml:"delay"`
	Jitter  Duration `json:"jitter,omitempty" yaml:"jitter,omitempty"`
	LossPct float64  `json:"loss_pct,omitempty" yaml:"loss_pct,omitempty"`
}

// Region names the forwarders of one region (each must be in
// Plan.Forwarders): a city's devices try its region's forwarders first,
// then the others (its neighbours), and a placement is read as a region
// from here. With a locator, Regions may be left out: the locator's
// answers say where each forwarder is, and a city region it does not
// know fails the run at its start.
type Region struct {
	Name       string           `json:"name" yaml:"name"`
	Forwarders []netip.AddrPort `json:"forwarders" yaml:"forwarders"`
}

// MouthToEarAllowance is what the mouth-to-ear estimate adds to the
// measured one-way path for what happens on the devices and is not
// emulated: one 20 ms Opus frame of packetisation, 5 ms of encoder
// look-ahead and a 40 ms jitter buffer.
const MouthToEarAllowance = 65 * time.Millisecond

// maxCallRecords bounds Result.Geo.Calls; calls beyond still count in the
// aggregates (CallsOmitted says how many were left out of the list).
const maxCallRecords = 2000

// validateGeo checks the cities, the regions and the locator.
func (p Plan) validateGeo() []error {
	var errs []error
	bad := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrPlan}, a...)...))
	}
	if len(p.Cities) == 0 {
		if len(p.Regions) > 0 || p.Locator != "" {
			bad("regions and locator need cities: declare where the devices are")
		}
		return errs
	}
	if p.Engine == EngineFast {
		bad("cities: the fast engine has no access links; use engine full")
	}
	if p.Transports.TCPShare > 0 {
		bad("cities with transports.tcp_share > 0: access links carry UDP only")
	}
	if len(p.Regions) == 0 && p.Locator == "" {
		bad("cities need regions (which forwarders are where) or a locator")
	}
	known := map[string]bool{}
	inPlan := map[netip.AddrPort]bool{}
	for _, a := range p.Forwarders {
		inPlan[a] = true
	}
	for i, r := range p.Regions {
		if r.Name == "" || known[r.Name] {
			bad("regions[%d].name = %q: want a unique, non-empty name", i, r.Name)
		}
		known[r.Name] = true
		for j, a := range r.Forwarders {
			if !inPlan[a] {
				bad("regions[%d].forwarders[%d] = %v is not in forwarders", i, j, a)
			}
		}
	}
	names, sum := map[string]bool{}, 0.0
	for i, c := range p.Cities {
		if c.Name == "" || names[c.Name] {
			bad("cities[%d].name = %q: want a unique, non-empty name", i, c.Name)
		}
		names[c.Name] = true
		if (len(p.Regions) > 0 || p.Locator == "") && !known[c.Region] {
			bad("cities[%d].region = %q: unknown region (regions: %v)", i, c.Region, regionNames(p.Regions))
		}
		if c.Share <= 0 || c.Share > 1 || math.IsNaN(c.Share) {
			bad("cities[%d].share = %v, want 0 < share <= 1", i, c.Share)
		}
		sum += c.Share
		if c.Access.Delay < 0 || c.Access.Jitter < 0 || c.Access.Delay.D()+c.Access.Jitter.D() > 2*time.Second {
			bad("cities[%d].access: delay %v and jitter %v, want each >= 0 and their sum <= 2s", i, c.Access.Delay.D(), c.Access.Jitter.D())
		}
		if c.Access.LossPct < 0 || c.Access.LossPct >= 100 || math.IsNaN(c.Access.LossPct) {
			bad("cities[%d].access.loss_pct = %v, want 0 <= loss_pct < 100", i, c.Access.LossPct)
		}
	}
	if math.Abs(sum-1) > 1e-6 {
		bad("cities: the shares sum to %v, want 1", sum)
	}
	if len(p.Cities) > 255 {
		bad("cities: %d declared, at most 255", len(p.Cities))
	}
	return errs
}

func regionNames(rs []Region) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.Name
	}
	return out
}

// drawCities draws each member's city index (nil: no cities).
func drawCities(seed uint64, size int, cities []City) []uint8 {
	if len(cities) == 0 {
		return nil
	}
	rng := rand.New(rand.NewPCG(seed, 0xc17)) //nolint:gosec // reproducible draws, not security
	out := make([]uint8, size)
	for i := range out {
		u, acc := rng.Float64(), 0.0
		out[i] = uint8(len(cities) - 1) //nolint:gosec // <= 255 (validated)
		for k, c := range cities {
			acc += c.Share
			if u < acc {
				out[i] = uint8(k) //nolint:gosec // <= 255
				break
			}
		}
	}
	return out
}

// geo is a run's cities: each region's candidates (the plan's, or the
// locator's answer), where every forwarder is, and the calls' records.
type geo struct {
	p       *Plan
	cands   map[string][]netip.AddrPort // by region: a device's candidates, its region's first
	where   map[netip.AddrPort]placeOf  // by forwarder address
	dropped atomic.Uint64               // datagrams the access links dropped at a full queue

	mu    sync.Mutex
	calls []CallRecord
	agg   geoAgg
}

type placeOf struct{ id, region string }

// newGeo prepares the cities of p (nil without cities), asking the
// locator, when the plan names one, for each city region's candidates.
func newGeo(ctx context.Context, p *Plan) (*geo, error) {
	if len(p.Cities) == 0 {
		return nil, nil
	}
	g := &geo{p: p, cands: map[string][]netip.AddrPort{}, where: map[netip.AddrPort]placeOf{}, agg: newGeoAgg(p.Cities)}
	for _, r := range p.Regions {
		for _, a := range r.Forwarders {
			g.where[a] = placeOf{region: r.Name}
		}
	}
	for _, c := range p.Cities {
		if _, done := g.cands[c.Region]; done {
			continue
		}
		cands, err := g.candidates(ctx, c.Region)
		if err != nil {
			return nil, err
		}
		g.cands[c.Region] = cands
	}
	return g, nil
}

// candidates are region's: the locator's answer when the plan names a
// locator (only forwarders of the plan: the generator sends to no other
// address), else the region's forwarders then the others.
func (g *geo) candidates(ctx context.Context, region string) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	if g.p.Locator != "" {
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		ans, err := client.Locate(lctx, nil, g.p.Locator, region)
		if err != nil {
			return nil, fmt.Errorf("loadtest: locator %s for region %s: %w", g.p.Locator, region, err)
		}
		for _, f := range ans.Forwarders {
			a, err := netip.ParseAddrPort(f.UDP)
			if err != nil || !slices.Contains(g.p.Forwarders, a) {
				continue
			}
			g.where[a] = placeOf{id: f.ID, region: f.Region}
			out = append(out, a)
		}
		if len(out) == 0 {
			return nil, fmt.Errorf("%w: locator %s answered no forwarder of the plan for region %s", ErrPlan, g.p.Locator, region)
		}
		return out, nil
	}
	for _, r := range g.p.Regions {
		if r.Name == region {
			out = append(out, r.Forwarders...)
		}
	}
	for _, a := range g.p.Forwarders {
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out, nil
}

// route puts member m of call c behind its city's access links: one per
// forwarder of the plan (its candidates first), m.via mapping each
// forwarder to its link. The device knows the forwarders by their own
// addresses (cfg.Forwarders are its candidates), and its sockets go
// through the links (client.Config.Route): its RTT reports name the
// forwarders as the conductor knows them, and a conductor's move
// (MigrateTo, naming the target's own address) takes it through its
// link to the target too, so its city's access delay stays on its path.
func (g *geo) route(cfg *client.Config, c *callSpec, m *member) error {
	city := g.p.Cities[c.cities[m.idx]]
	m.city = int(c.cities[m.idx])
	cands := g.cands[city.Region]
	all := append(append([]netip.AddrPort(nil), cands...), g.p.Forwarders...)
	m.via = make(map[netip.AddrPort]netip.AddrPort, len(all))
	for _, a := range all {
		if _, done := m.via[a]; done {
			continue
		}
		l, err := openAccess(a, g.p.LocalAddr, city.Access, c.seed+uint64(m.idx)<<8+uint64(len(m.links)), &g.dropped) //nolint:gosec // small
		if err != nil {
			m.closeLinks()
			return fmt.Errorf("loadtest: access link for %s: %w", city.Name, err)
		}
		m.links = append(m.links, l)
		m.via[a] = l.Addr()
	}
	cfg.Forwarders = append([]netip.AddrPort(nil), cands...)
	via := m.via // read-only from here on (Route runs on the session's goroutines)
	cfg.Route = func(f netip.AddrPort) netip.AddrPort {
		if l, ok := via[f]; ok {
			return l
		}
		return f // not a forwarder of the plan: reached directly
	}
	return nil
}

// closeLinks closes m's access links (after its session closed).
func (m *member) closeLinks() {
	for _, l := range m.links {
		l.Close()
	}
	m.links = nil
}

// forwarderOf is the forwarder m's session is on now.
func (m *member) forwarderOf() netip.AddrPort {
	if m.sess == nil {
		return netip.AddrPort{}
	}
	return m.sess.Forwarder()
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
