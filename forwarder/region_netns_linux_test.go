package forwarder_test

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/linkem"
	"github.com/callrelay/callrelay/internal/testkit/regions"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// Issue 20's network proof: forwarders in region namespaces and devices in
// city namespaces (internal/testkit/regions), every packet between two
// sites delayed by the userspace emulator. They need root (CAP_NET_ADMIN)
// and fail rather than skip without it.
//
//	go test -race -run TestRegion -v ./forwarder/

// eu and za are 60 ms apart each way (with 2 ms of jitter); paris is 5 ms
// from eu and joburg 5 ms from za.
func twoRegions(t *testing.T) *regions.Topology {
	return regions.New(t, regions.Spec{Seed: 20, Sites: []regions.Site{{Name: "eu"}, {Name: "za"},
		{Name: "paris", Home: "eu", Access: linkem.Profile{Delay: 5 * time.Millisecond}},
		{Name: "joburg", Home: "za", Access: linkem.Profile{Delay: 5 * time.Millisecond}}},
		Links: []regions.Link{{A: "eu", B: "za", OneWay: linkem.Profile{Delay: 60 * time.Millisecond, Jitter: 2 * time.Millisecond}}}})
}

// TestRegionTrunkRTT: two forwarders in regions 60 ms apart each way
// measure a trunk RTT of about 120 ms (smoothed; the jitter adds 0..4 ms),
// export it as a gauge per peer region and publish it in their load
// reports, from which a conductor reads the region-to-region map.
func TestRegionTrunkRTT(t *testing.T) {
	tp := twoRegions(t)
	e := regions.NewEnv(t)
	eu := e.StartForwarder(t, tp, "eu", "fwd-eu", nil)
	za := e.StartForwarder(t, tp, "za", "fwd-za", nil)
	nc, err := nats.Connect(e.NATSURL)
	require.NoError(t, err)
	defer nc.Close()
	reports := make(chan *nats.Msg, 256)
	sub, err := nc.ChanSubscribe("callrelay.forwarders", reports)
	require.NoError(t, err)
	defer func() { _ = sub.Unsubscribe() }()

	within := func(d time.Duration) error {
		if d < 115*time.Millisecond || d > 145*time.Millisecond {
			return fmt.Errorf("RTT %v, want 120 ms (115..145)", d)
		}
		return nil
	}
	testenv.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		for _, c := range []struct {
			n    *regions.Node
			peer string
		}{{eu, "za"}, {za, "eu"}} {
			if n := c.n.F.Regions().Echoes[forwarder.EchoOutcome("taken")]; n < 20 {
				return fmt.Errorf("%s: %d samples so far, want 20", c.n.ID, n) // 2 s of heartbeats
			}
			if err := within(regionRTT(c.n.F, c.peer)); err != nil {
				return fmt.Errorf("%s to %s: %w", c.n.ID, c.peer, err)
			}
		}
		return nil
	})
	for _, c := range []struct {
		n    *regions.Node
		peer string
	}{{eu, "za"}, {za, "eu"}} {
		v, ok := gauge(t, c.n.F, "callrelay_forwarder_trunk_rtt_seconds", map[string]string{"region": c.peer})
		require.True(t, ok, "%s exports no RTT gauge for %s", c.n.ID, c.peer)
		require.NoError(t, within(time.Duration(v*float64(time.Second))), "%s's gauge", c.n.ID)
		s := c.n.F.Regions()
		require.Positive(t, s.Echoes[forwarder.EchoOutcome("taken")])
		for _, bad := range []string{"malformed", "unmatched", "duplicate", "implausible"} {
			require.Zero(t, s.Echoes[forwarder.EchoOutcome(bad)], "%s: %s echoes", c.n.ID, bad)
		}
	}
	// As a conductor would: the latest report of each forwarder, then the map.
	latest := map[string]protocol.LoadReport{}
	m := protocol.RegionRTTs{}
	testenv.CheckFor(t, 10*time.Second, time.Millisecond, func() error {
		select {
		case msg := <-reports:
			var r protocol.LoadReport
			if typ, err := protocol.PeekClusterMsgType(msg.Data); err == nil && typ == protocol.ClusterMsgLoadReport && r.Unmarshal(msg.Data, e.Key) == nil {
				latest[r.Forwarder] = r
			}
		default:
		}
		m = protocol.RegionRTTs{}
		for _, r := range latest {
			m.Add(&r)
		}
		if len(m["eu"]) == 0 || len(m["za"]) == 0 {
			return fmt.Errorf("map so far: %v", m)
		}
		return nil
	})
	require.NoError(t, within(m["eu"]["za"]), "eu -> za in the reports")
	require.NoError(t, within(m["za"]["eu"]), "za -> eu in the reports")
	st, err := tp.Router().PathStats("eu", "za")
	require.NoError(t, err)
	t.Logf("trunk RTT measured (smoothed, %d and %d samples): eu->za %v, za->eu %v (60 ms + 0..2 ms each way emulated); reports: %v; eu->za path: %d packets, %d lost",
		eu.F.Regions().Echoes[forwarder.EchoOutcome("taken")], za.F.Regions().Echoes[forwarder.EchoOutcome("taken")],
		regionRTT(eu.F, "za"), regionRTT(za.F, "eu"), m, st.Delivered, st.Lost)
}

