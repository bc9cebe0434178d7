package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/client"
	"github.com/callrelay/callrelay/internal/testkit/calltest"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// Calls that outlive their join tokens (protocol/README.md 2.1), with the
// real binary: three forwarder processes, real Redis and NATS, real
// signals. Every participant's token is valid for 20 s; the calls run for
// a minute, through a kill -9 of one forwarder and the drain (SIGTERM) of
// another, both after every token has expired. Half the calls live on
// their resumption tickets alone; the other half also renew their tokens
// through a TokenSource, as an application would.

const (
	outliveTokenLifetime = 20 * time.Second
	outliveCallLength    = 60 * time.Second
)

type outliveCall struct {
	id      protocol.ID
	members []*calltest.Member
	tokens  [][]byte
	renew   bool // the members have a TokenSource
}

func TestClusterCallsOutliveTheirTokens(t *testing.T) {
	c := newCluster(t)
	nodes := []*node{c.node(t, "fwd-a"), c.node(t, "fwd-b"), c.node(t, "fwd-c")}
	var all []netip.AddrPort
	for _, n := range nodes {
		all = append(all, n.media)
	}
	began := time.Now()
	// Two group calls of three and three one-to-one calls: 12 devices,
	// each listing the forwarders from "its" own, as a load balancer would
	// spread them.
	var calls []*outliveCall
	for i, size := range []int{3, 3, 2, 2, 2} {
		calls = append(calls, c.outliveCall(t, i, size, i%2 == 1, all))
	}
	var everyone []*calltest.Member
	for _, oc := range calls {
		everyone = append(everyone, oc.members...)
	}
	stop := make(chan struct{})
	defer close(stop)
	calltest.Speak(t, everyone, func(int, time.Duration) bool { return true }, stop)
	for _, oc := range calls {
		calltest.AllHearAll(t, oc.members, time.Now(), 10*time.Second)
	}
	for _, m := range everyone {
		m.ResetGaps()
	}

	// Every token expires; the calls go on.
	testenv.CheckFor(t, 2*outliveTokenLifetime, 100*time.Millisecond, func() error {
		for _, oc := range calls {
			for _, tok := range oc.tokens {
				if d, _ := protocol.DecodeToken(tok); !time.Now().After(d.Expiry) {
					return fmt.Errorf("a token is valid until %s", d.Expiry.Format(time.TimeOnly))
				}
			}
		}
		return nil
	})
	t.Logf("every first token expired %v into the calls", time.Since(began).Round(time.Millisecond))

	// kill -9 the busiest forwarder: its devices fail over on their
	// tickets (or renewed tokens).
	victim := busiest(t, nodes, everyone)
	killed := time.Now()
	require.NoError(t, victim.p.cmd.Process.Signal(syscall.SIGKILL))
	<-victim.p.done
	for _, oc := range calls {
		calltest.AllHearAll(t, oc.members, killed, 15*time.Second)
	}
	for _, m := range everyone {
		require.NotEqual(t, victim.media, m.S.Forwarder(), "a device still on the killed forwarder")
	}
	t.Logf("%s killed %v into the calls; everyone heard everyone again after %v", victim.id,
		killed.Sub(began).Round(time.Millisecond), time.Since(killed).Round(time.Millisecond))
	c.start(t, victim) // back, empty, for the drain to send devices to

	// Drain the busiest of the others: every device on it moves,
	// make-before-break, and it exits 0 once empty, before its deadline.
	drained := busiest(t, nodes, everyone)
	drainAt := time.Now()
	code, took := drained.p.stop(t, syscall.SIGTERM)
	require.Equal(t, 0, code, "a drained forwarder exits 0 (empty before its deadline)")
	for _, oc := range calls {
		calltest.AllHearAll(t, oc.members, drainAt, 15*time.Second)
	}
	t.Logf("%s drained %v into the calls in %v", drained.id, drainAt.Sub(began).Round(time.Millisecond), took.Round(time.Millisecond))

	// The calls run their minute.
	testenv.CheckFor(t, 2*outliveCallLength, 100*time.Millisecond, func() error {
		if d := time.Since(began); d < outliveCallLength {
			return fmt.Errorf("calls %v old", d.Round(time.Second))
		}
		return nil
	})
	for _, oc := range calls {
		calltest.AllHearAll(t, oc.members, time.Now(), 10*time.Second)
	}

	// Nobody was lost, and nobody was silent long.
	var gaps []time.Duration
	var failovers, migrations, refreshed uint64
	for _, oc := range calls {
		for _, m := range oc.members {
			select {
			case <-m.S.Done():
				t.Fatalf("a member of call %s was lost: %v", oc.id, m.S.Err())
			default:
			}
			st := m.S.Stats()
			failovers += st.Failovers
			migrations += st.Migrations
			refreshed += st.TokenRefreshes
			if oc.renew {
				require.NotZero(t, st.TokenRefreshes, "a member with a TokenSource renewed its token")
			}
			for _, o := range oc.members {
				if o != m {
					gaps = append(gaps, m.MaxGap(o.SSRC))
				}
			}
		}
	}
	p99 := percentile(gaps, 0.99)
	t.Logf("over %v: %d devices, %d failovers, %d migrations, %d tokens renewed; longest silence per listener and speaker: p50 %v, p99 %v, max %v",
		time.Since(began).Round(time.Second), len(everyone), failovers, migrations, refreshed,
		percentile(gaps, 0.5), p99, slices.Max(gaps))
	require.NotZero(t, failovers, "the kill moved devices")
	require.NotZero(t, migrations, "the drain moved devices")
	require.Less(t, p99, time.Second, "speech gap p99")
	var resumed int
	for _, n := range nodes {
		if n != drained {
			resumed += resumptions(t, n)
		}
	}
	require.NotZero(t, resumed, "sessions came back on their tickets")

	// The calls end: nothing of them is left in Redis.
	for _, m := range everyone {
		require.NoError(t, m.S.Close())
	}
	testenv.CheckFor(t, 20*time.Second, 100*time.Millisecond, func() error {
		for _, oc := range calls {
			if rec, err := c.store.Get(context.Background(), oc.id); !errors.Is(err, statestore.ErrNotFound) {
				return fmt.Errorf("call %s still in Redis: %v (err %v)", oc.id, rec.Members, err)
			}
		}
		return nil
	})
}

