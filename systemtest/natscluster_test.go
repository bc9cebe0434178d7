package systemtest

import (
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/calltest"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// clusterEnv is env with a NATS cluster instead of one server: every
// process is pinned to a node and fails over to the others.
type clusterEnv struct {
	*env
	nc *testenv.NATSClusterServers
}

func newClusterEnv(t *testing.T, nodes int) *clusterEnv {
	t.Helper()
	return &clusterEnv{env: newEnv(t), nc: testenv.NATSCluster(t, nodes)}
}

// pinnedURLs lists node i first and then the others: with DontRandomize the
// client connects to node i and reconnects to the next in the list.
func (ce *clusterEnv) pinnedURLs(i int) string {
	urls := []string{ce.nc.ClientURL(i)}
	for j := range ce.nc.Len() {
		if j != i {
			urls = append(urls, ce.nc.ClientURL(j))
		}
	}
	return strings.Join(urls, ",")
}

// natsConnOn connects to node i (failing over to the others).
func (ce *clusterEnv) natsConnOn(t *testing.T, i int, opts ...nats.Option) *nats.Conn {
	t.Helper()
	opts = append([]nats.Option{nats.DontRandomize(), nats.MaxReconnects(-1), nats.ReconnectWait(50 * time.Millisecond)}, opts...)
	nc, err := nats.Connect(ce.pinnedURLs(i), opts...)
	require.NoError(t, err)
	require.Equal(t, ce.nc.ClientURL(i), nc.ConnectedUrl(), "pinned to node %d", i)
	return nc
}

// forwarderOn is env.forwarder with its NATS client on node.
func (ce *clusterEnv) forwarderOn(t *testing.T, id string, node int) *forwarder.Forwarder {
	t.Helper()
	return ce.forwarderWith(t, id, ce.natsConnOn(t, node))
}

// conductorOn is env.conductor with its NATS client on node; it also
// returns the client, to see where it reconnected.
func (ce *clusterEnv) conductorOn(t *testing.T, id string, node int, opts ...nats.Option) (*cond, *nats.Conn) {
	t.Helper()
	nc := ce.natsConnOn(t, node, opts...)
	return ce.conductorWith(t, id, nc, nil), nc
}

// watchDecisionsOn is env.watchDecisions with its client on node.
func (ce *clusterEnv) watchDecisionsOn(t *testing.T, node int) *decisions {
	t.Helper()
	return watchDecisionsWith(t, ce.natsConnOn(t, node), ce.key)
}

// A call across two forwarders on different nodes of a 3-node NATS cluster,
// decided by a conductor on the third: killing the conductor's node makes
// its client reconnect to a survivor, and the call keeps its decisions (same
// or higher epoch, same dominant speaker, silent members still muted, the
// speaker heard throughout).
func TestNATSClusterConductorNodeLoss(t *testing.T) {
	const fwdANode, fwdBNode, condNode = 0, 1, 2
	ce := newClusterEnv(t, 3)
	a, b := ce.forwarderOn(t, "fwd-a", fwdANode), ce.forwarderOn(t, "fwd-b", fwdBNode)
	call := protocol.NewID()
	// Member 0 speaks (on fwd-a); 1 is silent on fwd-a, 2 and 3 silent on
	// fwd-b.
	ms := []*calltest.Member{
		ce.join(t, call, 100, a.Addr()), ce.join(t, call, 101, a.Addr()),
		ce.join(t, call, 102, b.Addr()), ce.join(t, call, 103, b.Addr()),
	}
	speaker := ms[0]
	watch := ce.watchDecisionsOn(t, fwdANode) // survives the loss
	var reconnectedAt atomic.Pointer[time.Time]
	cd, condNC := ce.conductorOn(t, "cond-1", condNode, nats.ReconnectHandler(func(*nats.Conn) {
		now := time.Now()
		reconnectedAt.Store(&now)
	}))
	stop := make(chan struct{})
	calltest.Speak(t, ms, func(i int, _ time.Duration) bool { return i == 0 }, stop)
	defer close(stop)

	testenv.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		for i, m := range ms {
			if len(m.Speakers()) == 0 {
				return fmt.Errorf("member %d has no dominant speaker yet", i)
			}
		}
		return nil
	})
	unheard(t, ms, 1, 2, 3) // the decisions reached both forwarders: the silent members are muted
	silentBefore := map[[2]int]int{}
	for i, m := range ms {
		for j := 1; j < len(ms); j++ {
			if i != j {
				silentBefore[[2]int{i, j}] = m.Count(ms[j].SSRC)
			}
		}
	}
	heardBefore := make([]int, len(ms))
	for i, m := range ms {
		m.ResetGaps()
		heardBefore[i] = m.Count(speaker.SSRC)
	}

	part := protocol.PartitionOf(call, partitions)
	_, owned := cd.c.Owned()[part]
	require.True(t, owned, "the conductor holds the call's partition")
	takeovers := metric(t, cd.reg, "callrelay_conductor_partition_takeovers_total", "")
	killed := time.Now() // Shutdown returns after the client has already reconnected
	ce.nc.Shutdown(condNode)
	testenv.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if !condNC.IsConnected() || condNC.ConnectedUrl() == ce.nc.ClientURL(condNode) {
			return fmt.Errorf("conductor not reconnected to a survivor: %s", condNC.Status())
		}
		return nil
	})
	reconnected := time.Now()
	if at := reconnectedAt.Load(); at != nil {
		reconnected = *at
	}
	t.Logf("conductor reconnected from node %d to %s after %s", condNode, condNC.ConnectedUrl(), reconnected.Sub(killed).Round(time.Millisecond))

	// New decisions keep arriving after the reconnection: wait for three.
	testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		all, at := watch.snapshot()
		n := 0
		for i, d := range all {
			if d.Call == call && at[i].After(reconnected) {
				n++
			}
		}
		if n < 3 {
			return fmt.Errorf("%d decisions for the call since the reconnection", n)
		}
		return nil
	})
	// Media keeps flowing a little longer: every listener hears the
	// speaker after this point, 50 packets more than before the loss.
	since := time.Now()
	testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		for i, m := range ms[1:] {
			if m.LastFrom(speaker.SSRC).Before(since) || m.Count(speaker.SSRC)-heardBefore[i+1] <= 50 {
				return fmt.Errorf("member %d: %d packets from the speaker since before the loss", i+1, m.Count(speaker.SSRC)-heardBefore[i+1])
			}
		}
		return nil
	})

	all, at := watch.snapshot()
	var prev *protocol.CallDecision
	var firstSeq uint32
	var lastBefore, firstAfter time.Time
	var before, after []time.Time
	for i := range all {
		d := &all[i]
		if d.Call != call {
			continue
		}
		if prev != nil {
			// A republish repeats (epoch, seq); nothing is ever older.
			require.Equal(t, prev.Conductor, d.Conductor, "decision %d: one conductor decides", i)
			require.GreaterOrEqual(t, d.Epoch, prev.Epoch, "decision %d: the epoch went down", i)
			require.False(t, prev.Newer(d), "decision %d (epoch %d seq %d) is older than (epoch %d seq %d)", i, d.Epoch, d.Seq, prev.Epoch, prev.Seq)
			require.False(t, d.At.Before(prev.At), "decision %d decided before its predecessor", i)
		}
		if prev == nil {
			firstSeq = d.Seq
		}
		prev = d
		if !d.Dominant.IsZero() {
			require.Equal(t, speaker.ID, d.Dominant, "decision %d: the dominant speaker changed", i)
		}
		if at[i].After(killed) {
			require.Equal(t, speaker.ID, d.Dominant, "decision %d after the loss names the speaker", i)
			for _, m := range ms[1:] {
				require.False(t, slices.Contains(d.Forward, m.ID), "decision %d after the loss forwards a silent member", i)
			}
			after = append(after, at[i])
			if firstAfter.IsZero() {
				firstAfter = at[i]
			}
		} else {
			before = append(before, at[i])
			lastBefore = at[i]
		}
	}
	require.NotEmpty(t, before, "decisions before the loss")
	require.NotEmpty(t, after, "decisions after the loss")
	_, owned = cd.c.Owned()[part]
	require.True(t, owned, "the conductor still holds the call's partition (Redis was never lost)")
	require.Equal(t, takeovers, metric(t, cd.reg, "callrelay_conductor_partition_takeovers_total", ""), "no partition changed hands")

	for i, m := range ms {
		require.Equal(t, []protocol.ID{speaker.ID}, ids(m.Speakers()), "member %d saw the speaker change", i)
		for j := 1; j < len(ms); j++ {
			if i != j {
				require.Equal(t, silentBefore[[2]int{i, j}], m.Count(ms[j].SSRC), "member %d heard silent member %d after the loss", i, j)
			}
		}
	}
	var worstGap time.Duration
	for i, m := range ms[1:] {
		require.Greater(t, m.Count(speaker.SSRC)-heardBefore[i+1], 50, "member %d kept hearing the speaker", i+1)
		require.False(t, m.LastFrom(speaker.SSRC).Before(firstAfter), "member %d hears the speaker after the loss", i+1)
		gap := m.MaxGap(speaker.SSRC)
		worstGap = max(worstGap, gap)
		t.Logf("member %d (on %s): media gap from the speaker during the loss %s", i+1, m.S.Forwarder(), gap.Round(time.Millisecond))
	}
	require.Less(t, worstGap, 500*time.Millisecond, "the speaker was heard throughout")

	var usual time.Duration // the republish interval seen before the loss
	for k := 1; k < len(before); k++ {
		usual = max(usual, before[k].Sub(before[k-1]))
	}
	t.Logf("decision gap across the loss of the conductor's NATS node: %s (last before at -%s, first after at +%s from the kill; longest gap before the loss %s; %d decisions before, %d after)",
		firstAfter.Sub(lastBefore).Round(time.Millisecond), killed.Sub(lastBefore).Round(time.Millisecond),
		firstAfter.Sub(killed).Round(time.Millisecond), usual.Round(time.Millisecond), len(before), len(after))
	t.Logf("epoch %d throughout, seq %d..%d; conductor NATS publish errors during the loss: %v",
		prev.Epoch, firstSeq, prev.Seq, metric(t, cd.reg, "callrelay_conductor_nats_errors_total", ""))
	t.Logf("worst media gap from the speaker at a listener: %s", worstGap.Round(time.Millisecond))
}
