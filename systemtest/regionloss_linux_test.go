package systemtest

import (
	"context"
	"fmt"
	"net/http/httptest"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/conductor"
	"github.com/callrelay/callrelay/internal/testkit/linkem"
	"github.com/callrelay/callrelay/internal/testkit/regions"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// Issue 20 item 1 where users feel it: "a region's loss cuts off only the
// calls it hosts, and those fail over". Regions eu and uk (15 ms apart
// each way) each run two forwarders in their namespace; me holds the shared
// Redis and the NATS server (10 ms from each), as a region whose loss is
// not the one tested. Devices are the client library (device processes in
// city namespaces, regions.StartDevice) with the candidates a real locator
// (conductor.Locator over the forwarders' announcements, neighbours from
// the trunks' RTTs) gives their region: their own region's forwarders,
// then the neighbour's. Each device races them all; the nearer's success
// is preferred (client.Config.PreferNearerWithin), yet on this busy
// machine a device still lands on the neighbour now and then (a device in
// 2 of 6 runs, with the preference as without it: RTT samples off by tens
// to hundreds of ms), and is started again (dev, below). No conductor
// runs: the forwarders and devices alone do what is proved. Three calls: A wholly in eu (paris, frankfurt), B wholly
// in uk (london, manchester), C spanning both (all four cities, trunked
// eu-uk). Then eu is lost:
//
//   - partition: every path to and from the eu namespace drops every
//     packet (linkem loss 1), forwarders alive but cut off, their NATS and
//     Redis too;
//   - killed: the eu forwarders stop (their sockets close: devices get
//     port unreachable), the paths stay up.
//
// A's members and C's eu members fail over to uk and hear each other
// again; B hears no gap beyond jitter and loses nothing; C's uk members
// keep hearing each other throughout and hear the eu members again.
//
//	go test -race -run TestRegionLossFailover -v ./systemtest/
func TestRegionLossFailover(t *testing.T) {
	for _, how := range []string{"partition", "killed"} {
		t.Run(how, func(t *testing.T) { regionLoss(t, how) })
	}
}

// The device processes are this test binary (regions.StartDevice); an
// init of another file of the package may do the same, harmlessly: a
// device process exits in the first.
func init() { regions.DeviceMain() }

// lossFailoverAfter is the devices' FailoverAfter: ten of the test
// forwarders' 100 ms keepalive intervals, so that a scheduling pause of a
// race-built device on a busy machine is not a failover.
const lossFailoverAfter = time.Second

func regionLoss(t *testing.T, how string) {
	ms := time.Millisecond
	tp := regions.New(t, regions.Spec{Seed: 21, Sites: []regions.Site{{Name: "eu"}, {Name: "uk"}, {Name: "me"},
		{Name: "paris", Home: "eu", Access: linkem.Profile{Delay: 3 * ms}},
		{Name: "frankfurt", Home: "eu", Access: linkem.Profile{Delay: 5 * ms}},
		{Name: "london", Home: "uk", Access: linkem.Profile{Delay: 3 * ms}},
		{Name: "manchester", Home: "uk", Access: linkem.Profile{Delay: 5 * ms}}},
		Links: []regions.Link{
			{A: "eu", B: "uk", OneWay: linkem.Profile{Delay: 15 * ms, Jitter: ms}},
			{A: "eu", B: "me", OneWay: linkem.Profile{Delay: 10 * ms, Jitter: ms}},
			{A: "uk", B: "me", OneWay: linkem.Profile{Delay: 10 * ms, Jitter: ms}}}})
	e := regions.NewEnvIn(t, tp, "me")
	nodes := []*regions.Node{
		e.StartForwarder(t, tp, "eu", "fwd-eu-1", nil), e.StartForwarder(t, tp, "eu", "fwd-eu-2", nil),
		e.StartForwarder(t, tp, "uk", "fwd-uk-1", nil), e.StartForwarder(t, tp, "uk", "fwd-uk-2", nil)}
	regionOf := map[netip.AddrPort]string{}
	for _, n := range nodes {
		regionOf[n.F.Addr()] = n.Region
	}

	// The locator, as `callrelay locate` runs it, with no neighbour table:
	// a region's neighbours are those its forwarders' trunks measured.
	nc := e.NATS(t, "me")
	t.Cleanup(nc.Close)
	fleet := conductor.NewFleet(e.Key, 2*time.Second, nil)
	require.NoError(t, fleet.Subscribe(nc, "callrelay"))
	t.Cleanup(fleet.Close)
	srv := httptest.NewServer(conductor.NewLocator(fleet, conductor.LocatorConfig{Registerer: prometheus.NewRegistry()}))
	t.Cleanup(srv.Close)
	cands := map[string][]netip.AddrPort{}
	testenv.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		for _, r := range []string{"eu", "uk"} {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			ans, err := client.Locate(ctx, nil, srv.URL, r)
			cancel()
			if err != nil {
				return err
			}
			var cfg client.Config
			ans.Apply(&cfg)
			if len(cfg.Forwarders) != len(nodes) {
				return fmt.Errorf("the locator gives %s %d forwarders (%v), want %d: its own and its neighbour's", r, len(cfg.Forwarders), cfg.Forwarders, len(nodes))
			}
			for i, a := range cfg.Forwarders {
				if want := i < 2; (regionOf[a] == r) != want {
					return fmt.Errorf("the locator's answer for %s: %v, want its own region's two first", r, cfg.Forwarders)
				}
			}
			cands[r] = cfg.Forwarders
		}
		return nil
	})

	home := map[string]string{"paris": "eu", "frankfurt": "eu", "london": "uk", "manchester": "uk"}
	// A device that lands on the neighbour anyway (its RTT samples off by
	// tens to hundreds of ms on this busy machine, or the nearer admission
	// later than the hold; in service the call's conductor would move it)
	// leaves and is started again, at most 4 times, counted.
	var misplaced []string
	dev := func(call protocol.ID, city string, ssrc uint32) *regions.Device {
		for try := 1; ; try++ {
			tok, _ := e.Token(t, call, 8)
			d := regions.StartDevice(t, tp, city, regions.DeviceConfig{Token: tok, Forwarders: cands[home[city]], SSRC: ssrc,
				FailoverAfter: lossFailoverAfter})
			if regionOf[d.Forwarder()] == home[city] {
				return d
			}
			misplaced = append(misplaced, fmt.Sprintf("%#x in %s on %s (RTTs %v)", ssrc, city, regionOf[d.Forwarder()], d.RTTs()))
			require.Less(t, try, 4, "%s's device lands on the neighbour every time: %v", city, misplaced)
			d.Leave()
		}
	}
	callA, callB, callC := protocol.NewID(), protocol.NewID(), protocol.NewID()
	a1, a2 := dev(callA, "paris", 0xa1), dev(callA, "frankfurt", 0xa2)
	b1, b2 := dev(callB, "london", 0xb1), dev(callB, "manchester", 0xb2)
	c1, c2 := dev(callC, "paris", 0xc1), dev(callC, "frankfurt", 0xc2)
	c3, c4 := dev(callC, "london", 0xc3), dev(callC, "manchester", 0xc4)
	callOf := map[uint32]string{}
	A, B, C := []*regions.Device{a1, a2}, []*regions.Device{b1, b2}, []*regions.Device{c1, c2, c3, c4}
	all := slices.Concat(A, B, C)
	for _, d := range all {
		callOf[d.SSRC] = map[uint32]string{0xa: "A", 0xb: "B", 0xc: "C"}[d.SSRC>>4]
		require.Equal(t, home[d.City], regionOf[d.Forwarder()], "call %s's %s joins its own region (forwarder %s; RTTs %v)", callOf[d.SSRC], d.City, d.Forwarder(), d.RTTs())
	}
	start := time.Now()
	for _, call := range [][]*regions.Device{A, B, C} {
		lossHearAll(t, call, start, 25)
	}
	// The calls as they run before the loss: nobody moves (a window of
	// observation, failing at the first move).
	baseFrom := time.Now()
	lossWatch(t, 2*time.Second, func() error {
		for _, d := range all {
			if m := d.Moves(); len(m) > 0 {
				return fmt.Errorf("call %s's %s moved before the loss: %v", callOf[d.SSRC], d.City, m)
			}
		}
		return nil
	})
	baseTo := time.Now()

	lost := time.Now()
	switch how {
	case "partition":
		others := []string{"uk", "me", "paris", "frankfurt", "london", "manchester"}
		for _, s := range others {
			require.NoError(t, tp.Router().SetPath("eu", s, linkem.Profile{Loss: 1}))
			require.NoError(t, tp.Router().SetPath(s, "eu", linkem.Profile{Loss: 1}))
		}
		// Healed when the test ends, before the eu forwarders stop (cleanups
		// run last first), so that they do not wait out Redis timeouts.
		t.Cleanup(func() {
			for _, s := range others {
				_ = tp.Router().SetPath("eu", s, tp.Profile("eu", s))
				_ = tp.Router().SetPath(s, "eu", tp.Profile(s, "eu"))
			}
		})
	case "killed":
		for _, n := range nodes[:2] {
			n.Stop()
		}
	}
	euDevs := []*regions.Device{a1, a2, c1, c2}
	testenv.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		for _, d := range euDevs {
			if r := regionOf[d.Forwarder()]; r != "uk" {
				return fmt.Errorf("call %s's %s is on %s (%s) %v after eu was lost, want a uk forwarder", callOf[d.SSRC], d.City, d.Forwarder(), r, time.Since(lost).Round(ms))
			}
		}
		return nil
	})
	var lastMove time.Time
	took := map[string]time.Duration{}
	for _, d := range euDevs {
		m := d.Moves()
		require.Len(t, m, 1, "call %s's %s moves once", callOf[d.SSRC], d.City)
		took[fmt.Sprintf("%s/%s", callOf[d.SSRC], d.City)] = m[0].At.Sub(lost).Round(ms)
		if m[0].At.After(lastMove) {
			lastMove = m[0].At
		}
	}
	lossHearAll(t, A, lastMove, 25)
	lossHearAll(t, C, lastMove, 25)
	settle := time.Now()

	// Figures: the gap each way (longest silence in arrivals) and the
	// packets missing by sequence number, over [lost-1s, settle) for those
	// who failed over (the gap spans the loss), over [lost, settle) for the
	// untouched; against the gap in the 2 s watched before the loss.
	type pairFig struct {
		gap, baseGap   time.Duration
		heardAgain     time.Duration // the gap's end, after the loss
		missing, total int
	}
	fig := func(src, dst *regions.Device, from time.Time) pairFig {
		arr := dst.From(src.SSRC)
		g, ended := regions.MaxGap(arr, from, settle)
		bg, _ := regions.MaxGap(arr, baseFrom, baseTo)
		miss, total := lossMissing(arr, from, settle)
		return pairFig{gap: g.Round(ms), baseGap: bg.Round(ms), heardAgain: ended.Sub(lost).Round(ms), missing: miss, total: total}
	}
	var report []string
	say := func(format string, args ...any) { report = append(report, fmt.Sprintf(format, args...)) }
	name := func(d *regions.Device) string { return callOf[d.SSRC] + "/" + d.City }
	pairs := func(ds []*regions.Device) [][2]*regions.Device {
		var out [][2]*regions.Device
		for _, x := range ds {
			for _, y := range ds {
				if x != y {
					out = append(out, [2]*regions.Device{x, y})
				}
			}
		}
		return out
	}
	isEU := func(d *regions.Device) bool { return home[d.City] == "eu" }
	// (a) and the eu side of (c): the members who failed over hear each
	// other, and are heard, again.
	var worstFailover time.Duration
	for _, p := range slices.Concat(pairs(A), pairs(C)) {
		if !isEU(p[0]) && !isEU(p[1]) {
			continue
		}
		f := fig(p[0], p[1], lost.Add(-time.Second))
		say("%s -> %s: gap %v (heard again %v after the loss), %d of %d missing; before the loss gap %v", name(p[0]), name(p[1]), f.gap, f.heardAgain, f.missing, f.total, f.baseGap)
		worstFailover = max(worstFailover, f.gap)
		require.Positive(t, f.missing, "%s -> %s: packets lost as eu went (the test saw the loss)", name(p[0]), name(p[1]))
		require.Less(t, f.gap, lossFailoverAfter+4*time.Second, "%s -> %s: heard again after the failover", name(p[0]), name(p[1]))
	}
	// (b) and the uk side of (c): no gap beyond jitter, nothing missing, no
	// move.
	var worstKept time.Duration
	for _, p := range slices.Concat(pairs(B), pairs([]*regions.Device{c3, c4})) {
		f := fig(p[0], p[1], lost)
		say("%s -> %s: gap %v, %d of %d missing; before the loss gap %v", name(p[0]), name(p[1]), f.gap, f.missing, f.total, f.baseGap)
		worstKept = max(worstKept, f.gap)
		// Before the loss this machine's scheduling alone gave gaps of up
		// to 191 ms (26-191 ms in 12 runs at load 9-20).
		require.Less(t, f.gap, 300*time.Millisecond, "%s -> %s: untouched by eu's loss", name(p[0]), name(p[1]))
		require.LessOrEqual(t, f.missing, 2, "%s -> %s: packets missing", name(p[0]), name(p[1]))
		require.Positive(t, f.total)
	}
	for _, d := range []*regions.Device{b1, b2, c3, c4} {
		require.Empty(t, d.Moves(), "%s stays on its uk forwarder", name(d))
	}
	// The spanning call's uk members were heard by its eu members until the
	// loss, then again after the failover: the trunk to the dead region
	// blocked nothing.
	for _, d := range all {
		say("%s on %s (%s) after, moves %v", name(d), d.Forwarder(), regionOf[d.Forwarder()], lossMoves(d.Moves(), lost))
	}
	t.Logf("eu lost (%s); failover (move) after %v; worst gap of a member who failed over %v, of the untouched %v; load %s; devices started again for landing on the neighbour: %d %v\n  %s",
		how, took, worstFailover, worstKept, lossLoad(), len(misplaced), misplaced, strings.Join(report, "\n  "))
}

