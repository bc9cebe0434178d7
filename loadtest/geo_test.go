package loadtest

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"net"
	"net/http/httptest"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/conductor"
	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/linkem"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// startRegionForwarder runs a cluster forwarder of region on loopback,
// sharing the test's Redis and NATS, trusting pub.
//
// Its trunk sits behind a linkem link that delays what other forwarders
// send it by trunkDelay (one way; the two forwarders' links together make
// the inter-region path), as the trunk between two regions would.
func startRegionForwarder(t *testing.T, id, region string, pub ed25519.PublicKey, key protocol.ClusterKey, redisURL, natsURL string, trunkDelay time.Duration) (*forwarder.Forwarder, *linkem.Link) {
	t.Helper()
	// The port its trunk will bind, picked now so that the link knows
	// where to relay before the forwarder starts.
	probe, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	trunk := probe.LocalAddr().(*net.UDPAddr).AddrPort()
	require.NoError(t, probe.Close())
	link, err := linkem.New(trunk, linkem.Profile{Delay: trunkDelay}, linkem.Profile{}, 1)
	require.NoError(t, err)
	t.Cleanup(func() { _ = link.Close() })
	v, err := protocol.NewTokenVerifier(pub)
	require.NoError(t, err)
	store, err := statestore.OpenRedis(redisURL, statestore.Config{})
	require.NoError(t, err)
	nc, err := nats.Connect(natsURL)
	require.NoError(t, err)
	cfg := forwarder.Default()
	cfg.Listen, cfg.Verifier, cfg.Readers, cfg.Logger = "127.0.0.1:0", v, 2, zap.NewNop()
	cfg.Cluster.ID, cfg.Cluster.TrunkListen, cfg.Cluster.Key, cfg.Cluster.Region = id, trunk.String(), key, region
	cfg.Cluster.TrunkAdvertise = link.Addr()
	cfg.Cluster.Store, cfg.Cluster.NATS = store, nc
	cfg.Cluster.AnnounceEvery, cfg.Cluster.PeerTimeout = 100*time.Millisecond, 2*time.Second
	f, err := forwarder.New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = f.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; nc.Close(); _ = store.Close() })
	return f, link
}

// watchLegs polls the forwarders' legs until stop and counts, per
// participant, the polls that found it on each forwarder: where the
// forwarders really have the members.
func watchLegs(fs []*forwarder.Forwarder, stop <-chan struct{}) func() map[string]map[netip.AddrPort]int {
	seen := map[string]map[netip.AddrPort]int{}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			for _, f := range fs {
				for _, l := range f.Legs() {
					p := l.Participant.String()
					if seen[p] == nil {
						seen[p] = map[netip.AddrPort]int{}
					}
					seen[p][f.Addr()]++
				}
			}
		}
	}()
	return func() map[string]map[netip.AddrPort]int { wg.Wait(); return seen }
}

// TestCitiesPlacementAndMouthToEar: devices of two cities (london, 5 ms
// each way, region eu; joburg, 40 ms each way, region za) call through
// two cluster forwarders of regions eu and za (real Redis, NATS, UDP
// sockets on loopback; 30 ms each way on the trunk between them, linkem). Every call's members are recorded on the forwarder
// whose legs held them, with that forwarder's region; a call is spanning
// exactly when its members' regions differ; and each call's worst path is
// at least the configured access delays of its worst pair (the access
// links really delay), without a bound on how fast anything is.
//
// With a locator (a conductor.Locator over the forwarders' announcements
// on NATS, served over HTTP on loopback), the devices take its answer for
// their city's region, and each placement also names the forwarder's id.
//
// With a conductor placing the calls, the placement recorded is the
// conductor's: on loopback both forwarders are as near to every device
// (london 5 ms, joburg 40 ms each way to both), so a call's members race
// to either, and only the trunk (60 ms RTT) tells the two placements
// apart. The conductor puts each call on one forwarder at its first
// decision after the members' RTT reports (which name the forwarders by
// their own addresses: the devices reach them through their access links
// by client.Config.Route), and the moved devices keep their access links:
// no call ends spanning the regions, and every worst path still carries
// its pair's access delays.
func TestCitiesPlacementAndMouthToEar(t *testing.T) {
	for _, mode := range []string{"regions", "locator", "conductor"} {
		t.Run(mode, func(t *testing.T) { citiesRun(t, mode == "locator", mode == "conductor") })
	}
}

