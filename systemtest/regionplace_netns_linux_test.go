package systemtest

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/conductor"
	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/linkem"
	"github.com/callrelay/callrelay/internal/testkit/regions"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// Placement proofs of issue 20 through the namespace topology: devices in
// city namespaces measure their RTT to every forwarder over the emulated
// network (a cookie challenge: one STUN round trip that joins nothing),
// the forwarders measure the trunk RTT between their regions, and the
// conductor's placement engine (conductor.Place, the function its
// partitions call with the RTTs devices report in CANDIDATE-RTTS) decides
// from those figures. Each device then joins where it was placed and
// sends audio; the one-way delays its peers see are what the test judges.
// The live loop (keepalive report -> metadata -> conductor -> PlacementMove
// -> MigrateTo) is systemtest's TestConductorMovesMemberWhoseRTTJumps;
// here the devices speak the wire protocol by hand from one socket each
// made inside their city's namespace (regions.CityDevice).
//
//	go test -race -run 'TestRegionPlace' -v ./systemtest/

// person is a device's city and SSRC.
type person struct {
	city string
	ssrc uint32
}

// placeFromProbes has each person's device measure its RTT to every
// forwarder and places the call with conductor.Place, as the conductor
// does from their reports. It returns the placement (by SSRC) and what
// Place returned.
func placeFromProbes(t *testing.T, e *regions.Env, tp *regions.Topology, nodes []*regions.Node, people []person) (map[uint32]string, conductor.PlacementResult) {
	t.Helper()
	clock := newClock(people)
	in := &conductor.PlacementInput{Forwarders: map[string]conductor.PlacedForwarder{}, RegionRTT: map[[2]string]time.Duration{}}
	for _, n := range nodes {
		in.Forwarders[n.ID] = conductor.PlacedForwarder{Region: n.Region}
		for _, m := range nodes {
			if m.Region != n.Region {
				in.RegionRTT[[2]string{n.Region, m.Region}] = regions.RegionRTT(n.F, m.Region)
			}
		}
	}
	ids := map[protocol.ID]uint32{}
	call := protocol.NewID()
	for _, p := range people {
		tok, id := e.Token(t, call, len(people))
		d := regions.NewCityDevice(t, tp, p.city, tok, p.ssrc, clock)
		m := conductor.PlacedMember{ID: id, RTT: map[string]time.Duration{}}
		for _, n := range nodes {
			rtt, err := d.ProbeRTT(n.F.Addr())
			require.NoError(t, err)
			m.RTT[n.ID] = rtt
		}
		t.Logf("%s (%#x) RTTs: %v", p.city, p.ssrc, m.RTT)
		in.Members = append(in.Members, m)
		ids[id] = p.ssrc
		d.Close()
	}
	placeStart := time.Now()
	res, err := conductor.Place(conductor.DefaultPlacementConfig(), in)
	require.NoError(t, err)
	t.Logf("Place took %v", time.Since(placeStart))
	bySSRC := map[uint32]string{}
	for id, f := range res.Assign {
		bySSRC[ids[id]] = f
	}
	return bySSRC, res
}

// newClock is a send clock for people's devices.
func newClock(people []person) regions.SendClock {
	var ssrcs []uint32
	for _, p := range people {
		ssrcs = append(ssrcs, p.ssrc)
	}
	return regions.NewSendClock(ssrcs...)
}

// pathFigures is what a call's receivers saw: the median one-way delay
// of each direction, and the worst of them.
type pathFigures struct {
	median map[[2]uint32]time.Duration // [to, from]
	worst  time.Duration
}

// runCall puts people in a new call on the forwarders assign names (by
// SSRC), has each send 4 s of audio, and returns the one-way delays their
// peers saw (the first half second of each sender left out: set-up).
func runCall(t *testing.T, e *regions.Env, tp *regions.Topology, nodes []*regions.Node, people []person, assign map[uint32]string) pathFigures {
	t.Helper()
	addr := map[string]netip.AddrPort{}
	for _, n := range nodes {
		addr[n.ID] = n.F.Addr()
	}
	clock := newClock(people)
	call := protocol.NewID()
	var ds []*regions.CityDevice
	for _, p := range people {
		tok, _ := e.Token(t, call, len(people))
		d := regions.NewCityDevice(t, tp, p.city, tok, p.ssrc, clock)
		got, _, err := d.Join(addr[assign[p.ssrc]])
		require.NoError(t, err, "%s joining %s", p.city, assign[p.ssrc])
		require.Equal(t, addr[assign[p.ssrc]], got, "%s admitted elsewhere", p.city)
		ds = append(ds, d)
	}
	var dones []chan struct{}
	for _, d := range ds {
		dones = append(dones, d.TalkN(200))
	}
	for _, c := range dones {
		<-c // bounded: 200 packets, or the device closed
	}
	fig := pathFigures{median: map[[2]uint32]time.Duration{}}
	testenv.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		for _, a := range ds {
			for _, b := range ds {
				if got, corrupt := a.From(b.SSRC); a != b && (got < 190 || corrupt > 0) {
					return fmt.Errorf("%#x heard %d of 200 from %#x (%d corrupt)", a.SSRC, got, b.SSRC, corrupt)
				}
			}
		}
		return nil
	})
	for _, a := range ds {
		for _, b := range ds {
			if a == b {
				continue
			}
			ds := a.Delays(b.SSRC)
			require.Greater(t, len(ds), 100)
			ds = ds[25:] // set-up: the first half second
			slices.Sort(ds)
			m := ds[len(ds)/2]
			fig.median[[2]uint32{a.SSRC, b.SSRC}] = m
			fig.worst = max(fig.worst, m)
		}
		a.Close()
	}
	return fig
}

