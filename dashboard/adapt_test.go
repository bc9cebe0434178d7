package dashboard

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// adaptReport is report with the adaptation section.
func adaptReport(id string, seq uint64, a protocol.LoadAdapt) *protocol.LoadReport {
	r := report(id, seq, 0)
	r.HasAdapt, r.Adapt = true, a
	return r
}

// waitSeq polls until the forwarder's row shows report seq.
func (e *env) waitSeq(t *testing.T, id string, seq uint64) *ForwarderView {
	t.Helper()
	s := e.waitState(t, func(s Snapshot) error {
		if f := fwdByID(s, id); f == nil || f.Seq != seq {
			return fmt.Errorf("%s report %d not seen yet", id, seq)
		}
		return nil
	})
	return fwdByID(s, id)
}

func TestDashboardAdaptation(t *testing.T) {
	e := start(t)
	a1 := protocol.LoadAdapt{Nacked: 1000, Resent: 900, NotCached: 50, OverBudget: 20, ResentBytes: 1_000_000,
		Probes: 7, KeyFramesAsked: 3, Subscriptions: 2}
	e.publish(t, adaptReport("fwd-a", 1, a1), e.key)
	e.publish(t, report("fwd-old", 1, 0), e.key) // a forwarder from before the section
	f := e.waitSeq(t, "fwd-a", 1)
	require.NotNil(t, f.Adapt)
	require.Zero(t, f.Adapt.WindowSecs, "the first report is the baseline: no rates yet")
	require.Zero(t, f.Adapt.NackedPerSec)
	require.EqualValues(t, 1000, f.Adapt.Total.Nacked)
	require.EqualValues(t, 1_000_000, f.Adapt.Total.ResentBytes)
	require.Nil(t, e.waitSeq(t, "fwd-old", 1).Adapt, "no section, no adaptation numbers")

	// Ten seconds on: 100 more NACKs, 75 resent (96 kB), 15 not cached,
	// 5 over budget (and so 5 bounded), 3 probes, 1 key frame asked, 2
	// subscriptions.
	e.clock.Add(10 * time.Second)
	a2 := protocol.LoadAdapt{Nacked: 1100, Resent: 975, NotCached: 65, OverBudget: 25, ResentBytes: 1_096_000,
		Probes: 10, KeyFramesAsked: 4, Subscriptions: 4}
	e.publish(t, adaptReport("fwd-a", 2, a2), e.key)
	v := e.waitSeq(t, "fwd-a", 2).Adapt
	require.NotNil(t, v)
	require.InDelta(t, 10, v.WindowSecs, 1e-9, "heard for 10 s: the rates average over 10 s, not 60")
	require.InDelta(t, 10, v.NackedPerSec, 1e-9)
	require.InDelta(t, 7.5, v.ResentPerSec, 1e-9)
	require.InDelta(t, 1.5, v.NotCachedPerSec, 1e-9)
	require.InDelta(t, 0.5, v.OverBudgetPerSec, 1e-9)
	require.InDelta(t, 0.5, v.BoundedPerSec, 1e-9)
	require.InDelta(t, 9.6, v.ResentKBPerSec, 1e-9)
	require.InDelta(t, 18, v.ProbesPerMin, 1e-9)
	require.InDelta(t, 6, v.KeyFramesPerMin, 1e-9)
	require.InDelta(t, 12, v.SubscriptionsPerMin, 1e-9)
	require.Equal(t, AdaptCounts{Nacked: 100, Resent: 75, NotCached: 15, OverBudget: 5, ResentBytes: 96_000,
		Probes: 3, KeyFramesAsked: 1, Subscriptions: 2}, v.Last1m)
	require.EqualValues(t, 1100, v.Total.Nacked)

	// The forwarder restarts: its new counters count whole. A minute
	// after the first report the window is a full minute.
	e.clock.Add(50 * time.Second)
	r3 := adaptReport("fwd-a", 1, protocol.LoadAdapt{Nacked: 20, Resent: 20, ResentBytes: 24_000, Probes: 2})
	r3.Started = testStarted.Add(time.Hour)
	e.publish(t, r3, e.key)
	v = e.waitState(t, func(s Snapshot) error {
		if f := fwdByID(s, "fwd-a"); f == nil || !f.Started.Equal(r3.Started) {
			return fmt.Errorf("the restarted fwd-a not seen yet")
		}
		return nil
	}).Forwarders[0].Adapt
	require.InDelta(t, 60, v.WindowSecs, 1e-9)
	require.InDelta(t, 2, v.NackedPerSec, 1e-9, "(100 + 20) / 60 s")
	require.InDelta(t, 2, v.ResentKBPerSec, 1e-9, "(96 + 24) kB / 60 s")
	require.InDelta(t, 5, v.ProbesPerMin, 1e-9)
	require.InDelta(t, 0.25, v.NotCachedPerSec, 1e-9, "15 / 60 s: the restart added none")

	// A minute of silence on the adaptation front: the rates fall to 0.
	e.clock.Add(61 * time.Second)
	r4 := *r3
	r4.Seq = 2
	e.publish(t, &r4, e.key)
	v = e.waitSeq(t, "fwd-a", 2).Adapt
	require.Zero(t, v.NackedPerSec)
	require.Zero(t, v.ProbesPerMin)
	require.Equal(t, AdaptCounts{}, v.Last1m)
	require.EqualValues(t, 20, v.Total.Nacked)

	// A report without the section (a downgrade) hides the numbers.
	e.clock.Add(time.Second)
	r5 := report("fwd-a", 3, 0)
	r5.Started = r3.Started
	e.publish(t, r5, e.key)
	require.Nil(t, e.waitSeq(t, "fwd-a", 3).Adapt)
}