func citiesRun(t *testing.T, withLocator, withConductor bool) {
	pub, priv, err := protocol.GenerateSigningKey()
	require.NoError(t, err)
	key, err := protocol.NewClusterKey()
	require.NoError(t, err)
	rd, ns := testenv.Redis(t), testenv.NATS(t)
	const trunkDelay = 30 * time.Millisecond // each way between eu and za
	eu, euTrunk := startRegionForwarder(t, "fwd-eu", "eu", pub, key, rd.URL(), ns.ClientURL(), trunkDelay)
	za, zaTrunk := startRegionForwarder(t, "fwd-za", "za", pub, key, rd.URL(), ns.ClientURL(), trunkDelay)
	const joburgDelay, londonDelay = 40 * time.Millisecond, 5 * time.Millisecond
	plan := Plan{
		Forwarders:   []netip.AddrPort{eu.Addr(), za.Addr()},
		SigningKey:   priv,
		LocalAddr:    netip.MustParseAddr("127.0.0.1"),
		Mix:          Mix{OneToOne: 0.5, GroupMin: 3, GroupMax: 3},
		CallDuration: CallDuration{Mean: Duration(2 * time.Second), Min: Duration(1500 * time.Millisecond), Max: Duration(2500 * time.Millisecond)},
		Profile:      Profile{Kind: ProfileSteady, Steady: Steady{Rate: 2, Duration: Duration(3 * time.Second)}},
		Bounds:       Bounds{MaxDuration: Duration(10 * time.Second), MaxConcurrentCalls: 6, MaxCalls: 6},
		Targets:      Targets{LossPct: 5, DelayP95: Duration(300 * time.Millisecond)},
		Seed:         7,
		Regions:      []Region{{Name: "eu", Forwarders: []netip.AddrPort{eu.Addr()}}, {Name: "za", Forwarders: []netip.AddrPort{za.Addr()}}},
		Cities: []City{
			// 5 ms: both forwarders are on loopback, so london reaches za as
			// soon as eu; with no delay at all its RTT to za (0) would be
			// under what the 60 ms trunk from eu allows, and the conductor
			// would drop its reports as impossible (conductor.BadReport).
			{Name: "london", Region: "eu", Share: 0.5, Access: Access{Delay: Duration(londonDelay)}},
			{Name: "joburg", Region: "za", Share: 0.5, Access: Access{Delay: Duration(joburgDelay), Jitter: Duration(2 * time.Millisecond)}},
		},
	}
	var moves func() float64
	if withConductor {
		// Calls of 4 s, run to their end (the run stops at max_calls, not
		// when the arrivals end): the first placement comes about 1.2 s
		// into a call (the second keepalive, a second after the join).
		plan.CallDuration = CallDuration{Mean: Duration(4 * time.Second), Min: Duration(3500 * time.Millisecond), Max: Duration(4500 * time.Millisecond)}
		plan.Profile.Steady.Duration = Duration(12 * time.Second)
		plan.Bounds.MaxDuration = Duration(15 * time.Second)
		moves = startConductor(t, key, rd.URL(), ns.ClientURL())
	}
	idOf := map[string]string{}
	if withLocator {
		plan.Regions, plan.Locator = nil, startLocator(t, key, ns.ClientURL(), 2)
		idOf = map[string]string{eu.Addr().String(): "fwd-eu", za.Addr().String(): "fwd-za"}
	}
	stop := make(chan struct{})
	legs := watchLegs([]*forwarder.Forwarder{eu, za}, stop)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	res, err := Run(ctx, plan, nil)
	close(stop)
	require.NoError(t, err)
	seen := legs()
	g := res.Geo
	require.NotNil(t, g)
	require.NotEmpty(t, g.CallRecords)
	require.Equal(t, g.Calls, g.OneRegion+g.Spanning)
	require.Equal(t, 65.0, g.AllowanceMs)
	regionOf := map[string]string{eu.Addr().String(): "eu", za.Addr().String(): "za"}
	delayOf := map[string]float64{"london": ms(londonDelay), "joburg": ms(joburgDelay)}
	accessOf := map[string]float64{"london": ms(londonDelay), "joburg": ms(joburgDelay) + 1} // + half the 2 ms jitter
	var withJoburg, devices int
	for _, c := range g.CallRecords {
		regions := map[string]bool{}
		for _, m := range c.Members {
			require.NotEmpty(t, m.Forwarder, "call %d member %d", c.No, m.Index)
			require.Equal(t, regionOf[m.Forwarder], m.Region, "call %d member %d", c.No, m.Index)
			require.Equal(t, idOf[m.Forwarder], m.ForwarderID, "call %d member %d", c.No, m.Index)
			require.Contains(t, delayOf, m.City)
			regions[m.Region] = true
			// The forwarder recorded is the one whose legs held it longest.
			on := seen[m.Participant]
			require.NotEmpty(t, on, "participant %s never seen on a forwarder", m.Participant)
			best, bestN := netip.AddrPort{}, 0
			for a, n := range on {
				if n > bestN {
					best, bestN = a, n
				}
			}
			if withConductor { // a member moved late in its call: the last forwarder, not the longest
				require.Contains(t, on, netip.MustParseAddrPort(m.Forwarder), "call %d member %d: legs %v", c.No, m.Index, on)
			} else {
				require.Equal(t, best.String(), m.Forwarder, "call %d member %d: legs %v", c.No, m.Index, on)
			}
			if m.City == "joburg" {
				withJoburg++
			}
			devices++
		}
		require.Equal(t, len(regions) > 1, c.SpansRegions, "call %d", c.No)
		require.Len(t, c.Regions, len(regions))
		// The worst pair's path includes both access links' delay.
		from, to := c.Members[memberAt(t, c, c.WorstFrom)], c.Members[memberAt(t, c, c.WorstTo)]
		floor := delayOf[from.City] + delayOf[to.City]
		require.GreaterOrEqual(t, c.WorstPathMs, floor, "call %d (%s -> %s)", c.No, from.City, to.City)
		if c.SpansRegions { // some pair crosses the trunk: its path has the trunk's delay at least
			require.GreaterOrEqual(t, c.WorstPathMs, ms(trunkDelay), "call %d spans regions", c.No)
		}
		require.InDelta(t, c.WorstPathMs+g.AllowanceMs, c.WorstMouthToEarMs, 0.01)
		require.InDelta(t, accessOf[from.City]+accessOf[to.City], c.WorstAccessMs, 0.01)
	}
	require.Positive(t, withJoburg, "the seed gives no joburg device: pick another")
	if g.Spanning > 0 { // the spanning calls' media crossed the delayed trunks
		require.Positive(t, euTrunk.Stats().Up.Delivered+zaTrunk.Stats().Up.Delivered)
	}
	n := 0
	for _, c := range g.Cities {
		n += c.Devices
	}
	require.GreaterOrEqual(t, n, devices) // the cities also count members of calls in which nobody heard anyone
	t.Logf("geo: %d calls, %d one region, %d spanning; mouth-to-ear %+v; cities %+v", g.Calls, g.OneRegion, g.Spanning, g.MouthToEarMs, g.Cities)
	if withConductor {
		moved := 0
		for _, c := range g.CallRecords {
			for _, m := range c.Members {
				if m.JoinedOn != "" {
					moved++
				}
			}
		}
		t.Logf("conductor: %v moves sent, %d members recorded on another forwarder than the one that admitted them; %d of %d calls spanning",
			moves(), moved, g.Spanning, g.Calls)
		// The report's placement is the conductor's: members it moved are
		// recorded where it moved them (checked against the legs above),
		// through their access links (the worst paths above). A member
		// moved there and back again shows as not moved, so at most as
		// many as the moves sent.
		require.Positive(t, moved, "the races split calls that the conductor put together")
		require.LessOrEqual(t, float64(moved), moves())
	}
}