// lossMissing is how many packets sent in [from, to) never arrived, by
// sequence number between the first and last that did, and how many that
// range holds.
func lossMissing(arr []regions.Arrival, from, to time.Time) (missing, total int) {
	seen := map[uint16]bool{}
	var seqs []int
	for _, a := range arr {
		if !a.Sent.Before(from) && a.Sent.Before(to) && !seen[a.Seq] {
			seen[a.Seq] = true
			seqs = append(seqs, int(a.Seq))
		}
	}
	if len(seqs) == 0 {
		return 0, 0
	}
	slices.Sort(seqs)
	total = seqs[len(seqs)-1] - seqs[0] + 1 // a window shorter than 21 minutes: no wrap
	return total - len(seqs), total
}

// lossMoves are a device's moves as offsets from t0.
func lossMoves(ms []regions.Move, t0 time.Time) []string {
	var out []string
	for _, m := range ms {
		out = append(out, fmt.Sprintf("%s at +%v", m.To, m.At.Sub(t0).Round(time.Millisecond)))
	}
	return out
}

// lossHearAll waits until every device has heard n packets sent at or
// after since from every other.
func lossHearAll(t *testing.T, ds []*regions.Device, since time.Time, n int) {
	t.Helper()
	testenv.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		for _, x := range ds {
			for _, y := range ds {
				if x != y && x.HeardSince(y.SSRC, since) < n {
					return fmt.Errorf("%s (%#x) heard %d from %s (%#x) since %v", x.City, x.SSRC, x.HeardSince(y.SSRC, since), y.City, y.SSRC, since.Format("15:04:05.000"))
				}
			}
		}
		return nil
	})
}

// lossWatch checks ok every 20 ms for d, failing the test at the first
// error: a window of observation, not a wait.
func lossWatch(t *testing.T, d time.Duration, ok func() error) {
	t.Helper()
	tk := time.NewTicker(20 * time.Millisecond)
	defer tk.Stop()
	for end := time.Now().Add(d); time.Now().Before(end); <-tk.C {
		if err := ok(); err != nil {
			t.Fatal(err)
		}
	}
}

// lossLoad is the machine's load averages (/proc/loadavg), for the log.
func lossLoad() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}
