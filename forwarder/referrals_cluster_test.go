package forwarder_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/forwarder"
	"github.com/callrelay/callrelay/internal/testkit/calltest"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// heartbeatWatch counts each forwarder's heartbeats on the real NATS
// subject, as a peer hears them.
type heartbeatWatch struct {
	mu    sync.Mutex
	beats map[string]int
}

func watchHeartbeats(t *testing.T, e *clusterEnv) *heartbeatWatch {
	t.Helper()
	w := &heartbeatWatch{beats: map[string]int{}}
	nc, err := nats.Connect(e.nats.ClientURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	_, err = nc.Subscribe(protocol.ForwardersSubject(forwarder.Default().Cluster.Subject), func(m *nats.Msg) {
		var a protocol.ForwarderAnnounce
		if a.Unmarshal(m.Data, e.key) == nil {
			w.mu.Lock()
			w.beats[a.ID]++
			w.mu.Unlock()
		}
	})
	require.NoError(t, err)
	require.NoError(t, nc.Flush())
	return w
}

func (w *heartbeatWatch) count(id string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.beats[id]
}

// Devices refused by a throttled forwarder do not arrive at once at the
// peer it names: a mobile device needs a round trip back to it and two to
// the peer. Heartbeats made meanwhile do not count them, so they must not
// make the referrals forgotten: here fwd-b reports twice between every
// two refusals while none of the referred devices has arrived, and fwd-c
// does not report at all; the six referrals are still split evenly. (A
// forwarder that cleared its referrals on each heartbeat sent all six to
// fwd-b, which looked empty after every report.)
func TestThrottleReferralsOutliveReportsMadeBeforeArrival(t *testing.T) {
	e := newClusterEnv(t)
	w := watchHeartbeats(t, e)
	a := e.startWith(t, "fwd-a", steadyAdmission)
	b := e.startWith(t, "fwd-b", steadyAdmission)
	c := e.startWith(t, "fwd-c", func(cfg *forwarder.Config) {
		steadyAdmission(cfg)
		cfg.Cluster.AnnounceEvery, cfg.Cluster.PeerTimeout, cfg.Cluster.OrphanAfter = time.Minute, 5*time.Minute, 10*time.Minute
	})
	testenv.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if a.f.Stats().Peers < 2 {
			return fmt.Errorf("fwd-a has not heard both peers yet")
		}
		return nil
	})
	for range 13 { // 13 of 20: one below level 1
		require.Equal(t, a.f.Addr(), e.party(t, protocol.NewID(), protocol.ClassOneToOne).join(t, a.f.Addr()))
	}
	require.Equal(t, a.f.Addr(), e.party(t, protocol.NewID(), protocol.ClassGroup).join(t, a.f.Addr()), "the 14th: level 1 from here")
	sent := map[netip.AddrPort]int{}
	for i := range 6 {
		p := e.party(t, protocol.NewID(), protocol.ClassGroup)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		s, err := client.Join(ctx, client.Config{Forwarders: []netip.AddrPort{a.f.Addr()}, Token: p.token,
			LocalAddr: calltest.Loopback, JoinTimeout: 5 * time.Second, MaxAlternates: -1})
		cancel()
		var je *client.JoinError
		require.True(t, errors.As(err, &je), "refusal %d: %v %v", i, err, s)
		require.Equal(t, protocol.CodeTryAlternate, je.Code, "refusal %d: %v", i, je)
		sent[je.Alternate]++
		before := w.count("fwd-b")
		testenv.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
			if n := w.count("fwd-b"); n < before+2 {
				return fmt.Errorf("fwd-b reported %d times since refusal %d, want 2", n-before, i)
			}
			return nil
		})
	}
	require.Equal(t, map[netip.AddrPort]int{b.f.Addr(): 3, c.f.Addr(): 3}, sent,
		"fwd-b %s, fwd-c %s", b.f.Addr(), c.f.Addr())
}