// startConductor runs a conductor over the test's Redis and NATS, and
// returns a function counting the members it moved.
func startConductor(t *testing.T, key protocol.ClusterKey, redisURL, natsURL string) func() float64 {
	t.Helper()
	store, err := statestore.OpenRedis(redisURL, statestore.Config{})
	require.NoError(t, err)
	nc, err := nats.Connect(natsURL)
	require.NoError(t, err)
	reg := prometheus.NewRegistry()
	cfg := conductor.Default()
	cfg.ID, cfg.NATS, cfg.Key, cfg.Store, cfg.Leases, cfg.Registerer, cfg.Logger = "cond-1", nc, key, store, store, reg, zap.NewNop()
	cfg.LeaseTTL, cfg.AcquireEvery = time.Second, 100*time.Millisecond
	c, err := conductor.New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; nc.Close(); _ = store.Close() })
	testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if n := len(c.Owned()); n != cfg.Partitions {
			return fmt.Errorf("the conductor holds %d partitions of %d", n, cfg.Partitions)
		}
		return nil
	})
	return func() float64 {
		mfs, err := reg.Gather()
		require.NoError(t, err)
		total := 0.0
		for _, mf := range mfs {
			if mf.GetName() == "callrelay_conductor_placement_moves_total" {
				for _, m := range mf.GetMetric() {
					total += m.GetCounter().GetValue()
				}
			}
		}
		return total
	}
}

