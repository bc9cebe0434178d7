package systemtest

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/callrelay/callrelay/conductor"
	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/linkem"
	"github.com/callrelay/callrelay/internal/testkit/regions"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// The live placement loop of issue 20 inside the namespace topology:
// devices running the client library in city namespaces (device
// processes, regions.StartDevice) measure their RTTs to the candidate
// forwarders and report them in CANDIDATE-RTTS on their keepalives; the
// forwarders, bound in their regions' namespaces, pass the reports on as
// call metadata over NATS; the conductor, whose NATS and Redis clients dial
// from the eu namespace where redis-server and nats-server run, places the
// call again and moves members with PlacementMove -> MigrateTo.
//
//	go test -race -run 'TestRegionLive' -v ./systemtest/

func init() { regions.DeviceMain() } // the device processes are this binary

// lagosEUZA is eu and za 60 ms (+0..2 ms) apart each way; paris (5 ms)
// and berlin (8 ms) near eu; lagos, multi-homed: 15 ms to eu, 20 ms to za
// over a link of its own.
func lagosEUZA(t *testing.T) *regions.Topology {
	ms := time.Millisecond
	return regions.New(t, regions.Spec{Seed: 24, Sites: []regions.Site{{Name: "eu"}, {Name: "za"},
		{Name: "paris", Home: "eu", Access: linkem.Profile{Delay: 5 * ms}},
		{Name: "berlin", Home: "eu", Access: linkem.Profile{Delay: 8 * ms}},
		{Name: "lagos", Home: "eu", Access: linkem.Profile{Delay: 15 * ms}, Direct: map[string]linkem.Profile{"za": {Delay: 20 * ms}}}},
		Links: []regions.Link{{A: "eu", B: "za", OneWay: linkem.Profile{Delay: 60 * ms, Jitter: 2 * ms}}}})
}

// regionConductor runs the conductor package with its NATS and Redis
// clients dialling from site; it stops with the test.
func regionConductor(t *testing.T, e *regions.Env, site, id string, mod func(*conductor.Config)) *cond {
	t.Helper()
	store, closeStore := e.Store(t, site)
	nc := e.NATS(t, site)
	cfg := conductor.Default()
	cfg.ID, cfg.NATS, cfg.Key, cfg.Store, cfg.Leases = id, nc, e.Key, store, store
	cfg.LeaseTTL, cfg.AcquireEvery = time.Second, 100*time.Millisecond
	cfg.Logger = zaptest.NewLogger(t).Named(id)
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	if mod != nil {
		mod(&cfg)
	}
	c, err := conductor.New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done; nc.Close(); closeStore() }) }
	t.Cleanup(stop)
	return &cond{c: c, reg: reg, stop: stop}
}

// trunksMeasured waits until every forwarder has an RTT to every other
// region of nodes.
func trunksMeasured(t *testing.T, nodes ...*regions.Node) {
	t.Helper()
	testenv.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		for _, n := range nodes {
			for _, m := range nodes {
				if m.Region != n.Region && regions.RegionRTT(n.F, m.Region) == 0 {
					return fmt.Errorf("%s has no RTT to %s yet: %+v", n.ID, m.Region, n.F.Regions())
				}
			}
		}
		return nil
	})
}