// TestRegionCallAcrossRegions: a call with a member in paris on the eu
// forwarder and one in joburg on the za forwarder, trunked between the
// regions through the 60 ms link: every packet arrives byte for byte
// both ways, and the media's round trip over the trunk is emulated.
func TestRegionCallAcrossRegions(t *testing.T) {
	tp := twoRegions(t)
	e := regions.NewEnv(t)
	eu := e.StartForwarder(t, tp, "eu", "fwd-eu", nil)
	za := e.StartForwarder(t, tp, "za", "fwd-za", nil)
	call := protocol.NewID()
	tokA, _ := e.Token(t, call, 4)
	tokB, _ := e.Token(t, call, 4)
	a := regions.NewCityDevice(t, tp, "paris", tokA, 0xa1, nil)
	b := regions.NewCityDevice(t, tp, "joburg", tokB, 0xb2, nil)
	got, _, err := a.Join(eu.F.Addr())
	require.NoError(t, err)
	require.Equal(t, eu.F.Addr(), got)
	got, _, err = b.Join(za.F.Addr())
	require.NoError(t, err)
	require.Equal(t, za.F.Addr(), got)
	stopA, stopB := a.Talk(), b.Talk()
	both := []*regions.CityDevice{a, b}
	waitHearing(t, both, 25) // the call is set up: placements learned, trunk routes up
	base := regions.HearingOf(both)
	for a.Sent.Load() < base.Sent[0]+250 || b.Sent.Load() < base.Sent[1]+250 { // 5 s of audio each way
		time.Sleep(20 * time.Millisecond)
	}
	stopA()
	stopB()
	worst := regions.CheckHeard(t, both, base)
	_, ca := a.From(b.SSRC)
	_, cb := b.From(a.SSRC)
	require.Zero(t, ca+cb, "corrupt packets")
	require.Positive(t, eu.F.Stats().TrunkOut)
	require.Positive(t, za.F.Stats().TrunkIn)
	t.Logf("across eu-za (60 ms each way): after set-up, %d packets each way, worst direction heard %.2f %%, all byte-exact; trunk RTT eu %v, za %v",
		a.Sent.Load()-base.Sent[0], 100*worst, regionRTT(eu.F, "za"), regionRTT(za.F, "eu"))
}