// startLocator serves a conductor.Locator over the forwarders' messages
// on NATS (regions eu and za neighbours of each other) on loopback, once
// it knows want forwarders, and returns its base URL.
func startLocator(t *testing.T, key protocol.ClusterKey, natsURL string, want int) string {
	t.Helper()
	nc, err := nats.Connect(natsURL)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	fleet := conductor.NewFleet(key, 2*time.Second, nil)
	require.NoError(t, fleet.Subscribe(nc, "callrelay"))
	t.Cleanup(fleet.Close)
	nb, err := conductor.ParseRegionTable("eu:za;za:eu")
	require.NoError(t, err)
	srv := httptest.NewServer(conductor.NewLocator(fleet, conductor.LocatorConfig{Neighbours: nb, Registerer: prometheus.NewRegistry()}))
	t.Cleanup(srv.Close)
	testenv.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		ans, err := client.Locate(context.Background(), nil, srv.URL, "eu")
		if err != nil {
			return err
		}
		if len(ans.Forwarders) != want {
			return fmt.Errorf("the locator knows %d forwarders, want %d", len(ans.Forwarders), want)
		}
		return nil
	})
	return srv.URL
}

func memberAt(t *testing.T, c CallRecord, idx int) int {
	t.Helper()
	for i, m := range c.Members {
		if m.Index == idx {
			return i
		}
	}
	require.FailNow(t, "no such member", "call %d has no member %d", c.No, idx)
	return -1
}

// Bad city plans are refused with an error naming the field.
func TestValidateCities(t *testing.T) {
	fa, fb := netip.MustParseAddrPort("127.0.0.1:4000"), netip.MustParseAddrPort("127.0.0.1:4001")
	base := func() Plan {
		p := idlePlan(t, 1).WithDefaults()
		p.Forwarders = []netip.AddrPort{fa, fb}
		p.Regions = []Region{{Name: "eu", Forwarders: []netip.AddrPort{fa}}, {Name: "za", Forwarders: []netip.AddrPort{fb}}}
		p.Cities = []City{{Name: "london", Region: "eu", Share: 0.6}, {Name: "joburg", Region: "za", Share: 0.4, Access: Access{Delay: Duration(40 * time.Millisecond)}}}
		return p
	}
	require.NoError(t, base().Validate())
	for _, tc := range []struct {
		name, want string
		mod        func(*Plan)
	}{
		{"unknown region", `cities[1].region = "af": unknown region`, func(p *Plan) { p.Cities[1].Region = "af" }},
		{"shares", "cities: the shares sum to 0.9, want 1", func(p *Plan) { p.Cities[0].Share = 0.5 }},
		{"zero share", "cities[0].share = 0", func(p *Plan) { p.Cities[0].Share, p.Cities[1].Share = 0, 1 }},
		{"negative delay", "cities[1].access: delay -1ms", func(p *Plan) { p.Cities[1].Access.Delay = Duration(-time.Millisecond) }},
		{"negative jitter", "jitter -1ms", func(p *Plan) { p.Cities[1].Access.Jitter = Duration(-time.Millisecond) }},
		{"loss", "cities[0].access.loss_pct = 100", func(p *Plan) { p.Cities[0].Access.LossPct = 100 }},
		{"duplicate city", `cities[1].name = "london"`, func(p *Plan) { p.Cities[1].Name = "london" }},
		{"region forwarder", "regions[1].forwarders[0] = 127.0.0.1:5000 is not in forwarders", func(p *Plan) { p.Regions[1].Forwarders[0] = netip.MustParseAddrPort("127.0.0.1:5000") }},
		{"regions without cities", "regions and locator need cities", func(p *Plan) { p.Cities = nil }},
		{"no regions", "cities need regions (which forwarders are where) or a locator", func(p *Plan) { p.Regions = nil }},
		{"fast engine", "cities: the fast engine", func(p *Plan) { p.Engine = EngineFast }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := base()
			tc.mod(&p)
			err := p.Validate()
			require.ErrorIs(t, err, ErrPlan)
			require.ErrorContains(t, err, tc.want)
		})
	}
}