// TestRegionLiveMoveOnRTTJump: lagos (multi-homed: 15 ms to eu, 20 ms to
// za), paris and berlin talk on the eu forwarder. Lagos's link to eu goes
// to 200 ms each way mid-call: its device measures the jump on its
// keepalives and reports it, and the running conductor moves it to za
// (lagos-za 20 ms + trunk 60 ms + eu-berlin 8 ms, against 208 ms; worst
// RTT path 176 ms against 416 ms), paris and berlin staying on eu. (The
// first keepalive to see the jump went out before it and came back after:
// its sample is half the jump, and the device smooths towards the rest,
// so a jump that pays off only in full would be acted on late.) The
// move comes within 2 s of the jump with less than 100 ms of media gap
// each way (make-before-break), and no one moves again in the 4 s after
// it, with the conductor's cool-down cut to 1 s so that only its
// hysteresis and the reports hold the placement. Keepalives here come
// every 100 ms, so the conductor places every 100 ms and wants a move for
// 200 ms (two reports in a row) before sending it, where its defaults
// (500 ms each) are for 1 s keepalives.
func TestRegionLiveMoveOnRTTJump(t *testing.T) {
	tp := lagosEUZA(t)
	e := regions.NewEnvIn(t, tp, "eu")
	eu := e.StartForwarder(t, tp, "eu", "fwd-eu", nil)
	za := e.StartForwarder(t, tp, "za", "fwd-za", nil)
	// No first placement (reason "first"): this test is about a jump in
	// the middle of a call, and a join's first RTT samples here can be off
	// by tens of ms under load, once enough for a first move of lagos to
	// za before the jump (TestConductorPlacesNewCallAtOnce tests that one).
	cd := regionConductor(t, e, "eu", "cond-eu", func(c *conductor.Config) {
		c.Placement.Every, c.Placement.Sustain, c.Placement.Cooldown = 100*time.Millisecond, 200*time.Millisecond, time.Second
		c.Placement.First = 0
	})
	trunksMeasured(t, eu, za)

	call := protocol.NewID()
	cands := []netip.AddrPort{eu.F.Addr(), za.F.Addr()}
	dev := func(city string, ssrc uint32) *regions.Device {
		tok, _ := e.Token(t, call, 8)
		return regions.StartDevice(t, tp, city, regions.DeviceConfig{Token: tok, Forwarders: cands, SSRC: ssrc})
	}
	a, b, c := dev("lagos", 0xa1), dev("paris", 0xb1), dev("berlin", 0xc1)
	all := []*regions.Device{a, b, c}
	for _, d := range all {
		require.Equal(t, eu.F.Addr(), d.Forwarder(), "%s joins eu, the nearer", d.City)
	}
	start := time.Now()
	hearAll(t, all, start, 25)
	testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if r := a.RTTs(); r[eu.F.Addr()] == 0 || r[za.F.Addr()] == 0 {
			return fmt.Errorf("lagos has RTTs %v, want both forwarders'", r)
		}
		return nil
	})
	// Nobody moves while the paths are as they were: watched for 3 s
	// (longer than a join's first placement takes), failing at the first
	// move.
	watch(t, 3*time.Second, func() error {
		if m := replaced(t, cd); m != 0 || len(a.Moves())+len(b.Moves())+len(c.Moves()) != 0 {
			return fmt.Errorf("a move before the jump: %v conductor moves; devices moved %v, %v, %v", m, a.Moves(), b.Moves(), c.Moves())
		}
		return nil
	})
	before := a.RTTs()

	tp.SetAccess(t, "lagos", "eu", linkem.Profile{Delay: 200 * time.Millisecond})
	jumped := time.Now()
	var decided time.Time // when the conductor's move was counted
	testenv.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if decided.IsZero() && replaced(t, cd) > 0 {
			decided = time.Now()
		}
		if got := a.Forwarder(); got != za.F.Addr() {
			return fmt.Errorf("lagos on %s, want fwd-za at %s (RTTs %v)", got, za.F.Addr(), a.RTTs())
		}
		return nil
	})
	moved := a.Moves()[0].At
	took := moved.Sub(jumped)
	seen := a.RTTSeen(eu.F.Addr(), 150*time.Millisecond, jumped).Sub(jumped).Round(time.Millisecond)
	if decided.IsZero() {
		decided = moved // counted between two polls
	}
	after := a.RTTs()
	// The placement holds: watched for 4 s, failing at the first flap.
	watch(t, 4*time.Second, func() error {
		if m := replaced(t, cd); m != 1 || len(a.Moves()) != 1 || len(b.Moves())+len(c.Moves()) != 0 {
			return fmt.Errorf("a flap %v after the move: %v conductor moves; devices moved %v, %v, %v", time.Since(moved), m, a.Moves(), b.Moves(), c.Moves())
		}
		return nil
	})
	settle := time.Now()
	end := moved.Add(time.Second)
	hearAll(t, all, settle, 25)
	// The media gap each way over the move, as the listener hears it: the
	// longest silence between packets sent from the jump to a second
	// after the move (the jump's own gap, packets sent before it landing
	// fast and those after slow, is not the move's). CPU starvation of
	// this 2-core machine's processes makes silences of its own: the
	// paris->berlin stream, which the move does not touch, measures them
	// in the same window. Logged too: the longest run of packets lost (the
	// new path being shorter, later packets can fill the silence of lost
	// ones; a jitter buffer would not hear it so).
	gaps := map[string]string{}
	var worstGap time.Duration
	var worstPair string
	for _, p := range [][2]*regions.Device{{a, b}, {a, c}, {b, a}, {c, a}} {
		from, to := p[0], p[1]
		arr := to.From(from.SSRC)
		g, ended := regions.MaxGap(arr, jumped, end)
		lost, after := regions.LostRun(arr, jumped, end)
		pair := from.City + "->" + to.City
		gaps[pair] = fmt.Sprintf("%v (ended %v after the move), none lost", g.Round(time.Millisecond), ended.Sub(moved).Round(time.Millisecond))
		if lost > 0 {
			gaps[pair] = fmt.Sprintf("%v (ended %v after the move), %d lost in a row (sent from %v after the move)", g.Round(time.Millisecond),
				ended.Sub(moved).Round(time.Millisecond), lost, after.Sub(moved).Round(time.Millisecond))
		}
		if g > worstGap {
			worstGap, worstPair = g, pair
		}
	}
	floor, _ := regions.MaxGap(c.From(b.SSRC), jumped, end)
	dAfter := regions.Delays(c.From(a.SSRC), moved.Add(time.Second), settle)
	dJump := regions.Delays(c.From(a.SSRC), jumped, moved.Add(-200*time.Millisecond))
	require.NotEmpty(t, dAfter)
	moves := metric(t, cd.reg, "callrelay_conductor_placement_moves_total", "rtt")
	t.Logf("lagos re-placed eu -> za %v after its eu link went 15 -> 200 ms each way (its device had the jump in its RTTs after %v, the conductor's move counted after %v; RTTs %v before, %v at the move); longest media gap over the move %v, paris->berlin (untouched) %v; lagos->berlin median one-way %v on the jumped path, %v after the move (trunk RTT eu->za %v); moves by the conductor: %v (rtt) in the 4 s after, device moves: lagos %d, paris %d, berlin %d",
		took.Round(time.Millisecond), seen, decided.Sub(jumped).Round(time.Millisecond), before, after, gaps, floor.Round(time.Millisecond), median(dJump), median(dAfter), regions.RegionRTT(eu.F, "za"), moves, len(a.Moves()), len(b.Moves()), len(c.Moves()))
	// The relay's own figure for the move (sender_moves.go): fwd-eu, where
	// paris and berlin listen, heard lagos go from its session there to the
	// trunk from fwd-za. fwd-za measures no gap: lagos's packets reached it
	// over the trunk only while lagos joined there make-before-break, with
	// no listener there (not followed); a race's losing session at the
	// joins could have made it a listener seconds before: then a quiet
	// move, no gap.
	mv, zm := eu.F.SenderMoves(), za.F.SenderMoves()
	t.Logf("fwd-eu measured lagos's move: gap %v, %d packets still owed by the old path (sender moves %v, %d measured); fwd-za: moves %v, %d quiet",
		mv.LastGap, mv.Skipped, mv.Moves, mv.Measured, zm.Moves, zm.Quiet)
	require.Equal(t, [3]uint64{forwarder.MoveDirectToTrunk: 1}, mv.Moves, "fwd-eu: lagos's move, heard once, by its path")
	require.Equal(t, uint64(1), mv.Measured, "fwd-eu: the move's gap measured")
	require.Zero(t, zm.Measured, "fwd-za: no gap measured")
	require.Equal(t, zm.Quiet, zm.Moves[forwarder.MoveTrunkToDirect]+zm.Moves[forwarder.MoveDirectToTrunk]+zm.Moves[forwarder.MoveTrunkToTrunk],
		"fwd-za: only quiet moves")
	require.Less(t, took, 2*time.Second, "re-placed within 2 s of the jump")
	require.Less(t, worstGap, max(100*time.Millisecond, floor+20*time.Millisecond),
		"media gap %s over the move: under 100 ms, or no more than the untouched stream's silence (CPU starvation) in the window", worstPair)
	require.Equal(t, 1.0, moves, "one move, no flapping")
	require.Len(t, a.Moves(), 1, "lagos moved once")
	require.Empty(t, b.Moves(), "paris stays")
	require.Empty(t, c.Moves(), "berlin stays")
	require.Equal(t, eu.F.Addr(), b.Forwarder())
	require.Less(t, median(dAfter), 110*time.Millisecond, "after the move lagos->berlin takes za and the trunk (~88 ms)")
}

