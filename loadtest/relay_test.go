package loadtest

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/internal/testkit/testenv"
	"github.com/callrelay/callrelay/protocol"
)

// idlePlan makes no calls (rate 0) for secs seconds: enough to watch the
// relay's reports and run chaos actions without media.
func idlePlan(t *testing.T, secs int) Plan {
	t.Helper()
	_, priv, err := protocol.GenerateSigningKey()
	require.NoError(t, err)
	return Plan{
		Forwarders: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:9")}, // never sent to: no calls
		SigningKey: priv,
		Profile:    Profile{Kind: ProfileSteady, Steady: Steady{Rate: 0, Duration: Duration(time.Duration(secs) * time.Second)}},
		Bounds:     Bounds{MaxDuration: Duration(time.Duration(secs+5) * time.Second)},
		Seed:       1,
	}
}

// natsConns starts an embedded NATS server and returns n connections to it.
func natsConns(t *testing.T, n int) []*nats.Conn {
	t.Helper()
	srv := testenv.NATS(t)
	var out []*nats.Conn
	for range n {
		nc, err := nats.Connect(srv.ClientURL())
		require.NoError(t, err)
		t.Cleanup(nc.Close)
		out = append(out, nc)
	}
	return out
}

func TestRunRecordsForwarderLoadReports(t *testing.T) {
	conns := natsConns(t, 2)
	nc, pub := conns[0], conns[1] // pub: the "forwarders"
	key, err := protocol.NewClusterKey()
	require.NoError(t, err)
	wrong, err := protocol.NewClusterKey()
	require.NoError(t, err)

	plan := idlePlan(t, 3)
	plan.NATS, plan.ClusterKey, plan.Subject = nc, key, "relay1"

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	started := time.Now().Add(-time.Minute)
	publish := func(r protocol.LoadReport, k protocol.ClusterKey) {
		b, err := r.Marshal(nil, k)
		require.NoError(t, err)
		require.NoError(t, pub.Publish("relay1.forwarders", b))
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		seq := uint64(0)
		for i := 0; i < 35; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			seq++
			level := uint8(0)
			if i >= 12 {
				level = 2 // fwd-a throttles from about 1.2 s on
			}
			publish(protocol.LoadReport{Forwarder: "fwd-a", Started: started, At: time.Now(), Seq: seq, Level: level,
				Sessions: uint32(10 + i), Signals: [5]uint16{signalCPU: 700, signalMemory: 300}}, key)
			publish(protocol.LoadReport{Forwarder: "fwd-b", Started: started, At: time.Now(), Seq: seq, Level: 0,
				Sessions: 5, Signals: [5]uint16{signalCPU: 250}}, key)
			if i == 5 {
				// Forged (wrong key), a replay, an announcement and garbage.
				publish(protocol.LoadReport{Forwarder: "fwd-a", Started: started, At: time.Now(), Seq: 1000, Level: 4}, wrong)
				publish(protocol.LoadReport{Forwarder: "fwd-b", Started: started, At: time.Now(), Seq: 1, Level: 4}, key)
				a := protocol.ForwarderAnnounce{ID: "fwd-a", Media: netip.MustParseAddrPort("127.0.0.1:7000"),
					Trunk: netip.MustParseAddrPort("127.0.0.1:7001"), Seq: 1, Started: started, At: time.Now()}
				b, err := a.Marshal(nil, key)
				require.NoError(t, err)
				require.NoError(t, pub.Publish("relay1.forwarders", b))
				require.NoError(t, pub.Publish("relay1.forwarders", []byte("not a cluster message")))
			}
		}
	}()
	res, err := Run(ctx, plan, nil)
	require.NoError(t, err)
	<-done

	require.Equal(t, "profile_done", res.Stopped)
	require.Len(t, res.Seconds, 3)
	require.NotNil(t, res.Relay)
	h := res.Relay
	require.Equal(t, "relay1.forwarders", h.Subject)
	require.Equal(t, 1, h.BadReports, "the forged report")
	require.Equal(t, 1, h.StaleReports, "the replayed report")
	require.Equal(t, 2, h.OtherMessages, "the announcement and the garbage")
	require.Greater(t, h.Reports, 30)
	require.Equal(t, 2, h.PeakLevel, "the forged and replayed level 4 must not count")
	require.Equal(t, 70.0, h.CPUMaxPct)
	require.Equal(t, 30.0, h.MemoryMaxPct)
	require.Len(t, h.Forwarders, 2)
	a, b := h.Forwarders[0], h.Forwarders[1]
	require.Equal(t, "fwd-a", a.ID)
	require.Equal(t, 2, a.PeakLevel)
	require.LessOrEqual(t, a.PeakLevelAtS, 2)
	require.GreaterOrEqual(t, a.SecondsThrottled, 1)
	require.Equal(t, 70.0, a.CPUMaxPct)
	require.Equal(t, 0, b.PeakLevel)
	require.Equal(t, 25.0, b.CPUMeanPct)
	require.Equal(t, 5, b.SessionsMax)

	first, last := res.Seconds[0].Forwarders, res.Seconds[2].Forwarders
	require.Equal(t, 0, first["fwd-a"].Level)
	require.Equal(t, 2, last["fwd-a"].Level)
	require.Equal(t, 5, last["fwd-b"].Sessions)
	require.Equal(t, 25.0, last["fwd-b"].CPUPct)
	require.Greater(t, last["fwd-a"].Reports, 5)
	require.Greater(t, last["fwd-a"].Sessions, 10)
}