// outliveCall starts call i of size members with 20 s tokens; with renew,
// each member also has a TokenSource.
func (c *cluster) outliveCall(t *testing.T, i, size int, renew bool, all []netip.AddrPort) *outliveCall {
	t.Helper()
	oc := &outliveCall{id: protocol.NewID(), renew: renew}
	class := protocol.ClassGroup
	if size == 2 {
		class = protocol.ClassOneToOne
	}
	for j := range size {
		who := protocol.NewID()
		mint := func() ([]byte, error) {
			return protocol.SignToken(c.priv, protocol.Token{CallID: oc.id, ParticipantID: who, Class: class,
				MaxSize: uint16(size), Expiry: time.Now().Add(outliveTokenLifetime)})
		}
		tok, err := mint()
		require.NoError(t, err)
		cfg := client.Config{Token: tok, Forwarders: append(slices.Clone(all[(i+j)%3:]), all[:(i+j)%3]...)}
		if renew {
			cfg.TokenSource = func(context.Context) ([]byte, error) { return mint() }
		}
		oc.tokens = append(oc.tokens, tok)
		oc.members = append(oc.members, calltest.JoinConfig(t, cfg, uint32(100*i+j+1)))
	}
	return oc
}

// busiest is the live node most devices are on.
func busiest(t *testing.T, nodes []*node, ms []*calltest.Member) *node {
	t.Helper()
	var best *node
	most := -1
	for _, n := range nodes {
		if n.p.exited() {
			continue
		}
		on := 0
		for _, m := range ms {
			if m.S.Forwarder() == n.media {
				on++
			}
		}
		if on > most {
			best, most = n, on
		}
	}
	require.NotNil(t, best)
	return best
}

var resumedMetric = regexp.MustCompile(`(?m)^callrelay_forwarder_resumptions_total\{kind="resumed"\} (\d+)$`)

// resumptions reads a node's count of sessions resumed by ticket from its
// /metrics.
func resumptions(t *testing.T, n *node) int {
	t.Helper()
	resp, err := http.Get("http://" + n.metrics + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	m := resumedMetric.FindSubmatch(b)
	require.NotNil(t, m, "no resumption metric on %s", n.id)
	v, err := strconv.Atoi(string(m[1]))
	require.NoError(t, err)
	return v
}
