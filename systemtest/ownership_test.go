package systemtest

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/internal/testkit/calltest"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// Three conductors race for the same partitions: each partition has
// exactly one holder, every epoch of a call's decisions comes from one
// conductor, and when the holder stops another takes over with a higher
// epoch, resumes the dominant speaker from the checkpoint (devices see no
// change), and the old epoch is never heard again.
func TestConductorsRaceAndTakeOver(t *testing.T) {
	e := newEnv(t)
	call, ms := sixPersonCall(t, e)
	ms = ms[2:4] // one member on each forwarder
	watch := e.watchDecisions(t)
	stop := make(chan struct{})
	calltest.Speak(t, ms, func(i int, _ time.Duration) bool { return i == 0 }, stop)
	defer close(stop)
	conds := map[string]*cond{}
	for _, id := range []string{"cond-1", "cond-2", "cond-3"} {
		conds[id] = e.conductor(t, id, nil)
	}
	part := protocol.PartitionOf(call, partitions)
	holder := func() string {
		var hs []string
		for id, c := range conds {
			if _, ok := c.c.Owned()[part]; ok {
				hs = append(hs, id)
			}
		}
		require.LessOrEqual(t, len(hs), 1, "two conductors hold partition %d: %v", part, hs)
		if len(hs) == 0 {
			return ""
		}
		return hs[0]
	}
	testenv.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		total := 0
		for _, c := range conds {
			total += len(c.c.Owned())
		}
		if total != partitions || holder() == "" {
			return fmt.Errorf("%d of %d partitions held", total, partitions)
		}
		for _, m := range ms {
			if len(m.Speakers()) == 0 {
				return fmt.Errorf("no dominant speaker yet")
			}
		}
		return nil
	})
	first := holder()
	// A few decisions and a checkpoint.
	decisionsSeen(t, watch, call, 3)
	testenv.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		if metric(t, conds[first].reg, "callrelay_conductor_checkpoints_total", "") == 0 {
			return fmt.Errorf("no checkpoint written by %s yet", first)
		}
		return nil
	})
	conds[first].stop()
	stopped := time.Now()
	delete(conds, first)
	testenv.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		if holder() == "" {
			return fmt.Errorf("nobody holds partition %d yet", part)
		}
		return nil
	})
	second := holder()
	var firstNew time.Time
	testenv.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		all, at := watch.snapshot()
		for i, d := range all {
			if d.Call == call && d.Conductor == second {
				firstNew = at[i]
				return nil
			}
		}
		return fmt.Errorf("no decision from %s yet", second)
	})
	decisionsSeen(t, watch, call, 2) // past a republish
	all, at := watch.snapshot()
	byEpoch := map[uint32]string{}
	var lastOld time.Time
	var epochs []uint32
	for i, d := range all {
		if d.Call != call {
			continue
		}
		if c, ok := byEpoch[d.Epoch]; ok {
			require.Equal(t, c, d.Conductor, "epoch %d decided by two conductors", d.Epoch)
		} else {
			byEpoch[d.Epoch] = d.Conductor
			epochs = append(epochs, d.Epoch)
		}
		if d.Conductor == first {
			lastOld = at[i]
			require.True(t, at[i].Before(firstNew) || at[i].Equal(firstNew), "the old conductor decided after the takeover")
		}
		if d.Conductor == second || !d.Dominant.IsZero() {
			// The successor's very first decision already names the
			// speaker: it resumed from the checkpoint.
			require.Equal(t, ms[0].ID, d.Dominant, "the dominant speaker never changed")
		}
	}
	require.Len(t, epochs, 2, "one epoch per holder")
	require.Less(t, epochs[0], epochs[1], "the successor's epoch is higher")
	require.Equal(t, first, byEpoch[epochs[0]])
	for i, m := range ms {
		require.Equal(t, []protocol.ID{ms[0].ID}, ids(m.Speakers()), "member %d saw the speaker change", i)
	}
	require.Positive(t, metric(t, conds[second].reg, "callrelay_conductor_checkpoints_restored_total", ""), "resumed from the checkpoint")
	t.Logf("graceful takeover: decision gap %s (stop at +%s)", firstNew.Sub(lastOld), stopped.Sub(lastOld))
	require.True(t, slices.Contains([]string{"cond-1", "cond-2", "cond-3"}, second))
}