// euZA is four cities, two near eu and two near za, the regions 90 ms
// apart each way (with 3 ms of jitter).
func euZA(t *testing.T) *regions.Topology {
	ms := time.Millisecond
	return regions.New(t, regions.Spec{Seed: 23, Sites: []regions.Site{{Name: "eu"}, {Name: "za"},
		{Name: "paris", Home: "eu", Access: linkem.Profile{Delay: 5 * ms}},
		{Name: "berlin", Home: "eu", Access: linkem.Profile{Delay: 8 * ms}},
		{Name: "capetown", Home: "za", Access: linkem.Profile{Delay: 6 * ms}},
		{Name: "joburg", Home: "za", Access: linkem.Profile{Delay: 4 * ms}}},
		Links: []regions.Link{{A: "eu", B: "za", OneWay: linkem.Profile{Delay: 90 * ms, Jitter: 3 * ms}}}})
}

// startEUZA starts a forwarder in each region and waits until both have
// measured their trunk RTT.
func startEUZA(t *testing.T, e *regions.Env, tp *regions.Topology) []*regions.Node {
	t.Helper()
	nodes := []*regions.Node{e.StartForwarder(t, tp, "eu", "fwd-eu", nil), e.StartForwarder(t, tp, "za", "fwd-za", nil)}
	testenv.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		for _, n := range nodes {
			if n.F.Regions().Echoes[forwarder.EchoOutcome("taken")] < 10 || regions.RegionRTT(n.F, map[string]string{"eu": "za", "za": "eu"}[n.Region]) == 0 {
				return fmt.Errorf("%s has not measured its trunk yet: %+v", n.ID, n.F.Regions())
			}
		}
		return nil
	})
	return nodes
}

// TestRegionPlaceTwoContinents: two members in Europe and two in South
// Africa land each near home, one forwarder per region (one trunk); the
// worst one-way delay their receivers see beats the best placement of
// all four in one region.
func TestRegionPlaceTwoContinents(t *testing.T) {
	tp := euZA(t)
	e := regions.NewEnv(t)
	nodes := startEUZA(t, e, tp)
	people := []person{{"paris", 0xa1}, {"berlin", 0xa2}, {"capetown", 0xb1}, {"joburg", 0xb2}}
	start := time.Now()
	assign, res := placeFromProbes(t, e, tp, nodes, people)
	took := time.Since(start)
	require.Equal(t, map[uint32]string{0xa1: "fwd-eu", 0xa2: "fwd-eu", 0xb1: "fwd-za", 0xb2: "fwd-za"}, assign)
	require.Equal(t, []string{"fwd-eu", "fwd-za"}, res.Used, "one trunk: two forwarders")
	trunkOut := nodes[0].F.Stats().TrunkOut
	spread := runCall(t, e, tp, nodes, people, assign)
	require.Positive(t, nodes[0].F.Stats().TrunkOut-trunkOut, "the call crossed the trunk")
	best := time.Duration(-1)
	var bestAt string
	for _, n := range nodes {
		one := map[uint32]string{}
		for _, p := range people {
			one[p.ssrc] = n.ID
		}
		f := runCall(t, e, tp, nodes, people, one)
		t.Logf("all on %s: worst direction median one-way %v", n.ID, f.worst)
		if best < 0 || f.worst < best {
			best, bestAt = f.worst, n.ID
		}
	}
	require.Less(t, spread.worst, best, "spread placement's worst path against all on %s", bestAt)
	t.Logf("placed %v (Place's worst RTT path %v; probes + Place %v); trunk RTT eu->za %v; spread: worst direction median one-way %v (%v); best single region (%s) %v",
		assign, res.Worst, took.Round(time.Millisecond), regions.RegionRTT(nodes[0].F, "za"), spread.worst, spread.median, bestAt, best)
}

// TestRegionPlaceOneCity: three people in paris land on the eu
// forwarder, nearby, with no trunk: za neither serves nor hears them.
func TestRegionPlaceOneCity(t *testing.T) {
	tp := euZA(t)
	e := regions.NewEnv(t)
	nodes := startEUZA(t, e, tp)
	people := []person{{"paris", 0xc1}, {"paris", 0xc2}, {"paris", 0xc3}}
	start := time.Now()
	assign, res := placeFromProbes(t, e, tp, nodes, people)
	took := time.Since(start)
	require.Equal(t, map[uint32]string{0xc1: "fwd-eu", 0xc2: "fwd-eu", 0xc3: "fwd-eu"}, assign)
	require.Equal(t, []string{"fwd-eu"}, res.Used)
	f := runCall(t, e, tp, nodes, people, assign)
	require.Zero(t, nodes[0].F.Stats().TrunkOut, "eu sent media over a trunk")
	// TrunkOut counts media frames only (trunk keepalives and RTT echoes
	// are TrunkIn's too, so that one is no witness).
	require.Zero(t, nodes[1].F.Stats().TrunkOut, "za sent media over a trunk")
	require.Zero(t, nodes[1].F.Stats().PacketsOut, "za sent media to a device")
	require.Zero(t, nodes[1].F.Stats().Sessions, "za serves a member")
	require.Less(t, f.worst, 60*time.Millisecond, "a path within paris crossed the 90 ms link")
	t.Logf("placed %v (Place's worst RTT path %v; probes + Place %v); worst direction median one-way %v (%v)",
		assign, res.Worst, took.Round(time.Millisecond), f.worst, f.median)
}