// replaced is how many moves the conductor sent to re-place members of
// ongoing calls (reasons rtt and region; a join's first placement, reason
// first, is not one: it may move a multi-connect loser's session).
func replaced(t *testing.T, cd *cond) float64 {
	t.Helper()
	m := func(reason string) float64 {
		return metric(t, cd.reg, "callrelay_conductor_placement_moves_total", reason)
	}
	return m("rtt") + m("region")
}

// watch checks ok every 20 ms for d, failing the test at the first error:
// a window of observation, not a wait for something to happen.
func watch(t *testing.T, d time.Duration, ok func() error) {
	t.Helper()
	tk := time.NewTicker(20 * time.Millisecond)
	defer tk.Stop()
	for end := time.Now().Add(d); time.Now().Before(end); <-tk.C {
		if err := ok(); err != nil {
			t.Fatal(err)
		}
	}
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	return ds[len(ds)/2].Round(time.Millisecond)
}

// hearAll waits until every device has heard n packets sent at or after
// since from every other.
func hearAll(t *testing.T, ds []*regions.Device, since time.Time, n int) {
	t.Helper()
	testenv.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		for _, x := range ds {
			for _, y := range ds {
				if x != y && x.HeardSince(y.SSRC, since) < n {
					return fmt.Errorf("%s heard %d from %s since %v", x.City, x.HeardSince(y.SSRC, since), y.City, since.Format("15:04:05.000"))
				}
			}
		}
		return nil
	})
}

