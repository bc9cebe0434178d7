package systemtest

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/conductor"
	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/calltest"
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
// made inside their city's namespace (regionplace_helpers_linux_test.go).
//
//	go test -race -run 'TestRegionPlace' -v ./systemtest/

// sendClock is when each audio packet was sent, by SSRC and sequence
// number: filled before the devices start, read-only as a map after.
type sendClock map[uint32]*[1 << 16]atomic.Int64

// timedDevice is a cityDevice whose reader also keeps the one-way delay
// of every audio packet it receives (sender and receiver share this
// process's clock).
type timedDevice struct {
	*cityDevice
	clock  sendClock
	dmu    sync.Mutex
	delays map[uint32][]time.Duration
}

func newTimedDevice(t *testing.T, tp *regions.Topology, city string, token []byte, ssrc uint32, clock sendClock) *timedDevice {
	t.Helper()
	d := &cityDevice{t: t, token: token, ssrc: ssrc, answers: make(chan []byte, 16), got: map[uint32]int{}, stop: make(chan struct{})}
	require.NoError(t, tp.Do(city, func() error {
		var err error
		d.conn, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(tp.Addr(city), 0)))
		return err
	}))
	_ = d.conn.SetReadBuffer(1 << 20)
	td := &timedDevice{cityDevice: d, clock: clock, delays: map[uint32][]time.Duration{}}
	d.wg.Add(1)
	go func() { defer d.wg.Done(); td.read() }()
	t.Cleanup(d.close)
	return td
}

func (td *timedDevice) read() {
	buf := make([]byte, 2048)
	for {
		n, _, err := td.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		at := time.Now().UnixNano()
		b := buf[:n]
		if stun.IsMessage(b) {
			select {
			case td.answers <- append([]byte(nil), b...):
			default:
			}
			continue
		}
		if len(b) < 20 || protocol.Classify(b) != protocol.KindRTP {
			continue
		}
		ssrc, seq := binary.BigEndian.Uint32(b[8:12]), binary.BigEndian.Uint16(b[2:4])
		slot := td.clock[ssrc]
		td.mu.Lock()
		if slot == nil || slot[seq].Load() == 0 || len(b) != 110 || b[20] != payloadOf(ssrc, seq, 20) {
			td.corrupt++
		} else {
			td.got[ssrc]++
		}
		td.mu.Unlock()
		if slot != nil {
			if sent := slot[seq].Load(); sent != 0 {
				td.dmu.Lock()
				td.delays[ssrc] = append(td.delays[ssrc], time.Duration(at-sent))
				td.dmu.Unlock()
			}
		}
	}
}