func TestValidateRelayAndChaos(t *testing.T) {
	nc := natsConns(t, 1)[0]
	p := idlePlan(t, 1)
	p.NATS = nc
	p.Subject = "bad subject"
	p.Chaos = []ChaosAction{
		{At: Duration(time.Second), Kind: ChaosKill, Target: "nobody"},
		{At: Duration(time.Second), Kind: "explode", Target: "fwd-a"},
		{At: Duration(time.Second), Kind: ChaosStop, Target: "fwd-a"},
		{At: Duration(time.Second), Kind: ChaosKill, Target: "init"},
		{At: Duration(time.Hour), Kind: ChaosTerm, Target: "fwd-a"},
	}
	p.Processes = map[string]int{"fwd-a": 4242, "init": 1}
	err := p.WithDefaults().Validate()
	require.ErrorIs(t, err, ErrPlan)
	for _, want := range []string{"cluster key", "bad subject", `"nobody" is not a known process`, `kind = "explode"`,
		"a stop needs for > 0", "pid 1: refusing", "chaos[4].at"} {
		require.Contains(t, err.Error(), want)
	}
	_, err = Run(context.Background(), p, nil)
	require.ErrorIs(t, err, ErrPlan)
}

func TestParsePlanChaosAndSubject(t *testing.T) {
	p, err := ParsePlan([]byte(`
forwarders: ["127.0.0.1:7000"]
subject: relay-eu
chaos:
  - {at: 30s, kind: kill, target: fwd-a}
  - {at: 45s, kind: stop, target: redis, for: 10s}
`))
	require.NoError(t, err)
	require.Equal(t, "relay-eu", p.Subject)
	require.Equal(t, []ChaosAction{{At: Duration(30 * time.Second), Kind: ChaosKill, Target: "fwd-a"},
		{At: Duration(45 * time.Second), Kind: ChaosStop, Target: "redis", For: Duration(10 * time.Second)}}, p.Chaos)
	_, priv, err := protocol.GenerateSigningKey()
	require.NoError(t, err)
	p.SigningKey = priv
	err = p.WithDefaults().Validate()
	require.ErrorContains(t, err, `"fwd-a" is not a known process`)
	p.Processes = map[string]int{"fwd-a": 1000, "redis": 1001}
	require.NoError(t, p.WithDefaults().Validate())
}
