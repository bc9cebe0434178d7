package conductor

import (
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// The fleet takes a heartbeat or load report only if it is newer by
// (started, sequence) than the last of its kind from its forwarder and made
// within 10 s of its clock (protocol/README.md 7, Freshness): a captured
// message sent again neither keeps a dead forwarder in the view (where the
// locator would send devices to it), nor brings it back, nor undoes a
// drain. Stale messages are counted.
func TestFleetDropsStaleMessages(t *testing.T) {
	k, err := protocol.NewClusterKey()
	require.NoError(t, err)
	bad := prometheus.NewCounter(prometheus.CounterOpts{Name: "bad"})
	f := NewFleet(k, 5*time.Second, bad)
	t0 := time.Unix(1_800_000_000, 0)
	started := t0.Add(-time.Hour)
	announce := func(seq uint64, at time.Time, draining bool) []byte {
		a := protocol.ForwarderAnnounce{ID: "fra-1", Media: netip.MustParseAddrPort("192.0.2.1:3478"),
			Trunk: netip.MustParseAddrPort("127.0.0.1:9"), Seq: seq, Started: started, At: at, Draining: draining}
		b, err := a.Marshal(nil, k)
		require.NoError(t, err)
		return b
	}
	report := func(seq uint64, at time.Time, draining bool) []byte {
		r := protocol.LoadReport{Forwarder: "fra-1", Seq: seq, Started: started, At: at, Draining: draining,
			HasOps: true, Ops: protocol.LoadOps{Region: "eu"}}
		b, err := r.Marshal(nil, k)
		require.NoError(t, err)
		return b
	}
	live := func(now time.Time) bool {
		return len(f.View(now).InRegions([]string{"eu"})) == 1
	}
	a1, r1 := announce(1, t0, false), report(1, t0, false)
	f.Take(a1, t0)
	f.Take(r1, t0)
	require.True(t, live(t0))
	require.InDelta(t, 0, testutil.ToFloat64(bad), 0)

	// It drains; its earlier messages sent again do not undo that.
	t1 := t0.Add(time.Second)
	f.Take(announce(2, t1, true), t1)
	f.Take(report(2, t1, true), t1)
	require.False(t, live(t1), "draining")
	f.Take(a1, t1.Add(time.Second))
	f.Take(r1, t1.Add(time.Second))
	require.False(t, live(t1.Add(time.Second)), "a replayed heartbeat undid the drain")
	require.InDelta(t, 2, testutil.ToFloat64(bad), 0)

	// It comes back, then dies: its last messages, sent again every
	// second, do not keep it alive.
	a3, r3 := announce(3, t1.Add(time.Second), false), report(3, t1.Add(time.Second), false)
	f.Take(a3, t1.Add(time.Second))
	f.Take(r3, t1.Add(time.Second))
	require.True(t, live(t1.Add(time.Second)))
	for i := 2; i <= 8; i++ {
		now := t1.Add(time.Duration(i) * time.Second)
		f.Take(a3, now)
		f.Take(r3, now)
	}
	dead := t1.Add(8 * time.Second)
	require.False(t, live(dead), "a dead forwarder kept alive by its last heartbeat sent again")
	// Nor do they bring it back once it has left the view.
	f.Take(a3, dead.Add(time.Second))
	require.False(t, live(dead.Add(time.Second)))

	// Made over 10 s from our clock: stale, even from a forwarder never
	// heard before (a receiver that starts after the original went by).
	g := NewFleet(k, 5*time.Second, bad)
	before := testutil.ToFloat64(bad)
	g.Take(announce(9, t0, false), t0.Add(11*time.Second))
	g.Take(announce(9, t0.Add(11*time.Second), false), t0)
	require.Empty(t, g.View(t0).Forwarders)
	require.InDelta(t, before+2, testutil.ToFloat64(bad), 0)

	// A restart (a later started) is a new process: taken.
	started = started.Add(time.Minute)
	later := dead.Add(2 * time.Second)
	f.Take(announce(1, later, false), later)
	f.Take(report(1, later, false), later)
	require.True(t, live(later), "a restarted forwarder")
}