// The access link really delays: a datagram and its echo through a 30 ms
// link take at least 60 ms, through one of 0 ms less (on loopback: the
// comparison is of the floor, not of the machine's speed).
func TestAccessLinkDelaysBothWays(t *testing.T) {
	echo, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer echo.Close()
	go func() {
		b := make([]byte, 1500)
		for {
			n, a, err := echo.ReadFromUDPAddrPort(b)
			if err != nil {
				return
			}
			_, _ = echo.WriteToUDPAddrPort(b[:n], a)
		}
	}()
	var dropped atomic.Uint64
	l, err := openAccess(echo.LocalAddr().(*net.UDPAddr).AddrPort(), netip.Addr{}, Access{Delay: Duration(30 * time.Millisecond)}, 1, &dropped)
	require.NoError(t, err)
	defer l.Close()
	dev, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer dev.Close()
	for i := range 5 {
		began := time.Now()
		_, err = dev.WriteToUDPAddrPort([]byte{byte(i)}, l.Addr())
		require.NoError(t, err)
		require.NoError(t, dev.SetReadDeadline(time.Now().Add(5*time.Second)))
		b := make([]byte, 16)
		n, from, err := dev.ReadFromUDPAddrPort(b)
		require.NoError(t, err)
		require.Equal(t, []byte{byte(i)}, b[:n])
		require.Equal(t, l.Addr(), unmapAP(from))
		require.GreaterOrEqual(t, time.Since(began), 60*time.Millisecond)
	}
	require.Zero(t, dropped.Load())
}

// A plan file declares cities, regions and a locator (README "Cities").
func TestParsePlanCities(t *testing.T) {
	p, err := ParsePlan([]byte(`
forwarders: [127.0.0.1:4000, 127.0.0.1:4001]
regions:
  - {name: eu, forwarders: [127.0.0.1:4000]}
  - {name: za, forwarders: [127.0.0.1:4001]}
cities:
  - {name: london, region: eu, share: 0.7, access: {delay: 8ms, jitter: 4ms}}
  - {name: joburg, region: za, share: 0.3, access: {delay: 35ms, jitter: 10ms, loss_pct: 0.5}}
locator: http://127.0.0.1:8090
`))
	require.NoError(t, err)
	require.Len(t, p.Cities, 2)
	require.Equal(t, City{Name: "joburg", Region: "za", Share: 0.3, Access: Access{Delay: Duration(35 * time.Millisecond), Jitter: Duration(10 * time.Millisecond), LossPct: 0.5}}, p.Cities[1])
	require.Equal(t, "http://127.0.0.1:8090", p.Locator)
	require.Equal(t, []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:4001")}, p.Regions[1].Forwarders)
	p.SigningKey = make([]byte, ed25519.PrivateKeySize)
	require.NoError(t, p.WithDefaults().Validate())
}
