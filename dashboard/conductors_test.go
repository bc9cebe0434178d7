package dashboard

import (
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// condReport is conductor id's report seq, made at at.
func condReport(id, region string, seq uint64, at time.Time) *protocol.ConductorReport {
	return &protocol.ConductorReport{Conductor: id, Region: region, Started: time.Unix(1_799_999_000, 0), At: at, Seq: seq,
		Interval: time.Second, Calls: 3, Partitions: 2, Decisions: 100 * seq, InInterval: 40,
		P50: 20 * time.Millisecond, P99: 98 * time.Millisecond, Max: 120 * time.Millisecond}
}

func (e *env) publishConductor(t *testing.T, b []byte) {
	t.Helper()
	require.NoError(t, e.pub.Publish("callrelay.conductors", b))
	require.NoError(t, e.pub.Flush())
}

// Conductors' reports over real NATS: an authentic one is booked in the
// history (the worst p50/p99, decisions per second) and its events reach
// the call's timeline; forged, malformed, replayed and skewed ones are
// dropped and counted by reason, in /metrics too.
func TestConductorReports(t *testing.T) {
	e := start(t)
	now := e.clock.Now()
	call, a, b := protocol.NewID(), protocol.NewID(), protocol.NewID()
	r := condReport("cnd-a/01020304", "eu-west", 1, now)
	r.Events = []protocol.ConductorEvent{
		{Kind: protocol.ConductorSpeaker, At: now, Call: call, Participant: a},
		{Kind: protocol.ConductorCut, At: now, Call: call, Participant: b, Other: a, From: 2, To: 1},
	}
	good, err := r.Marshal(nil, e.key)
	require.NoError(t, err)
	e.publishConductor(t, good)
	slow := condReport("cnd-b/0a0b0c0d", "eu-west", 1, now)
	slow.P50, slow.P99 = 30*time.Millisecond, 250*time.Millisecond
	b2, err := slow.Marshal(nil, e.key)
	require.NoError(t, err)
	e.publishConductor(t, b2)

	other, err := protocol.NewClusterKey()
	require.NoError(t, err)
	forged, err := condReport("cnd-x", "", 1, now).Marshal(nil, other)
	require.NoError(t, err)
	e.publishConductor(t, forged)
	e.publishConductor(t, []byte("not a report"))
	e.publishConductor(t, good) // replayed
	skewed, err := condReport("cnd-c", "", 1, now.Add(-time.Minute)).Marshal(nil, e.key)
	require.NoError(t, err)
	e.publishConductor(t, skewed)

	drops := func() condDrops { _, d := e.srv.cond.view(e.clock.Now(), time.Hour); return d }
	testenv.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if d := drops(); d != (condDrops{Forged: 1, Malformed: 1, Stale: 1, Skewed: 1}) {
			return fmt.Errorf("drops %+v", d)
		}
		return nil
	})
	tl := e.srv.cond.timeline(call)
	require.Len(t, tl, 2)
	require.Equal(t, "speaker", tl[0].Kind)
	require.Equal(t, a.String(), tl[0].Participant)
	require.Equal(t, "cnd-a/01020304", tl[0].Conductor)
	require.Equal(t, "layer_cut", tl[1].Kind)
	require.Contains(t, tl[1].Detail, "high -> low")

	e.clock.Add(time.Second) // the reports' second is complete: booked at the next push
	h := waitHistory(t, e, 2, func(h HistoryView) error {
		for _, p := range h.Series[seriesAll] {
			if p.Conductors == 2 {
				return nil
			}
		}
		return fmt.Errorf("no second with 2 conductors in %+v", h.Series[seriesAll])
	})
	for _, name := range []string{seriesAll, "eu-west"} {
		p := h.Series[name][len(h.Series[name])-1]
		require.Equal(t, 250.0, p.DecideP99Ms, name)
		require.Equal(t, 30.0, p.DecideP50Ms, name)
		require.Equal(t, 80.0, p.Decisions, name)
	}
	require.Equal(t, -1.0, h.Series[seriesAll][0].DecideP99Ms, "a second without reports")

	resp, err := e.client.Get(e.base + "/metrics")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	for _, line := range []string{
		`callrelay_dashboard_conductors{state="up"} 2`,
		`callrelay_dashboard_conductor_decision_latency_seconds{quantile="0.99",region="eu-west"} 0.25`,
		`callrelay_dashboard_conductor_decisions_per_second{region="eu-west"} 80`,
		`callrelay_dashboard_conductor_reports_dropped_total{reason="forged"} 1`,
		`callrelay_dashboard_conductor_reports_dropped_total{reason="stale"} 1`,
		`callrelay_dashboard_conductor_reports_dropped_total{reason="skewed"} 1`,
		`callrelay_dashboard_admin_requests_total{action="call",result="401"} 0`,
	} {
		require.Contains(t, string(body), line)
	}
}

// Each call keeps its last callEventsLen events; beyond maxTimelineCalls
// calls, the one heard of least recently makes room.
func TestConductorTimelineBounded(t *testing.T) {
	var c conductors
	t0 := time.Unix(1_800_000_000, 0)
	call := protocol.NewID()
	r := condReport("cnd-a", "", 1, t0)
	for i := range callEventsLen + 6 {
		r.Seq = uint64(i + 1)
		r.Events = []protocol.ConductorEvent{{Kind: protocol.ConductorSpeaker, At: t0.Add(time.Duration(i) * time.Millisecond), Call: call}}
		c.add(r, t0)
	}
	tl := c.timeline(call)
	require.Len(t, tl, callEventsLen)
	require.Equal(t, t0.Add(6*time.Millisecond).UnixMilli(), tl[0].AtUnixMs, "the oldest kept")
	require.Equal(t, "dominant speaker; before: nobody", tl[0].Detail)

	first := protocol.NewID()
	r.Seq++
	r.Events = []protocol.ConductorEvent{{Kind: protocol.ConductorSpeaker, At: t0, Call: first}}
	c.add(r, t0.Add(-time.Second)) // heard of least recently
	for i := range maxTimelineCalls - 1 {
		r.Seq++
		r.Events = []protocol.ConductorEvent{{Kind: protocol.ConductorSpeaker, At: t0, Call: protocol.ID{0xee, 14: byte(i >> 8), 15: byte(i)}}}
		c.add(r, t0)
	}
	require.Len(t, c.calls, maxTimelineCalls)
	require.Nil(t, c.timeline(first), "evicted")
	require.Len(t, c.timeline(call), callEventsLen)
}
