package loadtest

import (
	"bytes"
	"context"
	"encoding/json"
	"math/rand/v2"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

// A controller and two agents (goroutines, each with its own NATS
// connection) run a 3 s plan against a lone forwarder; the merged result
// holds both agents' calls, which together are every arrival of the plan.
func TestControllerAndTwoAgents(t *testing.T) {
	addr, priv := startForwarder(t)
	conns := natsConns(t, 4)
	ctl, agentConns, forwarders := conns[0], conns[1:3], conns[3]
	key, err := protocol.NewClusterKey()
	require.NoError(t, err)
	plan := Plan{
		Forwarders:   []netip.AddrPort{addr},
		SigningKey:   priv,
		LocalAddr:    netip.MustParseAddr("127.0.0.1"),
		Mix:          Mix{OneToOne: 0.6, GroupMin: 3, GroupMax: 3},
		CallDuration: CallDuration{Mean: Duration(1500 * time.Millisecond), Min: Duration(time.Second), Max: Duration(2 * time.Second)},
		Profile:      Profile{Kind: ProfileSteady, Steady: Steady{Rate: 4, Duration: Duration(3 * time.Second)}},
		Bounds:       Bounds{MaxDuration: Duration(8 * time.Second), MaxConcurrentCalls: 40, MaxCalls: 30},
		Targets:      Targets{LossPct: 5, DelayP95: Duration(200 * time.Millisecond)},
		Seed:         11,
		ClusterKey:   key, // the controller reads the relay's reports on its own connection
		Subject:      "relay",
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var wg sync.WaitGroup
	parts := make([]*Partial, 2)
	errs := make([]error, 2)
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			parts[i], errs[i] = RunAgent(ctx, agentConns[i], "lt", priv, nil)
		}()
	}
	// A forwarder's load reports while the run goes on.
	reportsDone := make(chan struct{})
	go func() {
		defer close(reportsDone)
		started := time.Now()
		for seq := uint64(1); seq <= 60; seq++ {
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			r := protocol.LoadReport{Forwarder: "fwd-1", Started: started, At: time.Now(), Seq: seq, Level: 1, Sessions: 3, Signals: [5]uint16{signalCPU: 420}}
			b, err := r.Marshal(nil, key)
			if err == nil {
				_ = forwarders.Publish("relay.forwarders", b)
			}
		}
	}()

	var progress bytes.Buffer
	res, err := RunController(ctx, plan, ctl, "lt", 2, 10*time.Second, &progress)
	require.NoError(t, err)
	wg.Wait()
	cancel()
	<-reportsDone
	t.Logf("controller progress:\n%s", progress.String())
	for i := range 2 {
		require.NoError(t, errs[i])
		require.NotNil(t, parts[i])
		require.Empty(t, parts[i].Err)
	}
	require.ElementsMatch(t, []int{0, 1}, []int{parts[0].Index, parts[1].Index})

	require.Len(t, res.Agents, 2)
	total := 0
	for i, a := range res.Agents {
		require.Equal(t, i, a.Index)
		require.Equal(t, 2, a.Of)
		require.False(t, a.Missing)
		require.Greater(t, a.CallsStarted, 0, "agent %d made calls", i)
		total += a.CallsStarted
	}
	all := res.Totals.All
	require.Equal(t, total, all.CallsStarted)
	arrivals := Arrivals(rand.New(rand.NewPCG(11, 0x10ad)), res.Plan.Profile, res.Plan.Bounds.MaxDuration.D(), res.Plan.Bounds.MaxCalls)
	require.Equal(t, len(arrivals), all.CallsStarted, "the agents' shares add up to the plan's arrivals")
	require.Equal(t, all.CallsStarted, res.Totals.OneToOne.CallsStarted+res.Totals.Group.CallsStarted)
	require.Greater(t, all.Setups.Admitted, 0)
	require.Greater(t, all.PacketsReceived, uint64(0))
	require.Greater(t, all.DelayMs.Count, uint64(0))
	require.Less(t, all.LossPct, 5.0)
	require.Len(t, res.Seconds, 3)
	require.Equal(t, "profile_done", res.Stopped)
	require.Len(t, res.Verdict.Checks, 4)
	require.Equal(t, uint64(11), res.Plan.Seed)

	// The controller read the relay's reports.
	require.NotNil(t, res.Relay)
	require.Equal(t, 1, res.Relay.PeakLevel)
	require.Equal(t, 42.0, res.Relay.CPUMaxPct)
	require.Equal(t, 1, res.Seconds[1].Forwarders["fwd-1"].Level)

	// The merged result is a Result like any other: JSON without secrets.
	b, err := json.Marshal(res)
	require.NoError(t, err)
	require.NotContains(t, string(b), "signing")
	require.Contains(t, string(b), `"agents"`)
}

// An agent runs no plan that was not authenticated with the signing key,
// and the controller gives up when the agents do not show.
func TestAgentIgnoresForgedPlan(t *testing.T) {
	_, priv := startForwarder(t)
	_, other, err := protocol.GenerateSigningKey()
	require.NoError(t, err)
	conns := natsConns(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()

	// Whoever publishes a plan without the key (here: signed with another
	// key) is ignored.
	hellos := make(chan string, 16)
	sub, err := conns[1].Subscribe("lt"+agentsSuffix, func(m *nats.Msg) {
		var h AgentHello
		if json.Unmarshal(m.Data, &h) == nil {
			select {
			case hellos <- h.Agent:
			default:
			}
		}
	})
	require.NoError(t, err)
	defer func() { _ = sub.Unsubscribe() }()
	p := idlePlan(t, 1)
	go func() {
		var id string
		select {
		case id = <-hellos:
		case <-ctx.Done():
			return
		}
		a := Assignment{RunID: "x", Agents: []string{id}, Plan: p, StartAt: time.Now().Add(200 * time.Millisecond)}
		b, _ := json.Marshal(a)
		m := nats.NewMsg("lt" + planSuffix)
		m.Data = b
		m.Header.Set(hdrMAC, mac(macKey(other), b))
		_ = conns[1].PublishMsg(m)
		m2 := nats.NewMsg("lt" + planSuffix) // and one without a MAC
		m2.Data = b
		_ = conns[1].PublishMsg(m2)
	}()
	part, err := RunAgent(ctx, conns[0], "lt", priv, nil)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Nil(t, part)

	// No agent at all (a subject of its own: a hello the agent above sent
	// just before it stopped may still be on its way on "lt").
	plan := idlePlan(t, 1)
	plan.SigningKey = priv
	_, err = RunController(context.Background(), plan, conns[1], "lt-none", 1, 300*time.Millisecond, nil)
	require.ErrorIs(t, err, ErrAgents)
	require.Contains(t, err.Error(), "0 of 1 agents")
}
