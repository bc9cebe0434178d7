package systemtest

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/internal/testkit/calltest"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// A call across two forwarders, with a conductor, on a Redis Cluster of 3
// masters with a replica each: SIGKILL the master that holds the call's
// record. A replica is promoted; the call's media never stops (it does not
// go through Redis), decisions go on, the members joined before the kill
// are all still in the record, and a member who joins and one who leaves
// after it are written too (no critical change lost).
func TestCallSurvivesRedisClusterFailover(t *testing.T) {
	rc := testenv.RedisCluster(t, 3, 1)
	callSurvivesStoreFailover(t, rc.URL(), func(call protocol.ID) string {
		victim, err := rc.MasterOf("{call:" + call.String() + "}:state")
		require.NoError(t, err)
		rc.Kill(victim)
		return fmt.Sprintf("Redis Cluster master %d", victim)
	})
}

// The same with Sentinel: one primary, one replica, three sentinels; the
// primary is SIGKILLed and the replica promoted.
func TestCallSurvivesSentinelFailover(t *testing.T) {
	sn := testenv.RedisSentinel(t)
	callSurvivesStoreFailover(t, sn.URL(), func(protocol.ID) string {
		sn.KillPrimary()
		return "Sentinel primary"
	})
}

// callSurvivesStoreFailover runs a call on the store at url, has kill take
// down the node holding the call's record, and checks the call through it.
func callSurvivesStoreFailover(t *testing.T, url string, kill func(call protocol.ID) string) {
	e := newEnvOn(t, url)
	fa, fb := e.forwarder(t, "fwd-a"), e.forwarder(t, "fwd-b")
	watch := e.watchDecisions(t)
	e.conductor(t, "cond-1", nil)
	call := protocol.NewID()
	ms := []*calltest.Member{e.join(t, call, 1, fa.Addr()), e.join(t, call, 2, fa.Addr()), e.join(t, call, 3, fb.Addr())}
	stop := make(chan struct{})
	defer close(stop)
	calltest.Speak(t, ms, func(i int, _ time.Duration) bool { return i == 0 }, stop)
	members := func() ([]protocol.ID, error) {
		rec, err := e.store.Get(context.Background(), call)
		if err != nil {
			return nil, err
		}
		var ids []protocol.ID
		for id := range rec.Members {
			ids = append(ids, id)
		}
		slices.SortFunc(ids, func(a, b protocol.ID) int { return slices.Compare(a[:], b[:]) })
		return ids, nil
	}
	want := func(ms ...*calltest.Member) []protocol.ID {
		var ids []protocol.ID
		for _, m := range ms {
			ids = append(ids, m.ID)
		}
		slices.SortFunc(ids, func(a, b protocol.ID) int { return slices.Compare(a[:], b[:]) })
		return ids
	}
	testenv.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		if got, err := members(); err != nil || !slices.Equal(got, want(ms...)) {
			return fmt.Errorf("record %v (%v)", got, err)
		}
		for _, m := range ms[1:] {
			if len(m.Speakers()) == 0 {
				return fmt.Errorf("no dominant speaker yet")
			}
		}
		return nil
	})

	ms[2].ResetGaps()
	heard := ms[2].Count(ms[0].SSRC)
	killed := time.Now()
	victim := kill(call)

	// Through the failover: a new member joins, one leaves.
	late := e.join(t, call, 4, fb.Addr())
	require.NoError(t, ms[1].S.Close())
	testenv.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		got, err := members()
		if err != nil {
			return err
		}
		if w := want(ms[0], ms[2], late); !slices.Equal(got, w) {
			return fmt.Errorf("record %d members, want %d", len(got), len(w))
		}
		return nil
	})
	recovered := time.Since(killed)
	var firstAfter time.Time
	testenv.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		all, at := watch.snapshot()
		for i, d := range all {
			if d.Call == call && at[i].After(killed) {
				firstAfter = at[i]
				return nil
			}
		}
		return fmt.Errorf("no decision since the kill")
	})
	require.Greater(t, ms[2].Count(ms[0].SSRC), heard+25, "the speaker was heard through the failover")
	gap := ms[2].MaxGap(ms[0].SSRC)
	require.Less(t, gap, 500*time.Millisecond, "media does not wait for Redis")
	all, at := watch.snapshot()
	var lastBefore time.Time
	for i, d := range all {
		if d.Call == call && at[i].Before(killed) {
			lastBefore = at[i]
		}
	}
	t.Logf("%s killed: record complete again after %s; decision gap %s; media gap %s; fwd-a queued %d, degraded %v",
		victim, recovered.Round(time.Millisecond), firstAfter.Sub(lastBefore).Round(time.Millisecond), gap, fa.Stats().StateQueued, fa.Stats().StateDegraded)
}