// TestRegionSpillOver: eu hosts an ongoing group call of four devices
// from paris, which puts it at throttle level 2 (capacity 5 sessions). A
// new call's device from paris is sent to the nearest region with room
// within the 60 ms budget: uk (5 ms each way), not me (20 ms); when uk's
// link grows to 80 ms each way, to me; when me's does too, nowhere (508,
// counted over budget). The ongoing call's members hear each other
// throughout, packet for packet.
func TestRegionSpillOver(t *testing.T) {
	tp := regions.New(t, regions.Spec{Seed: 21, Sites: []regions.Site{{Name: "eu"}, {Name: "uk"}, {Name: "me"},
		{Name: "paris", Home: "eu", Access: linkem.Profile{Delay: 2 * time.Millisecond}}},
		Links: []regions.Link{{A: "eu", B: "uk", OneWay: linkem.Profile{Delay: 5 * time.Millisecond}},
			{A: "eu", B: "me", OneWay: linkem.Profile{Delay: 20 * time.Millisecond}}}})
	e := regions.NewEnv(t)
	eu := e.StartForwarder(t, tp, "eu", "fwd-eu", func(c *forwarder.Config) { sessionsOnly(c); c.Load.CapacitySessions = 5 })
	uk := e.StartForwarder(t, tp, "uk", "fwd-uk", sessionsOnly)
	me := e.StartForwarder(t, tp, "me", "fwd-me", sessionsOnly)
	measured(t, eu.F)

	ongoing := protocol.NewID()
	var members []*regions.CityDevice
	for i := range 4 {
		tok, _ := e.Token(t, ongoing, 8)
		d := regions.NewCityDevice(t, tp, "paris", tok, uint32(0x10+i), nil)
		got, _, err := d.Join(eu.F.Addr())
		require.NoError(t, err, "member %d", i)
		require.Equal(t, eu.F.Addr(), got)
		members = append(members, d)
	}
	require.Equal(t, forwarder.ThrottleNewOneToOne, eu.F.Stats().ThrottleLevel, "4 of 5 sessions: level 2")
	var stops []func()
	for _, d := range members {
		stops = append(stops, d.Talk())
	}
	waitHearing(t, members, 25)
	base := regions.HearingOf(members)

	newCall := func() (netip.AddrPort, []protocol.JoinResponse, error) {
		tok, _ := e.Token(t, protocol.NewID(), 8)
		return regions.NewCityDevice(t, tp, "paris", tok, 0x99, nil).Join(eu.F.Addr())
	}
	spilled := func(n uint64) {
		t.Helper()
		require.Equal(t, n, eu.F.Regions().Spill[forwarder.SpillOutcome("spilled")])
	}
	rttUK, rttME := regionRTT(eu.F, "uk"), regionRTT(eu.F, "me")
	got, seen, err := newCall()
	require.NoError(t, err, "answers %+v; RTTs %v", seen, eu.F.Regions().RTTs)
	require.Equal(t, uk.F.Addr(), got, "the nearest region with room: uk; %+v", eu.F.Regions())
	spilled(1)

	tp.SetLink(t, "eu", "uk", linkem.Profile{Delay: 80 * time.Millisecond})
	testenv.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		if rtt := regionRTT(eu.F, "uk"); rtt <= 60*time.Millisecond {
			return fmt.Errorf("eu's RTT to uk still %v", rtt)
		}
		return nil
	})
	got, seen, err = newCall()
	require.NoError(t, err, "answers %+v; RTTs %v", seen, eu.F.Regions().RTTs)
	require.Equal(t, me.F.Addr(), got, "uk is now beyond the budget: me")
	spilled(2)

	tp.SetLink(t, "eu", "me", linkem.Profile{Delay: 80 * time.Millisecond})
	testenv.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		if rtt := regionRTT(eu.F, "me"); rtt <= 60*time.Millisecond {
			return fmt.Errorf("eu's RTT to me still %v", rtt)
		}
		return nil
	})
	_, seen, err = newCall()
	require.ErrorIs(t, err, regions.ErrRefused)
	require.Equal(t, protocol.CodeInsufficientCapacity, seen[len(seen)-1].Code, "no region with room within the budget: come back later")
	require.Equal(t, uint64(1), eu.F.Regions().Spill[forwarder.SpillOutcome("over_budget")])
	spilled(2)

	for members[0].Sent.Load() < base.Sent[0]+150 { // at least 3 s of the ongoing call across the spills
		time.Sleep(20 * time.Millisecond)
	}
	for _, stop := range stops {
		stop()
	}
	worst := regions.CheckHeard(t, members, base)
	require.Equal(t, forwarder.ThrottleNewOneToOne, eu.F.Stats().ThrottleLevel)
	t.Logf("spill-over from eu at level 2 (RTT to uk %v, me %v): new call to uk; uk at 80 ms each way (RTT %v): to me; me too (RTT %v): refused, 508. Referrals %v (same_region spilled below_spill_level over_budget unmeasured no_room). Ongoing call meanwhile: %d packets per member, worst pair heard %.2f %%",
		rttUK, rttME, regionRTT(eu.F, "uk"), regionRTT(eu.F, "me"), eu.F.Regions().Spill, members[0].Sent.Load()-base.Sent[0], 100*worst)
}