// TestRegionLiveThrottledRegionAvoided: eu is at throttle level 2 (an
// ongoing call of four paris devices fills 4 of its 5 sessions). lagos
// (za 15 ms, and links of its own to eu, 20 ms, and uk, 25 ms) and
// joburg talk on za; lagos's za link goes to 150 ms each way. Its best
// move would be to eu (worst RTT path 170 ms: 40 + eu-za trunk 120 + 10),
// but eu throttles and uk (194 ms: 50 + uk-za trunk 134 + 10) is within
// the 60 ms budget of it, so the conductor moves lagos to uk and never
// into eu (watched for 3 s after the move, with a 1 s cool-down); joburg stays on za, and the ongoing eu call hears at least
// 99 % of every packet, byte for byte, throughout. Redis, NATS and the
// conductor are in za here: a join's critical write is a WAN round trip
// away from the store's region (docs/architecture.md, "Regions"), and with
// the store in eu, uk (5 ms from it) would win lagos's join race.
func TestRegionLiveThrottledRegionAvoided(t *testing.T) {
	ms := time.Millisecond
	tp := regions.New(t, regions.Spec{Seed: 25, Sites: []regions.Site{{Name: "eu"}, {Name: "uk"}, {Name: "za"},
		{Name: "paris", Home: "eu", Access: linkem.Profile{Delay: 2 * ms}},
		{Name: "joburg", Home: "za", Access: linkem.Profile{Delay: 5 * ms}},
		{Name: "lagos", Home: "za", Access: linkem.Profile{Delay: 15 * ms}, Direct: map[string]linkem.Profile{"eu": {Delay: 20 * ms}, "uk": {Delay: 25 * ms}}}},
		Links: []regions.Link{{A: "eu", B: "za", OneWay: linkem.Profile{Delay: 60 * ms, Jitter: 2 * ms}},
			{A: "uk", B: "za", OneWay: linkem.Profile{Delay: 67 * ms, Jitter: 2 * ms}},
			{A: "eu", B: "uk", OneWay: linkem.Profile{Delay: 5 * ms}}}})
	e := regions.NewEnvIn(t, tp, "za")
	sessionsOnly := func(c *forwarder.Config) {
		c.Load.CapacitySessions, c.Load.CPUCores, c.Load.QueueDropsFull = 20, 1e6, 1e9
		c.Load.HoldDown, c.LoadEvery = time.Minute, 50*time.Millisecond
	}
	eu := e.StartForwarder(t, tp, "eu", "fwd-eu", func(c *forwarder.Config) { sessionsOnly(c); c.Load.CapacitySessions = 5 })
	uk := e.StartForwarder(t, tp, "uk", "fwd-uk", sessionsOnly)
	za := e.StartForwarder(t, tp, "za", "fwd-za", sessionsOnly)
	cd := regionConductor(t, e, "za", "cond-za", func(c *conductor.Config) {
		c.Placement.Every, c.Placement.Cooldown = 100*time.Millisecond, time.Second
		c.MaxForwarded = 8 // the ongoing call's four talk at once: all are forwarded
	})
	trunksMeasured(t, eu, uk, za)

	ongoing := protocol.NewID()
	var members []*regions.CityDevice
	var stops []func()
	for i := range 4 {
		tok, _ := e.Token(t, ongoing, 8)
		d := regions.NewCityDevice(t, tp, "paris", tok, uint32(0x10+i), nil)
		got, _, err := d.Join(eu.F.Addr())
		require.NoError(t, err, "member %d", i)
		require.Equal(t, eu.F.Addr(), got)
		members = append(members, d)
		stops = append(stops, d.Talk()) // its keepalives too, before the next joins
	}
	testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if l := eu.F.Stats().ThrottleLevel; l < forwarder.ThrottleNewOneToOne {
			return fmt.Errorf("eu at level %v, want 2 (4 of 5 sessions)", l)
		}
		return nil
	})

	testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		for _, x := range members {
			for _, y := range members {
				if n, _ := x.From(y.SSRC); x != y && n < 25 {
					return fmt.Errorf("%#x heard %d from %#x", x.SSRC, n, y.SSRC)
				}
			}
		}
		return nil
	})

	call := protocol.NewID()
	cands := []netip.AddrPort{eu.F.Addr(), uk.F.Addr(), za.F.Addr()}
	dev := func(city string, ssrc uint32) *regions.Device {
		tok, _ := e.Token(t, call, 8)
		return regions.StartDevice(t, tp, city, regions.DeviceConfig{Token: tok, Forwarders: cands, SSRC: ssrc,
			RetransmitInitial: 500 * time.Millisecond}) // eu and uk answer a join after a write to za's store
	}
	j, a := dev("joburg", 0xd1), dev("lagos", 0xa1)
	require.Equal(t, za.F.Addr(), a.Forwarder(), "lagos joins za, the nearest")
	require.Equal(t, za.F.Addr(), j.Forwarder(), "joburg joins za")
	hearAll(t, []*regions.Device{a, j}, time.Now(), 25)
	testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if r := a.RTTs(); r[eu.F.Addr()] == 0 || r[uk.F.Addr()] == 0 || r[za.F.Addr()] == 0 {
			return fmt.Errorf("lagos has RTTs %v, want all three forwarders'", r)
		}
		return nil
	})
	base := regions.HearingOf(members)
	watch(t, 2*time.Second, func() error {
		if m := replaced(t, cd); m != 0 || len(a.Moves())+len(j.Moves()) != 0 {
			return fmt.Errorf("a move before the jump: %v conductor moves; lagos moved %v, joburg %v", m, a.Moves(), j.Moves())
		}
		return nil
	})

	tp.SetAccess(t, "lagos", "za", linkem.Profile{Delay: 150 * ms})
	jumped := time.Now()
	testenv.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		switch got := a.Forwarder(); got {
		case uk.F.Addr():
			return nil
		case eu.F.Addr():
			t.Fatalf("lagos moved into eu, which throttles (level %v)", eu.F.Stats().ThrottleLevel)
		}
		return fmt.Errorf("lagos on %s, want fwd-uk (RTTs %v)", a.Forwarder(), a.RTTs())
	})
	took := a.Moves()[0].At.Sub(jumped)
	watch(t, 3*time.Second, func() error {
		if m := replaced(t, cd); m != 1 || len(a.Moves()) != 1 || len(j.Moves()) != 0 {
			return fmt.Errorf("after the move: %v conductor moves; lagos moved %v, joburg %v", m, a.Moves(), j.Moves())
		}
		return nil
	})
	for _, stop := range stops {
		stop()
	}
	heard := regions.CheckHeard(t, members, base)
	level := eu.F.Stats().ThrottleLevel
	t.Logf("eu at level %v throughout; lagos's za link 15 -> 150 ms each way: moved to uk %v after (RTTs at the move %v), not eu; conductor moves %v (rtt %v; first placements %v), placement runs avoided %v; eu's ongoing call: %d packets per member, worst pair heard %.2f %%",
		level, took.Round(time.Millisecond), a.RTTs(), replaced(t, cd),
		metric(t, cd.reg, "callrelay_conductor_placement_moves_total", "rtt"), metric(t, cd.reg, "callrelay_conductor_placement_moves_total", "first"),
		metric(t, cd.reg, "callrelay_conductor_placements_total", "avoided"),
		members[0].Sent.Load()-base.Sent[0], 100*heard)
	require.GreaterOrEqual(t, level, forwarder.ThrottleNewOneToOne, "eu still throttles")
	require.Equal(t, za.F.Addr(), j.Forwarder(), "joburg stays")
	require.Zero(t, eu.F.Stats().Sessions-4, "eu serves only its ongoing call")
}