// talkN sends n audio packets, one every 20 ms, with a keepalive every
// 100 ms, stamping each in the clock; done is closed after the last.
func (td *timedDevice) talkN(n int) (done chan struct{}) {
	done = make(chan struct{})
	slot := td.clock[td.ssrc]
	td.wg.Add(1)
	go func() {
		defer td.wg.Done()
		defer close(done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for seq := uint16(1); int(seq) <= n; seq++ {
			select {
			case <-td.stop:
				return
			case <-tick.C:
			}
			if seq%5 == 0 {
				if m, err := protocol.BuildJoinRequest(td.token, protocol.JoinOptions{Cookie: td.cookie}); err == nil {
					_, _ = td.conn.WriteToUDPAddrPort(m.Raw, td.fwd)
				}
			}
			p := calltest.AudioRTP(td.ssrc, seq, true)
			for i := 20; i < len(p); i++ {
				p[i] = payloadOf(td.ssrc, seq, i)
			}
			slot[seq].Store(time.Now().UnixNano())
			if _, err := td.conn.WriteToUDPAddrPort(p, td.fwd); err == nil {
				td.sent.Add(1)
			}
		}
	}()
	return done
}

// probeRTT is the least of five round trips of a cookie-less join to fwd,
// which the forwarder answers with a cookie challenge and admits nothing.
func (td *timedDevice) probeRTT(t *testing.T, fwd netip.AddrPort) time.Duration {
	t.Helper()
	best := time.Duration(-1)
	for range 5 {
		td.cookie = nil
		start := time.Now()
		r, err := td.request(fwd)
		require.NoError(t, err, "probe %s", fwd)
		require.False(t, r.OK, "a cookie-less join to %s was admitted", fwd)
		if d := time.Since(start); best < 0 || d < best {
			best = d
		}
	}
	td.cookie = nil
	return best
}

// placeNode is a forwarder of a placement test.
type placeNode struct {
	*regionNode
	region string
}

// person is a device's city and SSRC.
type person struct {
	city string
	ssrc uint32
}

// placeFromProbes has each person's device measure its RTT to every
// forwarder and places the call with conductor.Place, as the conductor
// does from their reports. It returns the placement (by SSRC) and what
// Place returned.
func placeFromProbes(t *testing.T, e *regionEnv, tp *regions.Topology, nodes []placeNode, people []person) (map[uint32]string, conductor.PlacementResult) {
	t.Helper()
	clock := sendClock{}
	for _, p := range people {
		clock[p.ssrc] = new([1 << 16]atomic.Int64)
	}
	in := &conductor.PlacementInput{Forwarders: map[string]conductor.PlacedForwarder{}, RegionRTT: map[[2]string]time.Duration{}}
	for _, n := range nodes {
		in.Forwarders[n.id] = conductor.PlacedForwarder{Region: n.region}
		for _, m := range nodes {
			if m.region != n.region {
				in.RegionRTT[[2]string{n.region, m.region}] = regionRTT(n.f, m.region)
			}
		}
	}
	ids := map[protocol.ID]uint32{}
	call := protocol.NewID()
	for _, p := range people {
		tok, id := e.token(t, call, len(people))
		d := newTimedDevice(t, tp, p.city, tok, p.ssrc, clock)
		m := conductor.PlacedMember{ID: id, RTT: map[string]time.Duration{}}
		for _, n := range nodes {
			m.RTT[n.id] = d.probeRTT(t, n.f.Addr())
		}
		t.Logf("%s (%#x) RTTs: %v", p.city, p.ssrc, m.RTT)
		in.Members = append(in.Members, m)
		ids[id] = p.ssrc
		d.close()
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

// pathFigures is what a call's receivers saw: the median one-way delay
// of each direction, and the worst of them.
type pathFigures struct {
	median map[[2]uint32]time.Duration // [to, from]
	worst  time.Duration
}

// runCall puts people in a new call on the forwarders assign names (by
// SSRC), has each send 4 s of audio, and returns the one-way delays their
// peers saw (the first half second of each sender left out: set-up).
func runCall(t *testing.T, e *regionEnv, tp *regions.Topology, nodes []placeNode, people []person, assign map[uint32]string) pathFigures {
	t.Helper()
	addr := map[string]netip.AddrPort{}
	for _, n := range nodes {
		addr[n.id] = n.f.Addr()
	}
	clock := sendClock{}
	for _, p := range people {
		clock[p.ssrc] = new([1 << 16]atomic.Int64)
	}
	call := protocol.NewID()
	var ds []*timedDevice
	for _, p := range people {
		tok, _ := e.token(t, call, len(people))
		d := newTimedDevice(t, tp, p.city, tok, p.ssrc, clock)
		got, _, err := d.join(addr[assign[p.ssrc]])
		require.NoError(t, err, "%s joining %s", p.city, assign[p.ssrc])
		require.Equal(t, addr[assign[p.ssrc]], got, "%s admitted elsewhere", p.city)
		ds = append(ds, d)
	}
	var dones []chan struct{}
	for _, d := range ds {
		dones = append(dones, d.talkN(200))
	}
	for _, c := range dones {
		<-c // bounded: 200 packets, or the device closed
	}
	fig := pathFigures{median: map[[2]uint32]time.Duration{}}
	testenv.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		for _, a := range ds {
			for _, b := range ds {
				if got, corrupt := a.from(b.ssrc); a != b && (got < 190 || corrupt > 0) {
					return fmt.Errorf("%#x heard %d of 200 from %#x (%d corrupt)", a.ssrc, got, b.ssrc, corrupt)
				}
			}
		}
		return nil
	})
	for _, a := range ds {
		a.dmu.Lock()
		for _, b := range ds {
			if a == b {
				continue
			}
			ds := slices.Clone(a.delays[b.ssrc])
			require.Greater(t, len(ds), 100)
			ds = ds[25:] // set-up: the first half second
			slices.Sort(ds)
			m := ds[len(ds)/2]
			fig.median[[2]uint32{a.ssrc, b.ssrc}] = m
			fig.worst = max(fig.worst, m)
		}
		a.dmu.Unlock()
		a.close()
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
func startEUZA(t *testing.T, e *regionEnv, tp *regions.Topology) []placeNode {
	t.Helper()
	nodes := []placeNode{{e.startInRegion(t, tp, "eu", "fwd-eu", nil), "eu"}, {e.startInRegion(t, tp, "za", "fwd-za", nil), "za"}}
	testenv.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		for _, n := range nodes {
			if n.f.Regions().Echoes[forwarder.EchoOutcome("taken")] < 10 || regionRTT(n.f, map[string]string{"eu": "za", "za": "eu"}[n.region]) == 0 {
				return fmt.Errorf("%s has not measured its trunk yet: %+v", n.id, n.f.Regions())
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
	e := newRegionEnv(t)
	nodes := startEUZA(t, e, tp)
	people := []person{{"paris", 0xa1}, {"berlin", 0xa2}, {"capetown", 0xb1}, {"joburg", 0xb2}}
	start := time.Now()
	assign, res := placeFromProbes(t, e, tp, nodes, people)
	took := time.Since(start)
	require.Equal(t, map[uint32]string{0xa1: "fwd-eu", 0xa2: "fwd-eu", 0xb1: "fwd-za", 0xb2: "fwd-za"}, assign)
	require.Equal(t, []string{"fwd-eu", "fwd-za"}, res.Used, "one trunk: two forwarders")
	trunkOut := nodes[0].f.Stats().TrunkOut
	spread := runCall(t, e, tp, nodes, people, assign)
	require.Positive(t, nodes[0].f.Stats().TrunkOut-trunkOut, "the call crossed the trunk")
	best := time.Duration(-1)
	var bestAt string
	for _, n := range nodes {
		one := map[uint32]string{}
		for _, p := range people {
			one[p.ssrc] = n.id
		}
		f := runCall(t, e, tp, nodes, people, one)
		t.Logf("all on %s: worst direction median one-way %v", n.id, f.worst)
		if best < 0 || f.worst < best {
			best, bestAt = f.worst, n.id
		}
	}
	require.Less(t, spread.worst, best, "spread placement's worst path against all on %s", bestAt)
	t.Logf("placed %v (Place's worst RTT path %v; probes + Place %v); trunk RTT eu->za %v; spread: worst direction median one-way %v (%v); best single region (%s) %v",
		assign, res.Worst, took.Round(time.Millisecond), regionRTT(nodes[0].f, "za"), spread.worst, spread.median, bestAt, best)
}

// TestRegionPlaceOneCity: three people in paris land on the eu
// forwarder, nearby, with no trunk: za neither serves nor hears them.
func TestRegionPlaceOneCity(t *testing.T) {
	tp := euZA(t)
	e := newRegionEnv(t)
	nodes := startEUZA(t, e, tp)
	people := []person{{"paris", 0xc1}, {"paris", 0xc2}, {"paris", 0xc3}}
	start := time.Now()
	assign, res := placeFromProbes(t, e, tp, nodes, people)
	took := time.Since(start)
	require.Equal(t, map[uint32]string{0xc1: "fwd-eu", 0xc2: "fwd-eu", 0xc3: "fwd-eu"}, assign)
	require.Equal(t, []string{"fwd-eu"}, res.Used)
	f := runCall(t, e, tp, nodes, people, assign)
	require.Zero(t, nodes[0].f.Stats().TrunkOut, "eu sent media over a trunk")
	// TrunkOut counts media frames only (trunk keepalives and RTT echoes
	// are TrunkIn's too, so that one is no witness).
	require.Zero(t, nodes[1].f.Stats().TrunkOut, "za sent media over a trunk")
	require.Zero(t, nodes[1].f.Stats().PacketsOut, "za sent media to a device")
	require.Zero(t, nodes[1].f.Stats().Sessions, "za serves a member")
	require.Less(t, f.worst, 60*time.Millisecond, "a path within paris crossed the 90 ms link")
	t.Logf("placed %v (Place's worst RTT path %v; probes + Place %v); worst direction median one-way %v (%v)",
		assign, res.Worst, took.Round(time.Millisecond), f.worst, f.median)
}