// TestRegionLossNotChosen: the media path between eu and uk goes dark
// (all packets lost both ways) while uk's heartbeats still arrive over
// NATS. eu, at throttle level 2, stops naming uk once its RTT to uk is
// stale (no echo for two peer timeouts) and sends the next new call to me;
// its ongoing call is untouched.
func TestRegionLossNotChosen(t *testing.T) {
	tp := regions.New(t, regions.Spec{Seed: 22, Sites: []regions.Site{{Name: "eu"}, {Name: "uk"}, {Name: "me"},
		{Name: "paris", Home: "eu", Access: linkem.Profile{Delay: 2 * time.Millisecond}}},
		Links: []regions.Link{{A: "eu", B: "uk", OneWay: linkem.Profile{Delay: 5 * time.Millisecond}},
			{A: "eu", B: "me", OneWay: linkem.Profile{Delay: 20 * time.Millisecond}}}})
	e := regions.NewEnv(t)
	eu := e.StartForwarder(t, tp, "eu", "fwd-eu", func(c *forwarder.Config) { sessionsOnly(c); c.Load.CapacitySessions = 5 })
	uk := e.StartForwarder(t, tp, "uk", "fwd-uk", sessionsOnly)
	me := e.StartForwarder(t, tp, "me", "fwd-me", sessionsOnly)
	measured(t, eu.F)
	ongoing := protocol.NewID()
	var members []*regions.CityDevice
	var stops []func()
	for i := range 4 {
		tok, _ := e.Token(t, ongoing, 8)
		d := regions.NewCityDevice(t, tp, "paris", tok, uint32(0x20+i), nil)
		_, _, err := d.Join(eu.F.Addr())
		require.NoError(t, err)
		members = append(members, d)
		stops = append(stops, d.Talk())
	}
	waitHearing(t, members, 25)
	base := regions.HearingOf(members)
	newCall := func() netip.AddrPort {
		t.Helper()
		tok, _ := e.Token(t, protocol.NewID(), 8)
		got, seen, err := regions.NewCityDevice(t, tp, "paris", tok, 0x98, nil).Join(eu.F.Addr())
		require.NoError(t, err, "answers %+v; RTTs %v", seen, eu.F.Regions().RTTs)
		return got
	}
	require.Equal(t, uk.F.Addr(), newCall(), "uk is nearest: %+v", eu.F.Regions())

	cut := time.Now()
	tp.SetLink(t, "eu", "uk", linkem.Profile{Loss: 1})
	testenv.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if rtt := regionRTT(eu.F, "uk"); rtt != 0 {
			return fmt.Errorf("eu still has an RTT to uk: %v", rtt)
		}
		return nil
	})
	forgotten := time.Since(cut)
	require.Positive(t, eu.F.Stats().Peering.ByNATS, "uk's heartbeats still arrive over NATS")
	require.Equal(t, me.F.Addr(), newCall(), "uk is cut off on the media path: me")
	require.Equal(t, uint64(2), eu.F.Regions().Spill[forwarder.SpillOutcome("spilled")])
	for members[0].Sent.Load() < base.Sent[0]+150 {
		time.Sleep(20 * time.Millisecond)
	}
	for _, stop := range stops {
		stop()
	}
	worst := regions.CheckHeard(t, members, base)
	st, err := tp.Router().PathStats("eu", "uk")
	require.NoError(t, err)
	t.Logf("eu-uk cut: eu forgot its RTT to uk %v after the cut (2 peer timeouts: 2 s), the next new call went to me; eu->uk packets lost %d; ongoing call worst pair heard %.2f %%",
		forgotten.Round(time.Millisecond), st.Lost, 100*worst)
}

