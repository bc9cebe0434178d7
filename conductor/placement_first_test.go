package conductor

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// firstEnv is one partition of a conductor on fake time, with a real
// Redis (the call records it reads) and a real NATS (the moves it sends):
// London (lon-1, region uk), Frankfurt (fra-1, eu) and Johannesburg
// (jnb-1, za); uk-eu 24 ms, eu-za 200 ms, uk-za 210 ms over the trunks.
type firstEnv struct {
	t     *testing.T
	p     *partition
	q     *ioQueue
	store statestore.Store
	key   protocol.ClusterKey
	nc    *nats.Conn
	t0    time.Time
	media map[string]netip.AddrPort
}

func newFirstEnv(t *testing.T) *firstEnv {
	k, err := protocol.NewClusterKey()
	require.NoError(t, err)
	store, err := statestore.OpenRedis(testenv.Redis(t).URL(), statestore.Config{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = store.Close() })
	ns := testenv.NATS(t)
	nc, err := nats.Connect(ns.ClientURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	cfg := Default()
	cfg.ID, cfg.Key, cfg.NATS, cfg.Store, cfg.Leases, cfg.Partitions = "cond-1", k, nc, store, store, 1
	t0 := time.Unix(1_800_000_000, 0)
	c := &Conductor{cfg: cfg, m: newMetrics(nil), pm: newPlacementMetrics(nil), log: zap.NewNop(),
		fleet: NewFleet(k, time.Hour, nil)}
	e := &firstEnv{t: t, key: k, nc: nc, store: store, t0: t0, q: newIOQueue(store, c.m, c.log),
		p: &partition{c: c, calls: map[protocol.ID]*callState{}, unknown: map[protocol.ID]time.Time{}, stride: 1},
		media: map[string]netip.AddrPort{"lon-1": netip.MustParseAddrPort("192.0.2.1:3478"),
			"fra-1": netip.MustParseAddrPort("192.0.2.2:3478"), "jnb-1": netip.MustParseAddrPort("192.0.2.3:3478")}}
	e.p.setValidUntil(t0.Add(time.Hour))
	e.p.setEpoch(1)
	for id, region := range map[string]string{"lon-1": "uk", "fra-1": "eu", "jnb-1": "za"} {
		c.fleet.Take(sealedAnnounce(t, k, id, e.media[id].String(), t0), t0)
		rtts := map[string][]protocol.RegionRTT{
			"uk": {{Region: "eu", RTT: ms(24)}, {Region: "za", RTT: ms(210)}},
			"eu": {{Region: "uk", RTT: ms(24)}, {Region: "za", RTT: ms(200)}},
			"za": {{Region: "eu", RTT: ms(200)}, {Region: "uk", RTT: ms(210)}},
		}[region]
		c.fleet.Take(sealedReport(t, k, id, region, 0, rtts, t0), t0)
	}
	return e
}

// call makes a call whose record holds members joined at the given times
// on the given forwarders, and loads it as the conductor does when it
// first hears of it (the io queue's job run here, then onLoaded).
func (e *firstEnv) call(joined map[protocol.ID]time.Time, on map[protocol.ID]string) *callState {
	ctx := context.Background()
	id := protocol.NewID()
	for who, at := range joined {
		_, err := e.store.AddMember(ctx, id, protocol.ClassGroup, 8, who, statestore.Member{Forwarder: on[who],
			Addr: netip.MustParseAddrPort("198.51.100.1:5000"), JoinedAt: at})
		require.NoError(e.t, err)
	}
	cs := &callState{id: id, subject: protocol.CallSubject(e.p.c.cfg.Subject, id), det: NewSpeakerDetector(e.p.c.cfg.Speaker),
		members: map[protocol.ID]struct{}{}, spurts: map[protocol.ID]spurt{}}
	e.p.calls[id] = cs
	out := make(chan loadResult, 1)
	require.True(e.t, e.q.load(id, out))
	(<-e.q.jobs)(ctx)
	e.p.onLoaded(<-out, e.t0)
	require.True(e.t, cs.ready)
	return cs
}

// report feeds the metadata of member who on forwarder on carrying its
// RTT report (ms per forwarder; nil: a report without RTTs).
func (e *firstEnv) report(cs *callState, who protocol.ID, on string, rtts map[string]int, now time.Time) {
	mm := protocol.MemberMetadata{Participant: who, MeanLevel: 127, MaxLevel: 127}
	if rtts != nil {
		mm.Flags |= protocol.MetaRTT
		for _, f := range sortedIDs(rtts) {
			mm.RTTs.Entries[mm.RTTs.N] = protocol.CandidateRTT{Addr: e.media[f], RTT: ms(rtts[f]), Via: f == on}
			mm.RTTs.N++
		}
	}
	e.p.observePlacement(cs, on, &mm, now)
}

func sortedIDs(m map[string]int) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// moves subscribes to cs's subject and returns a function giving the
// PlacementMoves sent so far (once n have come, or after 5 s).
func (e *firstEnv) moves(cs *callState) func(n int) map[protocol.ID]string {
	sub, err := e.nc.SubscribeSync(cs.subject)
	require.NoError(e.t, err)
	require.NoError(e.t, e.nc.Flush())
	got := map[protocol.ID]string{}
	return func(n int) map[protocol.ID]string {
		for len(got) < n {
			msg, err := sub.NextMsg(5 * time.Second)
			require.NoError(e.t, err, "waiting for %d moves, have %v", n, got)
			if typ, err := protocol.PeekClusterMsgType(msg.Data); err != nil || typ != protocol.ClusterMsgPlacementMove {
				continue
			}
			var m protocol.PlacementMove
			require.NoError(e.t, m.Unmarshal(msg.Data, e.key))
			got[m.Participant] = m.To
		}
		return got
	}
}

func (e *firstEnv) moved(label string) float64 {
	return testutil.ToFloat64(e.p.c.pm.moves.WithLabelValues(label))
}

// A London device (lon-1 5 ms, fra-1 15 ms) in a call with two in
// Frankfurt (fra-1 5 ms, lon-1 15 ms): the race puts it on lon-1, one
// trunk (24 ms) from the others (worst path 34 ms), while all on fra-1 is
// 20 ms. The 14 ms gain is under the re-placement hysteresis (15 ms): a
// call taken over mid-call stays split for good. A new call is placed on
// the conductor's first decision after the reports, the London device
// moved at once, and nobody moves again.
func TestFirstPlacementOfANewCall(t *testing.T) {
	a, b, c := pid(1), pid(2), pid(3)
	on := map[protocol.ID]string{a: "lon-1", b: "fra-1", c: "fra-1"}
	rtts := map[protocol.ID]map[string]int{a: {"lon-1": 5, "fra-1": 15}, b: {"fra-1": 5, "lon-1": 15}, c: {"fra-1": 5, "lon-1": 15}}
	run := func(e *firstEnv, cs *callState, from, until time.Time, where map[protocol.ID]string) {
		for now := from; !now.After(until); now = now.Add(100 * time.Millisecond) {
			if now.Sub(from)%(500*time.Millisecond) == 0 { // a keepalive's report every 0.5 s
				for _, who := range []protocol.ID{a, b, c} {
					e.report(cs, who, where[who], rtts[who], now)
				}
			}
			e.p.place(cs, now)
		}
	}

	t.Run("new call", func(t *testing.T) {
		e := newFirstEnv(t)
		cs := e.call(map[protocol.ID]time.Time{a: e.t0, b: e.t0, c: e.t0}, on)
		got := e.moves(cs)
		// The first keepalive after a join carries only the RTT to the
		// race's winner: the first placement waits for the second.
		for who, f := range on {
			e.report(cs, who, f, map[string]int{f: 5}, e.t0.Add(20*time.Millisecond))
		}
		e.p.place(cs, e.t0.Add(100*time.Millisecond))
		require.Zero(t, e.moved("first"))
		require.Zero(t, testutil.ToFloat64(e.p.c.pm.runs.WithLabelValues("first_stay")))
		// The full reports: placed on the next tick, without waiting out
		// Every (0.5 s since the last run) or Sustain.
		for _, who := range []protocol.ID{a, b, c} {
			e.report(cs, who, on[who], rtts[who], e.t0.Add(150*time.Millisecond))
		}
		e.p.place(cs, e.t0.Add(200*time.Millisecond))
		require.Equal(t, 1.0, e.moved("first"))
		require.Equal(t, map[protocol.ID]string{a: "fra-1"}, got(1))
		// The mid-call rule alone would not have moved it.
		in := &PlacementInput{Forwarders: map[string]PlacedForwarder{"lon-1": {Region: "uk"}, "fra-1": {Region: "eu"}},
			RegionRTT: map[[2]string]time.Duration{{"uk", "eu"}: ms(24)}}
		for _, who := range []protocol.ID{a, b, c} {
			in.Members = append(in.Members, member(who[15], on[who], rtts[who]))
		}
		r, err := Place(DefaultPlacementConfig(), in)
		require.NoError(t, err)
		require.Equal(t, ms(20), r.Worst)
		require.Nil(t, Replace(DefaultPlacementConfig(), in, r, time.Time{}, e.t0))

		// Still reported on lon-1 while it migrates: no second move; then
		// on fra-1, and 12 s of reports move nobody.
		run(e, cs, e.t0.Add(300*time.Millisecond), e.t0.Add(time.Second), on)
		require.Equal(t, 1.0, e.moved("first"))
		// fwd-lon's 'left' may come before fwd-fra's first metadata of A:
		// A is on its way, not a new member again.
		left := protocol.MemberMetadata{Participant: a, MeanLevel: 127, MaxLevel: 127, Flags: protocol.MetaLeft}
		e.p.observePlacement(cs, "lon-1", &left, e.t0.Add(1050*time.Millisecond))
		require.Equal(t, "fra-1", cs.place.members[a].fwd)
		after := map[protocol.ID]string{a: "fra-1", b: "fra-1", c: "fra-1"}
		run(e, cs, e.t0.Add(1500*time.Millisecond), e.t0.Add(13*time.Second), after)
		require.Equal(t, 1.0, e.moved("first"))
		require.Zero(t, e.moved("rtt"))
		require.Zero(t, e.moved("region"))
	})

	t.Run("call taken over", func(t *testing.T) {
		e := newFirstEnv(t)
		long := e.t0.Add(-time.Minute) // joined a minute before this conductor heard of the call
		cs := e.call(map[protocol.ID]time.Time{a: long, b: long, c: long}, on)
		run(e, cs, e.t0, e.t0.Add(13*time.Second), on)
		require.Zero(t, e.moved("first")+e.moved("rtt")+e.moved("region"), "its members are not new: the hysteresis holds")
	})

	t.Run("reports after the window", func(t *testing.T) {
		e := newFirstEnv(t)
		cs := e.call(map[protocol.ID]time.Time{a: e.t0, b: e.t0, c: e.t0}, on)
		first := e.p.c.cfg.Placement.First
		run(e, cs, e.t0.Add(first), e.t0.Add(first+13*time.Second), on)
		require.Zero(t, e.moved("first")+e.moved("rtt"))
	})

	t.Run("store not read", func(t *testing.T) {
		e := newFirstEnv(t)
		id := protocol.NewID()
		cs := &callState{id: id, subject: protocol.CallSubject(e.p.c.cfg.Subject, id), ready: true}
		run(e, cs, e.t0, e.t0.Add(3*time.Second), on)
		require.Zero(t, e.moved("first"), "without the record a new call cannot be told from one taken over")
	})
}

// A member joining an ongoing call is placed at once, with the others
// held where they are: only the joiner moves.
func TestFirstPlacementOfAJoiner(t *testing.T) {
	e := newFirstEnv(t)
	b, c, d := pid(2), pid(3), pid(4)
	long := e.t0.Add(-time.Minute)
	cs := e.call(map[protocol.ID]time.Time{b: long, c: long}, map[protocol.ID]string{b: "fra-1", c: "fra-1"})
	got := e.moves(cs)
	for _, who := range []protocol.ID{b, c} {
		e.report(cs, who, "fra-1", map[string]int{"fra-1": 20, "lon-1": 30}, e.t0)
	}
	e.p.place(cs, e.t0.Add(100*time.Millisecond))
	// D joins 30 s later (not in the record read then) on lon-1, its
	// nearest: 5 ms, fra-1 15 ms. On lon-1 with one trunk to the others:
	// 5+20+24 = 49; on fra-1: 20+20 = 40.
	joined := e.t0.Add(30 * time.Second)
	e.report(cs, d, "lon-1", map[string]int{"lon-1": 5}, joined)
	e.p.place(cs, joined.Add(100*time.Millisecond))
	require.Zero(t, e.moved("first"), "its first report names only the race's winner")
	e.report(cs, d, "lon-1", map[string]int{"lon-1": 5, "fra-1": 15}, joined.Add(150*time.Millisecond))
	e.p.place(cs, joined.Add(200*time.Millisecond))
	require.Equal(t, map[protocol.ID]string{d: "fra-1"}, got(1))
	require.Equal(t, 1.0, e.moved("first"))
	require.Zero(t, e.moved("rtt"))
}

// The fairness rule and the report bounds hold at the first placement:
// a plausible lie moves only the liar, an impossible one nobody.
func TestFirstPlacementOfLiars(t *testing.T) {
	for _, tc := range []struct {
		name string
		lie  map[string]int
		want map[protocol.ID]string
		bad  string
	}{
		{name: "plausible lie", lie: map[string]int{"fra-1": 1000, "jnb-1": 0}, want: map[protocol.ID]string{pid(1): "jnb-1"}},
		{name: "out of range", lie: map[string]int{"fra-1": 10_000, "jnb-1": 0}, bad: "range"},
		{name: "faster than the trunk", lie: map[string]int{"fra-1": 100, "jnb-1": 0}, bad: "triangle"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newFirstEnv(t)
			liar, honest := pid(1), pid(2)
			cs := e.call(map[protocol.ID]time.Time{liar: e.t0, honest: e.t0}, map[protocol.ID]string{liar: "fra-1", honest: "fra-1"})
			got := e.moves(cs)
			for _, who := range []protocol.ID{honest, liar} { // the reports sent as their races were won
				e.report(cs, who, "fra-1", map[string]int{"fra-1": 10}, e.t0)
			}
			e.report(cs, honest, "fra-1", map[string]int{"fra-1": 10, "jnb-1": 100}, e.t0.Add(50*time.Millisecond))
			e.report(cs, liar, "fra-1", tc.lie, e.t0.Add(50*time.Millisecond))
			e.p.place(cs, e.t0.Add(100*time.Millisecond))
			if tc.bad != "" {
				require.InDelta(t, 1, testutil.ToFloat64(e.p.c.pm.entries.WithLabelValues("bad_report_"+tc.bad)), 0)
				require.Zero(t, e.moved("first"))
				return
			}
			require.Equal(t, tc.want, got(len(tc.want)))
			require.Equal(t, float64(len(tc.want)), e.moved("first"))
		})
	}
}

func TestPlacementFirstValidate(t *testing.T) {
	cfg := DefaultPlacementConfig()
	require.Equal(t, 2*time.Second, cfg.First)
	cfg.First = -time.Second
	require.ErrorContains(t, cfg.Validate(), "first-placement window -1s")
	cfg.First = 0
	require.NoError(t, cfg.Validate())
}
