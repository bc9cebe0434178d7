package forwarder_test

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// TestRegionReferralsLoopback: on loopback (no namespaces needed), a
// forwarder of region eu at throttle level 2 refers a new call to the other
// eu forwarder while it lives (same region first, though za has room too),
// and, once that one is gone, spills it over to za (measured RTT well
// within the budget); a forwarder without a region keeps referring by load
// alone (TestThrottleAdmissionOrder).
func TestRegionReferralsLoopback(t *testing.T) {
	e := newClusterEnv(t)
	region := func(r string, mod func(*forwarder.Config)) func(*forwarder.Config) {
		return func(c *forwarder.Config) {
			if mod != nil {
				mod(c)
			}
			c.Cluster.Region = r
		}
	}
	a := e.startWith(t, "fwd-a", region("eu", func(c *forwarder.Config) { sessionsOnly(c); c.Load.CapacitySessions = 5 }))
	b := e.startWith(t, "fwd-b", region("eu", nil))
	c := e.startWith(t, "fwd-c", region("za", nil))
	testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if regionRTT(a.f, "eu") == 0 || regionRTT(a.f, "za") == 0 {
			return fmt.Errorf("fwd-a has not measured both regions yet: %v", a.f.Regions().RTTs)
		}
		return nil
	})
	call := protocol.NewID()
	for range 4 {
		require.Equal(t, a.f.Addr(), e.party(t, call, protocol.ClassGroup).join(t, a.f.Addr()))
	}
	require.Equal(t, forwarder.ThrottleNewOneToOne, a.f.Stats().ThrottleLevel)
	spill := func(name string) uint64 { return a.f.Regions().Spill[forwarder.SpillOutcome(name)] }

	require.Equal(t, b.f.Addr(), e.party(t, protocol.NewID(), protocol.ClassGroup).join(t, a.f.Addr()), "same region first")
	require.Equal(t, uint64(1), spill("same_region"))
	require.Zero(t, spill("spilled"))

	b.stop()
	testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if p := a.f.Stats().Peering; p.ByNATS != 1 || p.ByTrunk != 1 {
			return fmt.Errorf("fwd-a still hears %d peers by NATS, %d by trunk; want fwd-c alone", p.ByNATS, p.ByTrunk)
		}
		return nil
	})
	reports := e.loadReports(t, "fwd-a")
	require.Equal(t, c.f.Addr(), e.party(t, protocol.NewID(), protocol.ClassGroup).join(t, a.f.Addr()), "eu is full: za")
	require.Equal(t, uint64(1), spill("spilled"))
	// The spill is counted by target region, and fwd-a's load reports say
	// so (the spill-over section); the referral to fwd-b (same region) is
	// not spill-over.
	want := []protocol.RegionSpill{{Region: "za", Joins: 1}}
	require.Equal(t, want, a.f.Regions().SpillTo)
	testenv.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if r := reports.last(); r == nil || !slices.Equal(r.Spill.To, want) || r.Spill.Refused != 0 {
			return fmt.Errorf("fwd-a's last load report: %+v", r)
		}
		return nil
	})
	t.Logf("referrals from fwd-a: %v (same_region spilled below_spill_level over_budget unmeasured no_room); RTTs %v", a.f.Regions().Spill, a.f.Regions().RTTs)
}

// ThrottleLevel is a flag.Value (--spill-level): names or numbers.
func TestThrottleLevelSet(t *testing.T) {
	for in, want := range map[string]forwarder.ThrottleLevel{"new_one_to_one": forwarder.ThrottleNewOneToOne, "3": forwarder.ThrottleGroupJoin, "none": forwarder.ThrottleNone} {
		var l forwarder.ThrottleLevel
		require.NoError(t, l.Set(in))
		require.Equal(t, want, l)
	}
	var l forwarder.ThrottleLevel
	require.ErrorContains(t, l.Set("5"), "want one of")
	require.ErrorContains(t, l.Set("busy"), "want one of")
	cfg := forwarder.Default()
	cfg.Cluster.SpillLevel = forwarder.ThrottleNone
	require.ErrorContains(t, cfg.Validate(), "spill level")
}

// reportTap keeps the last load report of one forwarder heard on NATS.
type reportTap struct {
	mu sync.Mutex
	r  *protocol.LoadReport
}

func (p *reportTap) last() *protocol.LoadReport {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.r
}

// loadReports listens for id's load reports on the forwarders' subject.
func (e *clusterEnv) loadReports(t *testing.T, id string) *reportTap {
	t.Helper()
	nc, err := nats.Connect(e.nats.ClientURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	p := &reportTap{}
	_, err = nc.Subscribe(protocol.ForwardersSubject(forwarder.Default().Cluster.Subject), func(m *nats.Msg) {
		var r protocol.LoadReport
		if typ, err := protocol.PeekClusterMsgType(m.Data); err != nil || typ != protocol.ClusterMsgLoadReport ||
			r.Unmarshal(m.Data, e.key) != nil || r.Forwarder != id {
			return
		}
		p.mu.Lock()
		p.r = &r
		p.mu.Unlock()
	})
	require.NoError(t, err)
	require.NoError(t, nc.Flush())
	return p
}