// measured waits until f has taken ten RTT samples and its RTTs put uk
// nearer than me, as the links say (the tests' premise).
func measured(t *testing.T, f *forwarder.Forwarder) {
	t.Helper()
	testenv.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		uk, me := regionRTT(f, "uk"), regionRTT(f, "me")
		if f.Regions().Echoes[forwarder.EchoOutcome("taken")] < 10 || uk == 0 || me == 0 || uk >= me {
			return fmt.Errorf("eu has not measured uk nearer than me yet: %+v", f.Regions())
		}
		return nil
	})
}

// waitHearing waits until every device heard at least n packets from
// every other.
func waitHearing(t *testing.T, ds []*regions.CityDevice, n int) {
	t.Helper()
	testenv.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		for _, a := range ds {
			for _, b := range ds {
				if got, _ := a.From(b.SSRC); a != b && got < n {
					return fmt.Errorf("%#x heard %d from %#x", a.SSRC, got, b.SSRC)
				}
			}
		}
		return nil
	})
}

// TestRegionEchoBadInput: echoes that are forged (wrong key), replayed,
// malformed or answer no keepalive of this process are dropped and
// counted; the RTT measured stays what the real echoes say.
func TestRegionEchoBadInput(t *testing.T) {
	e := newClusterEnv(t)
	a := e.startWith(t, "fwd-a", func(c *forwarder.Config) { c.Cluster.Region = "eu" })
	e.startWith(t, "fwd-b", func(c *forwarder.Config) { c.Cluster.Region = "za" })
	testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if regionRTT(a.f, "za") == 0 {
			return fmt.Errorf("no RTT to za yet")
		}
		return nil
	})
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer conn.Close()
	send := func(frame []byte) {
		_, err := conn.WriteToUDPAddrPort(frame, a.f.TrunkAddr())
		require.NoError(t, err)
	}
	other, err := protocol.NewClusterKey() // a forger's
	require.NoError(t, err)
	forger := protocol.NewTrunkCodec(other)
	forger.Number(9, protocol.TrunkSeqStart(time.Now()))
	insider := protocol.NewTrunkCodec(e.key)
	insider.Number(9, protocol.TrunkSeqStart(time.Now()))
	echo := protocol.TrunkEcho{Forwarder: "fwd-b", Region: "za", Started: time.Now(), Seq: 1 << 40}
	before, drops := a.f.Regions(), a.f.Stats().Drops

	forged, err := protocol.SealTrunkEcho(forger, nil, &echo)
	require.NoError(t, err)
	send(forged)
	unmatched, err := protocol.SealTrunkEcho(insider, nil, &echo)
	require.NoError(t, err)
	send(unmatched)
	send(unmatched) // replayed
	h := protocol.TrunkHeader{Origin: protocol.ForwarderTag("fwd-b")}
	send(insider.Seal(nil, &h, []byte{protocol.TrunkKindEcho, 5, 0, 0, 1})) // malformed
	testenv.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		s, d := a.f.Regions(), a.f.Stats().Drops
		got := []uint64{d[forwarder.DropTrunkAuth] - drops[forwarder.DropTrunkAuth], d[forwarder.DropTrunkReplay] - drops[forwarder.DropTrunkReplay],
			s.Echoes[forwarder.EchoOutcome("unmatched")] - before.Echoes[forwarder.EchoOutcome("unmatched")],
			s.Echoes[forwarder.EchoOutcome("malformed")] - before.Echoes[forwarder.EchoOutcome("malformed")]}
		if fmt.Sprint(got) != "[1 1 1 1]" {
			return fmt.Errorf("forged, replayed, unmatched, malformed counted %v, want [1 1 1 1]", got)
		}
		return nil
	})
	rtt := regionRTT(a.f, "za")
	require.Less(t, rtt, 50*time.Millisecond, "loopback RTT, untouched by the bad echoes")
	v, ok := gauge(t, a.f, "callrelay_forwarder_trunk_rtt_seconds", map[string]string{"region": "za"})
	require.True(t, ok)
	require.Less(t, v, 0.05)
}
